"""UltraLight-UNet: a segmentation network of 0.17M parameters for real time on one CPU core.

In the spirit of the tiny real-time U-Nets for medical video such as UltraSeg (a few hundred thousand
parameters, depthwise-separable convolutions, few channels; not a reimplementation of any): a small
MobileNetV3-style encoder (the bneck blocks of `mobilenet.py` with a narrower table, squeeze-excitation only
at the two deepest strides) under the light U-Net decoder of `light_decoder.py` with three blocks of 48-24-16
channels, stride-4 logits upsampled bilinearly (as DeepLab v3+ does): a fourth block at stride 2, even with 8
channels, made the whole network about a third slower on one CPU core (it touches 4x the pixels of the third),
for veins tens of pixels wide. Like every veinjax model it takes any channel count and any H, W divisible by
32.
"""

from __future__ import annotations

import functools

from veinjax.models import light_decoder
from veinjax.models import mobilenet

Bneck = mobilenet.Bneck

ULTRALIGHT_BLOCKS = (
    Bneck(3, 8, 16, False, "relu", 2),        # stride 4
    Bneck(3, 48, 24, False, "relu", 2),       # stride 8
    Bneck(3, 72, 24, False, "relu", 1),
    Bneck(5, 96, 40, True, "hardswish", 2),   # stride 16
    Bneck(5, 120, 40, True, "hardswish", 1),
    Bneck(5, 160, 64, True, "hardswish", 2),  # stride 32
    Bneck(5, 256, 64, True, "hardswish", 1),
)

UltraLightEncoder = functools.partial(
    mobilenet.MobileNetV3Encoder, blocks=ULTRALIGHT_BLOCKS, last_features=128, stem_features=8)

UltraLightUNet = functools.partial(
    light_decoder.LightUNet, encoder=UltraLightEncoder, decoder_channels=(48, 24, 16))
