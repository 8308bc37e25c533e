"""What the domain-randomised phantom (`veinjax.data.phantom_random`) draws: its ranges and group switches.

`RandomizationRanges` holds every range a frame is drawn from and one boolean switch per randomisation
group (`GROUPS`); `FIXED` holds the settings of the groups whose switch is off that draw numbers.
"""

import dataclasses
import math
from typing import Any, Dict, Tuple

Range = Tuple[float, float]
IntRange = Tuple[int, int]

# The randomisation groups, each switched by the field of `RandomizationRanges` with its name.
GROUPS = ("layers", "vessels", "distractors", "artifacts", "gain", "speckle", "compression", "geometry",
          "overlays")
FOREGROUNDS = ("vessel", "vein")
# Ranges drawn log-uniformly (so lo > 0), and counts with a least value other than 0.
_LOG_UNIFORM = ("layer_echo", "scatterer_density")
_MIN_COUNT = {"num_layers": 1}


@dataclasses.dataclass(frozen=True)
class RandomizationRanges:
  """What `generate_randomized_example` draws, and from which range, per frame.

  (lo, hi) ranges are drawn uniformly unless said otherwise, integer ranges inclusive; "x size" means a
  fraction of the frame's height (= width). Echo units: the reflectivity amplitude before attenuation, for
  which tissue spans 0.03-1 and specular lines reach 1-3; the display puts the frame's median tissue at
  `grey`, whatever its echo. Display levels: 0 (black) to 1 (white), as shown. These were chosen to cover
  the phantom, what linear and curvilinear probes of any make show, and more. Measured since (zero-shot on
  usgra-seg's validation and non-test frames, never its test split; README "Zero-shot on real vessels"):
  widening the vessels' size, border blur and irregularity (`vein_radius`, `border_blur`, `irregularity`,
  VERSION 1.1.0) raised the transfer from Dice 0.35 to 0.45 (non-test, means over seeds), the size carrying
  it (each put back alone, seed 0: size 0.29, blur 0.47, irregularity 0.44, against 0.46); grey lumens
  (`lumen_echo` up to 0.35 or 0.5) and more haze lowered it, so lumens stay near-anechoic; the visibility
  threshold `min_contrast` 0.3 beat 0.15 and 0.45 (non-test Dice 0.46 against 0.41 either way, seed 0).
  Letting deep vessels run below the scan's bottom edge (`max_share_below` 0.5, VERSION 1.2.0: real frames
  show them cut there, 1.1.0 never drew one) raised it to 0.49 (paired by seed +0.043 ± 0.020 over three
  seeds); letting them lie further beside the scan (`vessel_lateral` 0-1) did not (seed 0: 0.50 vs 0.51),
  nor did grey hypoechoic blobs that are not vessels (`hypoechoic_probability` 0.5, seed 0: 0.47 vs 0.51).
  The other ranges are the first guesses.
  """
  foreground: str = "vessel"  # "vessel": veins and arteries are the mask; "vein": veins only

  # ---- layers: tissue below the skin (off: phantom.py's fat, fascia and striated muscle) ----
  layers: bool = True
  skin_depth: Range = (0.0, 0.06)  # x size: depth of the skin line (gel / stand-off above it is anechoic)
  skin_echo: Range = (0.2, 1.6)  # brightness of the skin line
  near_field_echo: Range = (0.0, 0.6)  # the transducer-face band at the very top
  num_layers: IntRange = (1, 6)  # tissue layers below the skin
  layer_echo: Range = (0.03, 1.0)  # each layer's echogenicity, log-uniform: near-anechoic to bright
  layer_texture: Range = (0.0, 0.7)  # std of each layer's smooth heterogeneity (log amplitude)
  texture_cells: Range = (3.0, 20.0)  # correlation lengths of the heterogeneity across the frame
  boundary_wave: Range = (0.0, 0.05)  # x size: std of a layer boundary's undulation
  boundary_tilt: Range = (-0.2, 0.2)  # slope of a layer boundary
  interface_echo: Range = (0.0, 1.6)  # brightness of the echogenic line (fascia) on each layer boundary
  interface_width: Range = (0.002, 0.012)  # x size: its half width
  interface_gaps: Range = (0.0, 0.8)  # share of it that is broken off
  striation_probability: float = 0.6  # chance that a layer has fine echogenic lines (perimysium, septa)
  striation_echo: Range = (0.1, 1.0)  # their brightness
  striation_period: Range = (0.015, 0.08)  # x size: their spacing
  striation_angle: Range = (-0.5, 0.5)  # radians from the horizontal
  lobule_probability: float = 0.3  # chance that a layer is lobular (fat: dark lobules, echogenic septa)
  lobule_echo: Range = (0.2, 0.9)  # brightness of the septa
  speck_density: Range = (0.0, 0.004)  # bright point scatterers per pixel (at 512 px; fewer when smaller)

  # ---- vessels (off: phantom.py's 1-3 veins and 0-2 arteries with its looks) ----
  vessels: bool = True
  num_veins: IntRange = (0, 3)
  num_arteries: IntRange = (0, 2)
  vessel_depth: Range = (0.06, 0.92)  # x size: depth of a vessel's centre (beam space)
  vessel_lateral: Range = (0.05, 0.95)  # x size: its lateral position (0, 1: up to half of it beside the scan)
  # The largest share of a vessel's height that may lie below the scan's bottom edge, as a deep vessel runs
  # out of the imaged depth (0: every vessel whole, above 0.98 of the depth, as in 1.1.0; 0.5: down to its
  # centre, 1.2.0). Above 0.5 it changes nothing while vessel_depth ends below 0.98: a vessel's centre stays
  # in the scan, so at most half of it lies below (checked: 40 of 40 frames identical at 0.7).
  max_share_below: float = 0.5
  vein_radius: Range = (0.02, 0.25)  # x size: semi-major axis (up to jugular, femoral veins; 1.0.0: 0.15)
  vein_aspect: Range = (0.35, 1.0)  # minor / major axis
  compressed_probability: float = 0.15  # chance that a vein is compressed flat ...
  compressed_aspect: Range = (0.08, 0.3)  # ... to this aspect (half thickness >= 1 px)
  artery_radius: Range = (0.02, 0.1)  # x size
  artery_aspect: Range = (0.8, 1.0)
  irregularity: Range = (0.0, 0.25)  # amplitude of the boundary's harmonics 2-4 (0: an ellipse; 1.0.0: 0.1)
  vein_tilt: Range = (-0.4, 0.4)  # radians (arteries: any angle)
  vein_wall: Range = (0.0, 0.015)  # x size: wall thickness (0: no visible wall)
  artery_wall: Range = (0.006, 0.035)  # x size
  wall_echo: Range = (0.0, 2.0)  # wall brightness
  wall_specularity: Range = (0.0, 1.0)  # 1: the wall shows only where the beam meets it at right angles
  border_blur: Range = (0.0, 0.04)  # x size: the lumen's soft edge, before the PSF's own (1.0.0: 0.012)
  lumen_echo: Range = (0.0, 0.15)  # lumen echo, times the surrounding tissue's
  smoke_probability: float = 0.3  # chance of slow-flow "smoke" (swirling faint echoes) ...
  smoke_echo: Range = (0.1, 0.35)  # ... this bright, times the surrounding tissue's
  partial_fill_probability: float = 0.15  # chance that part of the lumen is filled (sediment, thrombus) ...
  partial_fill: Range = (0.15, 0.6)  # ... this share of its height ...
  fill_echo: Range = (0.3, 1.0)  # ... this bright, times the surrounding tissue's (still in the mask)
  posterior_enhancement: Range = (0.0, 0.95)  # share of the attenuation the lumen does not have
  edge_shadow: Range = (0.0, 6.0)  # extra attenuation where the wall runs along the beam (refraction)
  # Not drawn: a vessel whose lumen is darker than its wall and a ring around it by less than this share
  # (Weber contrast of mean display levels as shown, ring levels below 0.15 counted as 0.15) is left out of
  # the mask: the frame does not show it (a lumen as bright as its surroundings, or lost in noise).
  min_contrast: float = 0.3

  # ---- distractors: structures that are not vessels, mostly hyperechoic (off: none) ----
  distractors: bool = True
  tendon_probability: float = 0.3
  tendon_length: Range = (0.1, 0.45)  # x size
  tendon_aspect: Range = (0.12, 0.4)  # thickness / length
  tendon_echo: Range = (0.6, 1.8)
  nerve_probability: float = 0.4  # a nerve: dark fascicles in a bright sheath (honeycomb)
  nerve_radius: Range = (0.03, 0.09)  # x size
  nerve_fascicles: Range = (2.0, 6.0)  # fascicles across the nerve
  nerve_echo: Range = (0.5, 1.5)
  bone_probability: float = 0.25  # a bone surface (bright arc) with a full shadow below, under the vessels
  bone_echo: Range = (1.0, 3.0)
  bone_width: Range = (0.2, 1.0)  # x size
  num_specks: IntRange = (0, 8)  # small bright reflectors (calcification, needle tip, gas)
  speck_echo: Range = (0.8, 2.5)
  # A hypoechoic structure that is not a vessel (lymph node, muscle belly, hypoechoic fat, haematoma): a grey,
  # speckled, soft-edged blob, darker than its tissue but not anechoic, sometimes with a bright centre
  # (a node's hilum); never in the mask.
  hypoechoic_probability: float = 0.0
  hypoechoic_radius: Range = (0.04, 0.2)  # x size: semi-major axis
  hypoechoic_echo: Range = (0.25, 0.7)  # times the surrounding tissue's (vessel lumens: lumen_echo)
  hypoechoic_hilum_probability: float = 0.3

  # ---- artifacts (off: none) ----
  artifacts: bool = True
  reverberation_probability: float = 0.5  # copies of the near field at multiples of a depth ...
  reverberation_period: Range = (0.03, 0.12)  # x size: ... this depth ...
  reverberation_decay: Range = (0.1, 0.5)  # ... each this much weaker than the one before
  haze: Range = (0.0, 0.15)  # diffuse clutter, times the mean tissue echo (greys the lumens) ...
  haze_depth: Range = (0.1, 1.0)  # x size: ... decaying with depth over this length
  num_shadows: IntRange = (0, 2)  # acoustic shadows below a bright reflector, never over a vessel
  shadow_width: Range = (0.02, 0.15)  # x size
  shadow_strength: Range = (1.0, 20.0)  # extra attenuation (tissue: 1)
  lifted_probe_probability: float = 0.1  # a dark strip at one side (lost contact), never over a vessel
  lifted_width: Range = (0.03, 0.2)  # x size

  # ---- gain: attenuation, TGC, noise (off: fixed, see FIXED) ----
  gain: bool = True
  attenuation: Range = (0.5, 4.0)  # total loss over the depth, nepers (amplitude)
  tgc_compensation: Range = (0.6, 1.15)  # share of it a linear TGC ramp gives back (under / over)
  tgc_sliders: Range = (0.0, 0.4)  # std (nepers) of 8 TGC sliders' offsets
  lateral_falloff: Range = (0.0, 0.7)  # loss at the lateral edges (aperture, sector edges)
  noise_level: Range = (0.001, 0.02)  # electronic noise amplitude, amplified with the gain

  # ---- speckle: scatterers convolved with a Gaussian PSF (off: fixed PSF, see FIXED) ----
  speckle: bool = True
  psf_axial: Range = (0.0015, 0.008)  # x size: PSF std along the beam (at 256 px: 0.4-2 px)
  psf_lateral: Range = (0.002, 0.014)  # x size: PSF std across beams at the focus
  psf_defocus: Range = (1.0, 2.5)  # lateral PSF width far from the focus / at the focus
  focus_depth: Range = (0.15, 0.85)  # x size
  scatterer_density: Range = (0.25, 1.0)  # share of cells with a scatterer, log-uniform (1: fully developed)
  speckle_contrast: Range = (0.35, 1.0)  # std / mean of the speckle's power (1: Rayleigh; less: Rician,
  # as partly developed or compounded speckle)

  # ---- compression: log compression and display (off: fixed, see FIXED) ----
  compression: bool = True
  dynamic_range: Range = (25.0, 80.0)  # dB between black and white
  grey: Range = (0.08, 0.6)  # display level (0-1, as shown) of the median tissue: very dark to bright scans
  gamma: Range = (0.6, 1.8)  # contrast curve
  reject: Range = (0.0, 0.12)  # display levels below this are black (at most half the median tissue's)

  # ---- geometry: scan conversion (off: linear, full frame) ----
  geometry: bool = True
  sector_probability: float = 0.4  # sector (curvilinear or phased) rather than linear
  sector_angle: Range = (30.0, 100.0)  # degrees, the whole fan
  apex_distance: Range = (0.05, 1.5)  # x size: the fan's apex above the top of its box
  letterbox_probability: float = 0.6  # black margins around the image
  margin_top: Range = (0.0, 0.15)  # x size, each
  margin_bottom: Range = (0.0, 0.15)
  margin_side: Range = (0.0, 0.15)  # left and right drawn separately

  # ---- overlays at the edges (off: none) ----
  overlays: bool = True
  text_probability: float = 0.7
  text_lines: IntRange = (1, 6)
  text_height: Range = (0.015, 0.04)  # x size (at least 5 px)
  overlay_brightness: Range = (0.4, 1.0)  # display level
  depth_scale_probability: float = 0.6
  focus_marker_probability: float = 0.4
  logo_probability: float = 0.3

  def __post_init__(self):
    if self.foreground not in FOREGROUNDS:
      raise ValueError(f"foreground={self.foreground!r}; valid: {', '.join(FOREGROUNDS)}.")
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, bool) or field.name == "foreground":
        continue
      # A range is drawn from, so finite; a threshold may be infinite (min_contrast=-inf: every vessel shows).
      numbers = value if isinstance(value, tuple) else (value,)
      finite = math.isfinite if isinstance(value, tuple) else lambda v: not math.isnan(v)
      if not all(isinstance(v, (int, float)) and finite(v) for v in numbers):
        raise ValueError(f"RandomizationRanges.{field.name}={value}: expected finite numbers (not NaN).")
      if isinstance(value, tuple) and (len(value) != 2 or value[0] > value[1]):
        raise ValueError(f"RandomizationRanges.{field.name}={value}: expected a (lo, hi) pair with lo <= hi.")
      if field.name.endswith("_probability") and not 0.0 <= value <= 1.0:
        raise ValueError(f"RandomizationRanges.{field.name}={value}: a probability must be in [0, 1].")
      if field.name == "max_share_below" and not 0.0 <= value < 1.0:
        raise ValueError(f"RandomizationRanges.max_share_below={value}: a share of a vessel's height in [0, 1) "
                         f"(1 would let a vessel lie wholly below the scan).")
      if field.name == "vessel_lateral" and not 0.0 <= value[0] <= value[1] <= 1.0:
        raise ValueError(f"RandomizationRanges.vessel_lateral={value}: a vessel's centre lies within the scan's "
                         f"width, so both ends must be in [0, 1].")
      if field.name in _LOG_UNIFORM and value[0] <= 0:
        raise ValueError(f"RandomizationRanges.{field.name}={value}: drawn log-uniformly, so lo must be > 0.")
      if isinstance(value, tuple) and isinstance(value[0], int) and value[0] < _MIN_COUNT.get(field.name, 0):
        raise ValueError(f"RandomizationRanges.{field.name}={value}: a count; lo must be >= "
                         f"{_MIN_COUNT.get(field.name, 0)}.")

  def without(self, *groups: str) -> "RandomizationRanges":
    """A copy with these groups (names in `GROUPS`) switched off."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
      raise ValueError(f"unknown randomisation group(s) {sorted(unknown)}; valid: {', '.join(GROUPS)}.")
    return dataclasses.replace(self, **{g: False for g in groups})

  def only(self, *groups: str) -> "RandomizationRanges":
    """A copy with only these groups on."""
    return self.without(*(g for g in GROUPS if g not in groups))


# The fixed settings of groups that are switched off (mid-range, or phantom.py's own).
FIXED = {
    "gain": dict(attenuation=2.75, tgc_compensation=0.8, lateral_falloff=0.25, noise_level=0.012),
    "speckle": dict(psf_axial=0.0035, psf_lateral=0.006, psf_defocus=1.0, focus_depth=0.5,
                    scatterer_density=1.0, speckle_contrast=1.0),
    "compression": dict(dynamic_range=50.0, grey=0.45, gamma=1.0, reject=0.0),
}


SETTINGS_FLAG = "--config.dataset.phantom_random_settings"


def settable_fields() -> Tuple[str, ...]:
  """The ranges and probabilities a setting may change (not the foreground or the group switches)."""
  return tuple(f.name for f in dataclasses.fields(RandomizationRanges)
               if f.name != "foreground" and f.name not in GROUPS)


def parse_settings(spec: str) -> Dict[str, Any]:
  """"lumen_echo=0:0.5; min_contrast=0.2" -> {"lumen_echo": (0.0, 0.5), "min_contrast": 0.2}.

  A range is "lo:hi", anything else one number; integer ranges take integers. Errors name the flag and the
  valid fields; the values are checked as `RandomizationRanges` checks its own.
  """
  defaults = RandomizationRanges()
  fields = settable_fields()
  settings: Dict[str, Any] = {}
  for item in (part.strip() for part in spec.split(";")):
    if not item:
      continue
    name, sep, text = (s.strip() for s in item.partition("="))
    if not sep or name not in fields:
      raise ValueError(f"{SETTINGS_FLAG}: {item!r} is not 'field=value' with a field of RandomizationRanges; "
                       f"valid fields: {', '.join(fields)}.")
    if name in settings:
      raise ValueError(f"{SETTINGS_FLAG}: {name} is given twice; give each field once.")
    default = getattr(defaults, name)
    kind = int if isinstance(default, tuple) and isinstance(default[0], int) else float
    try:
      if isinstance(default, tuple):
        lo, hi = (kind(v) for v in text.split(":"))
        settings[name] = (lo, hi)
      else:
        settings[name] = float(text)
    except ValueError:
      shape = f"lo:hi of {kind.__name__}s" if isinstance(default, tuple) else "a number"
      raise ValueError(f"{SETTINGS_FLAG}: {name}={text!r} is not {shape} (default {default}).") from None
  try:
    dataclasses.replace(defaults, **settings)
  except ValueError as e:
    raise ValueError(f"{SETTINGS_FLAG}: {e}") from None
  return settings


def format_settings(settings: Dict[str, Any]) -> str:
  """The one canonical spelling of `settings` (sorted by field), for cache names and records."""
  def value(v):
    return f"{v[0]!r}:{v[1]!r}" if isinstance(v, tuple) else repr(v)
  return ";".join(f"{k}={value(settings[k])}" for k in sorted(settings))
