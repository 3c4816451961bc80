"""Accelerator facts for ``launch/plan.py``: HBM and peak bf16 FLOP/s per chip, and TPU topologies.

The figures are the vendors' published per-chip numbers (dense bf16, no sparsity):

| chip | HBM | peak bf16 | source |
|---|---|---|---|
| TPU v4 | 32 GiB | 275 TFLOP/s | Cloud TPU "TPU v4" system architecture page |
| TPU v5e | 16 GiB | 197 TFLOP/s | Cloud TPU "TPU v5e" page |
| TPU v5p | 95 GB | 459 TFLOP/s | Cloud TPU "TPU v5p" page |
| TPU v6e | 32 GiB | 918 TFLOP/s | Cloud TPU "TPU v6e" (Trillium) page |
| A100 80GB SXM | 80 GB | 312 TFLOP/s | NVIDIA A100 datasheet |
| H100 80GB SXM | 80 GB | 989 TFLOP/s | NVIDIA H100 datasheet |

The runtime keeps a little of each chip's HBM for itself, so a plan with only a few hundred MiB
of headroom is a coin toss; the plan prints the headroom rather than rounding it away.

TPU topologies are the names ``jax.experimental.topologies.get_topology_desc`` accepts
(``v4:4x4x8``, ``v5e:16x16``, ``v5p:4x4x4``, ``v6e:4x4``): with ``libtpu`` installed it returns
real TPU device descriptions on a machine without TPUs, and the TPU compiler compiles for them.
v4 is described as "megacore" (one device per chip, as JAX sees a v4 pod), so a v4 device is a
whole chip like every other generation here. GPUs have no offline compiler here: their plans are
analytic only.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import math
import os
import re
from typing import Any

GiB = 1024**3
GB = 1000**3


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # as printed
    hbm_bytes: int
    peak_flops: float  # dense bf16 FLOP/s per chip
    topology_prefix: str | None  # the get_topology_desc generation ("v4"...); None for GPUs
    chip_config: str = "default"


CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, "v4", chip_config="megacore"),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, "v5e"),
    "v5p": Chip("TPU v5p", 95 * GB, 459e12, "v5p"),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12, "v6e"),
    "a100": Chip("A100 80GB", 80 * GB, 312e12, None),
    "h100": Chip("H100 80GB", 80 * GB, 989e12, None),
}

_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")
_GPUS = re.compile(r"^(a100|h100):(\d+)$")


@dataclasses.dataclass(frozen=True)
class Target:
    """What the plan compiles for: a chip kind, how many, and (TPUs) the topology name."""

    chip: Chip
    num_chips: int
    topology: str | None  # None for GPUs

    @property
    def label(self) -> str:
        where = f" ({self.topology})" if self.topology else ""
        return f"{self.num_chips} x {self.chip.name}{where}"


def parse_target(text: str) -> Target:
    """``v4:4x4x8`` (a TPU topology) or ``h100:64`` / ``a100:8`` (a GPU count)."""
    text = text.strip()
    m = _TOPOLOGY.match(text)
    if m:
        chip = CHIPS[m.group(1)]
        return Target(chip, math.prod(int(d) for d in m.group(2).split("x")), text)
    m = _GPUS.match(text)
    if m and int(m.group(2)) > 0:
        return Target(CHIPS[m.group(1)], int(m.group(2)), None)
    raise ValueError(f"--topology={text!r}: expected a TPU topology GEN:AxB[xC] with GEN in "
                     "v4, v5e, v5p, v6e (e.g. v4:4x4x8, v5e:16x16) or a GPU count a100:N / h100:N")


def libtpu_version() -> str | None:
    """The installed libtpu's version, or None (the ``plan`` extra is not installed)."""
    if importlib.util.find_spec("libtpu") is None:
        return None
    try:
        return importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def tpu_devices(target: Target) -> list[Any]:
    """The device descriptions of ``target``'s TPU slice, from libtpu, without any TPU.

    libtpu probes the environment for the VM's accelerator type and worker hostnames and warns
    (or fails) when they are missing; they do not influence an explicit topology, so harmless
    values are set unless the user set their own.
    """
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v4-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # Several plans (or tests) may run at once; nothing here owns a real TPU to lock.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=target.topology, chip_config_name=target.chip.chip_config,
        chips_per_host_bounds=(2, 2, 1), num_slices=1)
    devices = list(desc.devices)
    if len(devices) != target.num_chips:
        raise RuntimeError(f"libtpu described {target.topology} as {len(devices)} devices, "
                           f"expected {target.num_chips} chips")
    return devices
