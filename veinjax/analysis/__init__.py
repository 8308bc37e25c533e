"""Measurements on segmentation masks (numpy/scipy only, no model, no JAX): vessel geometry, detection and tracking.

`geometry`: per connected component of a mask, centroid, area, diameters, orientation, depth (px and mm).
`detection`: per true vessel, the share a prediction covers, with its size, contrast, depth and edge cut.
`tracking`: vessels followed across the frames of a clip (Kalman + Hungarian), and their compressibility.
"""
