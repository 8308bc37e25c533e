"""The randomised phantom's acoustics, in beam space: artefacts, attenuation and gain, speckle, display levels.

`artifacts` draws the `artifacts` group into the tissue (reverberation copies of the near field, haze,
acoustic shadows, a lifted probe edge). `gain_params`, `speckle_params` and `compression_params` draw the
`gain`, `speckle` and `compression` groups (off: `FIXED`), and `bmode` turns echo and attenuation into
display levels: attenuation and TGC, speckle (`speckle_power`: scatterers convolved with a Gaussian PSF),
electronic noise, log compression.
"""

import math

import numpy as np
from scipy import fft as sp_fft

from veinjax.data.phantom_random_fields import coords, gaussian_band, integer, log_uniform, uniform
from veinjax.data.phantom_random_ranges import FIXED, RandomizationRanges
from veinjax.data.phantom_random_tissue import Tissue


# ---- Artefacts ----


def _columns_clear(vessels, x0: float, x1: float, below: float) -> bool:
  """No vessel reaches below depth `below` within columns [x0, x1]."""
  return all(v.cy + v.outer_radius < below or v.cx + v.outer_radius < x0 or v.cx - v.outer_radius > x1
             for v in vessels)


def artifacts(rng: np.random.Generator, p: RandomizationRanges, n: int, tissue: Tissue, vessels) -> dict:
  """Reverberation and haze (over everything, lumens included), shadows and a lifted probe edge (mu)."""
  ys, xs = coords(n)
  echo, mu = tissue.echo, tissue.mu
  info = {}
  if rng.random() < p.reverberation_probability:
    period = max(int(uniform(rng, p.reverberation_period) * n), 2)
    decay = uniform(rng, p.reverberation_decay)
    near_field = echo[:period].copy()
    for k in range(1, 5):
      start = k * period
      if start >= n or decay**k < 0.01:
        break
      rows = min(period, n - start)
      echo[start:start + rows] += decay**k * near_field[:rows]
    info["reverberation"] = (period, decay)
  haze, length = uniform(rng, p.haze), uniform(rng, p.haze_depth) * n
  echo += haze * tissue.level * np.exp(-ys / length)
  info["haze"] = haze
  shadows = []
  for _ in range(integer(rng, p.num_shadows)):
    width, strength = uniform(rng, p.shadow_width) * n, uniform(rng, p.shadow_strength)
    for _ in range(20):
      xc, top = rng.uniform(0.05, 0.95) * n, rng.uniform(tissue.skin + 0.05 * n, 0.9 * n)
      if _columns_clear(vessels, xc - width, xc + width, top):
        edges = np.clip(1.0 - np.abs(xs - xc) / (0.5 * width), 0, 1) ** 0.5
        mu += strength * edges * (ys > top)
        echo += uniform(rng, (0.5, 2.0)) * edges * gaussian_band(ys, top, max(0.005 * n, 0.7))  # the reflector
        shadows.append((xc, top, width))
        break
  info["shadows"] = shadows
  if rng.random() < p.lifted_probe_probability:
    width, left = uniform(rng, p.lifted_width) * n, rng.random() < 0.5
    near = [v.cx - v.outer_radius for v in vessels] if left else [n - v.cx - v.outer_radius for v in vessels]
    width = min([width] + [w - 0.01 * n for w in near])
    if width > 0.02 * n:
      side = np.clip((width - (xs if left else n - xs)) / 3.0, 0, 1)
      mu += 30.0 * side
      info["lifted"] = ("left" if left else "right", width)
  return info


# ---- Gain, speckle, display ----


def gain_params(rng: np.random.Generator, p: RandomizationRanges) -> dict:
  """The `gain` group: attenuation, TGC ramp and sliders, lateral fall-off, electronic noise."""
  drawn = dict(attenuation=uniform(rng, p.attenuation), tgc_compensation=uniform(rng, p.tgc_compensation),
               sliders=rng.normal(0.0, 1.0, 8) * uniform(rng, p.tgc_sliders),
               lateral_falloff=uniform(rng, p.lateral_falloff), lateral_power=rng.uniform(1.5, 4.0),
               noise_level=uniform(rng, p.noise_level))
  if not p.gain:
    drawn.update(FIXED["gain"], sliders=np.zeros(8), lateral_power=3.0)
  return drawn


