"""veinjax: vein (and other vessel) segmentation in ultrasound, in JAX/Flax.

A functional reimplementation of ResNet34-UNet (Qin et al., "Research on vein ultrasound image
segmentation method based on ResNet34-UNet") with the baselines it is compared against.
"""

__version__ = "0.1.0"
