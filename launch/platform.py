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
import platform as std_platform
import sys


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


# ---------------------------------------------------------------------------------------------
# Host memory: huge pages for XLA:CPU's large buffers.
# ---------------------------------------------------------------------------------------------
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _transparent_huge_pages_mode() -> str:
    """The kernel's THP mode (``always``, ``madvise`` or ``never``); "" where there is none."""
    try:
        with open(_THP_MODE_FILE) as f:
            text = f.read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else ""


def huge_pages_env(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment under which glibc backs large allocations with transparent huge pages.

    XLA:CPU allocates every step's temporaries afresh, and glibc serves allocations above 32 MB
    (every ``[batch, heads, length, length]`` attention array) with new ``mmap`` regions, so each
    step page-faults its whole working set in 4 KiB pages: ~950,000 faults per T5-small step
    (3.7 GB), ~10% of the step. With ``glibc.malloc.hugetlb=1`` glibc asks for transparent huge
    pages on those regions (``madvise``), 512 times fewer faults. Returns None where that would
    change nothing: not glibc, the kernel's THP mode is not ``madvise`` (``always`` already does
    it, ``never`` forbids it), the user set ``glibc.malloc.hugetlb`` themselves, or
    ``PRETRAX_HUGE_PAGES=0``.
    """
    environ = dict(os.environ if environ is None else environ)
    tunables = environ.get("GLIBC_TUNABLES", "")
    if (environ.get("PRETRAX_HUGE_PAGES", "1") == "0" or "glibc.malloc.hugetlb" in tunables
            or std_platform.libc_ver()[0] != "glibc"
            or _transparent_huge_pages_mode() != "madvise"):
        return None
    environ["GLIBC_TUNABLES"] = ":".join(filter(None, (tunables, HUGE_PAGES_TUNABLE)))
    return environ


def reexec_with_huge_pages() -> None:
    """Restarts this command under ``huge_pages_env`` (glibc reads tunables only at start-up).

    Call first thing in an entry point's ``__main__`` block, before JAX is imported. The process
    keeps its pid, arguments and working directory, so schedulers and signal handlers see no
    difference; where ``huge_pages_env`` returns None nothing happens.
    """
    environ = huge_pages_env()
    if environ is not None and getattr(sys, "orig_argv", None):
        os.execve(sys.executable, sys.orig_argv, environ)