def speckle_params(rng: np.random.Generator, p: RandomizationRanges) -> dict:
  """The `speckle` group: the PSF, its focus, the scatterers' density and the speckle contrast."""
  drawn = dict(psf_axial=uniform(rng, p.psf_axial), psf_lateral=uniform(rng, p.psf_lateral),
               psf_defocus=uniform(rng, p.psf_defocus), focus_depth=uniform(rng, p.focus_depth),
               scatterer_density=log_uniform(rng, p.scatterer_density),
               speckle_contrast=uniform(rng, p.speckle_contrast))
  return drawn if p.speckle else dict(FIXED["speckle"])


def compression_params(rng: np.random.Generator, p: RandomizationRanges) -> dict:
  """The `compression` group: dynamic range, grey level, contrast curve, reject."""
  drawn = dict(dynamic_range=uniform(rng, p.dynamic_range), grey=uniform(rng, p.grey),
               gamma=uniform(rng, p.gamma), reject=uniform(rng, p.reject))
  return drawn if p.compression else dict(FIXED["compression"])


def _cumsum_rows(x: np.ndarray) -> np.ndarray:
  """np.cumsum(x, axis=0), row by row (about 3x faster for [n, n] float32: contiguous rows)."""
  out = np.empty_like(x)
  np.copyto(out[0], x[0])
  for i in range(1, x.shape[0]):
    np.add(out[i - 1], x[i], out=out[i])
  return out


def _gaussian_transfer(length: int, sigma: float) -> np.ndarray:
  """The DFT of a unit-sum periodic Gaussian of std `sigma` pixels, over `length` samples."""
  f = sp_fft.fftfreq(length).astype(np.float32)
  return np.exp(-2.0 * (np.pi * sigma * f) ** 2).astype(np.float32)


