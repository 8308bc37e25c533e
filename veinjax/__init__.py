"""veinjax: vein (and other vessel) segmentation in ultrasound, in JAX/Flax.

A functional reimplementation of ResNet34-UNet (Qin et al., "Research on vein ultrasound image
segmentation method based on ResNet34-UNet") with the baselines it is compared against.
"""

__version__ = "0.1.0"

from veinjax import xla_cpu as _xla_cpu

# Before JAX starts its CPU backend: XLA's Eigen convolutions instead of YNNPACK's (see veinjax/xla_cpu.py).
_xla_cpu.apply_flags()
