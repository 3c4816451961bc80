"""Keep a CPU machine's start-up quiet when ``libtpu`` is installed but no TPU is attached.

The planner's extra (``pip install -e ".[plan]"``) installs ``libtpu`` so TPU programs compile
on any machine. JAX then probes for TPU hardware at start-up and, on a machine without it,
prints a screen of metadata-server warnings before anything of ours. When no TPU device file
exists (``/dev/accel*`` on TPU VMs, ``/dev/vfio/N`` on newer ones), no GPU plugin is installed
and the user has not chosen platforms (``JAX_PLATFORMS``), runs use the CPU backend directly.
"""

from __future__ import annotations

import glob
import importlib.util
import os


def _tpu_attached() -> bool:
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _gpu_plugin_installed() -> bool:
    return any(importlib.util.find_spec(name) is not None
               for name in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin"))


def prefer_cpu_without_accelerators() -> None:
    """Call before JAX initialises its backends (before the first ``jax.devices()``)."""
    if os.environ.get("JAX_PLATFORMS") or os.environ.get("TPU_WORKER_HOSTNAMES"):
        return
    if importlib.util.find_spec("libtpu") is None or _tpu_attached() or _gpu_plugin_installed():
        return
    import jax

    jax.config.update("jax_platforms", "cpu")