def speckle_power(amplitude: np.ndarray, spk: dict, noise: np.random.Generator) -> np.ndarray:
  """The envelope power [n, n] of `amplitude` (the echo after attenuation and gain) with speckle: its mean
  is amplitude^2 where that is uniform, its std / mean `speckle_contrast` (below a pixel's size, less).

  Scatterers times the echo, convolved with the PSF (a separable Gaussian, laterally wider away from the
  focus), then the envelope's power. The scatterers are complex, unit power, maybe sparse, plus a coherent
  part that lowers the speckle contrast (Rician speckle: partly developed, or compounded). They are uniform
  rather than Gaussian (5x cheaper to draw): the PSF sums several, so the field is near Gaussian.
  """
  n = amplitude.shape[0]
  yn = coords(n)[0] / n
  sigma_y = max(spk["psf_axial"] * n, 0.35)
  sigma_x = max(spk["psf_lateral"] * n, 0.35)
  pad = int(math.ceil(3 * max(sigma_y, sigma_x * spk["psf_defocus"])))
  length = sp_fft.next_fast_len(n + pad)  # zero padding: no wrap-around of the convolution
  hy = _gaussian_transfer(length, sigma_y)
  hxs = [_gaussian_transfer(length, sigma_x)]
  if spk["psf_defocus"] > 1.02:
    hxs.append(_gaussian_transfer(length, sigma_x * spk["psf_defocus"]))
  spreads = [float(np.mean(hy**2) * np.mean(hx**2)) for hx in hxs]  # sum of the PSF squared (unit-sum PSF)
  # Speckle contrast (std / mean of the power) at the focus; below a pixel, cells average within a pixel.
  contrast = spk["speckle_contrast"] * min(1.0, math.sqrt(spk["psf_axial"] * n / 0.5 * spk["psf_lateral"] * n / 0.5))
  contrast = min(max(contrast, 0.05), 1.0)
  ratio = ((1 - contrast**2) + math.sqrt(1 - contrast**2)) / contrast**2  # Rician K: coherent / diffuse power
  coherent = math.sqrt(ratio * spreads[0])
  density = spk["scatterer_density"]
  z = noise.random((n, n, 2), dtype=np.float32)
  z -= np.float32(0.5)
  field = z.view(np.complex64)[..., 0]  # [n, n] complex, real and imaginary parts uniform on +-0.5
  field *= np.float32(math.sqrt(6.0))  # unit power
  if density < 0.999:
    field *= (noise.random((n, n), dtype=np.float32) < density) * np.float32(1.0 / math.sqrt(density))
  field += np.float32(coherent)
  field *= amplitude
  # fft2 axis by axis, transforming only the rows and columns that are not all padding.
  spectrum = sp_fft.fft(sp_fft.fft(field, n=length, axis=1, workers=1), n=length, axis=0, workers=1,
                        overwrite_x=True)
  spectrum *= hy[:, None]
  rows = sp_fft.ifft(spectrum, axis=0, workers=1, overwrite_x=True)[:n]
  powers = []
  for k, (hx, spread) in enumerate(zip(hxs, spreads)):
    filtered = rows * hx[None, :] if k + 1 < len(hxs) else np.multiply(rows, hx[None, :], out=rows)
    out = sp_fft.ifft(filtered, axis=1, workers=1, overwrite_x=True)[:, :n]
    power = out.real**2
    power += out.imag**2
    power *= np.float32(1.0 / (spread + coherent**2))  # mean power = amplitude^2 (where it is uniform)
    powers.append(power)
  power = powers[0]
  if len(powers) > 1:  # wider laterally away from the focus
    blend = np.clip(np.abs(yn - spk["focus_depth"]) * 2.5, 0, 1)
    power *= 1 - blend
    power += powers[1] * blend
  return power


def bmode(echo: np.ndarray, mu: np.ndarray, skin: float, gain: dict, spk: dict, comp: dict,
          noise: np.random.Generator) -> np.ndarray:
  """Beam-space acoustics -> display levels in [0, 1] (before the contrast curve). In place where it can."""
  n = echo.shape[0]
  ys, xs = coords(n)
  yn = ys / n
  sliders = np.interp(yn[:, 0], np.linspace(0, 1, 8), gain["sliders"]).astype(np.float32)[:, None]
  alpha = gain["attenuation"]
  log_gain = (alpha * gain["tgc_compensation"]) * yn + sliders  # TGC [n, 1]
  lateral = 1.0 - gain["lateral_falloff"] * np.abs(2 * xs / n - 1) ** gain["lateral_power"]  # [1, n]
  amplitude = _cumsum_rows(mu)  # the path through attenuating tissue ...
  amplitude *= np.float32(-alpha / n)
  amplitude += log_gain
  np.exp(amplitude, out=amplitude)
  amplitude *= echo
  amplitude *= lateral.astype(np.float32)

  power = speckle_power(amplitude, spk, noise)
  electronic = noise.standard_exponential((n, n), dtype=np.float32)
  electronic *= gain["noise_level"] ** 2 * np.exp(2 * log_gain)
  power += electronic
  power += np.float32(1e-12)
  db = np.log10(power, out=power)
  db *= np.float32(10.0)
  # The operator's gain: the median tissue (below the skin) is shown at `grey` (after the contrast curve,
  # display ** gamma); then reject and clip.
  reference = float(np.median(db[int(skin) + 1::3, ::3])) if skin < n - 4 else float(np.median(db))
  level = comp["grey"] ** (1.0 / comp["gamma"])
  reject = min(comp["reject"], 0.5 * level)
  scale = 1.0 / (comp["dynamic_range"] * (1 - reject))
  display = db
  display -= np.float32(reference)
  display *= np.float32(scale)
  display += np.float32((level - reject) / (1 - reject))
  return np.clip(display, 0.0, 1.0, out=display)
