"""Measurements on segmentation masks (numpy/scipy only, no model, no JAX): vessel geometry and tracking.

`geometry`: per connected component of a mask, centroid, area, diameters, orientation, depth (px and mm).
`tracking`: vessels followed across the frames of a clip (Kalman + Hungarian), and their compressibility.
"""
