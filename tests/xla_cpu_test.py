"""veinjax/xla_cpu.py: the XLA:CPU flag veinjax sets at import, and the models' reading of it."""

import os
import subprocess
import sys

import pytest

from veinjax import xla_cpu

CHECKED = xla_cpu.CHECKED_JAXLIB[0]


def _flag(xla_flags="", opt_out=None, version=CHECKED + (2,), started=False):
  return xla_cpu.flag_to_add(xla_flags, opt_out=opt_out, jaxlib_version=version, backends_started=started)


def test_flag_added_on_a_checked_jaxlib_with_no_setting_of_its_own():
  assert _flag() == "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
  assert _flag("--xla_force_host_platform_device_count=4") == xla_cpu.EIGEN_CONVOLUTIONS


@pytest.mark.parametrize("why", ["opt_out", "users_own", "started", "unchecked", "unknown"])
def test_flag_not_added(why):
  kwargs = {
      "opt_out": {"opt_out": "0"},
      "users_own": {"xla_flags": "--xla_cpu_experimental_ynn_fusion_type=dot"},
      "started": {"started": True},  # XLA has read its flags: adding one now would change nothing
      "unchecked": {"version": (0, 9, 2)},  # an unknown flag aborts XLA at start-up
      "unknown": {"version": None},
  }[why]
  assert _flag(**kwargs) is None


@pytest.mark.parametrize("xla_flags, active", [
    ("", True),  # XLA's default list holds YNNPACK's convolutions
    ("--xla_force_host_platform_device_count=2", True),
    (xla_cpu.EIGEN_CONVOLUTIONS, False),
    ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-dot", False),
    ("--xla_cpu_experimental_ynn_fusion_type=-dot", True),
    ("--xla_cpu_experimental_ynn_fusion_type=dot,eltwise", False),  # an exact list without them
    ("--xla_cpu_experimental_ynn_fusion_type=individual_convolution", True),
    ("--xla_cpu_experimental_ynn_fusion_type=", True),  # empty: the default
    (xla_cpu.EIGEN_CONVOLUTIONS + " --xla_cpu_experimental_ynn_fusion_type=+individual_convolution", True),
])
def test_ynn_convolutions_active_reads_the_last_setting(xla_flags, active):
  assert xla_cpu.ynn_convolutions_active(xla_flags) is active


_PROBE = """
import os
import veinjax  # first: the flag goes in before JAX starts
import jax, jax.numpy as jnp
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
hlo = jax.jit(conv).lower(jnp.zeros((4, 64, 64, 64)), jnp.zeros((3, 3, 64, 64))).compile().as_text()
print(repr(os.environ.get("XLA_FLAGS", "")))
print("ynn" if "__ynn_fusion" in hlo else "xla")
"""


def _probe(**env_extra):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.OPT_OUT_ENV)}
  env.update(JAX_PLATFORMS="cpu", **env_extra)
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300,
                       check=True).stdout.split("\n")
  return out[0], out[1]


@pytest.mark.skipif(xla_cpu._jaxlib_version()[:2] not in xla_cpu.CHECKED_JAXLIB,  # pylint: disable=protected-access
                    reason="veinjax sets the flag only on the jaxlib releases it has checked")
def test_importing_veinjax_takes_the_convolutions_out_of_ynnpack():
  flags, convolution = _probe()
  assert flags == repr(xla_cpu.EIGEN_CONVOLUTIONS) and convolution == "xla"
  # The premise, and the opt-out: XLA's default runs the convolution as a YNNPACK fusion.
  flags, convolution = _probe(**{xla_cpu.OPT_OUT_ENV: "0"})
  assert flags == "''" and convolution == "ynn"
  # The user's own flags are kept, ours appended.
  flags, convolution = _probe(XLA_FLAGS="--xla_force_host_platform_device_count=2")
  assert flags == repr("--xla_force_host_platform_device_count=2 " + xla_cpu.EIGEN_CONVOLUTIONS)
  assert convolution == "xla"
