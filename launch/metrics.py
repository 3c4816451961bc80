"""Metrics: ``DIR/metrics.jsonl``, TensorBoard event files, a console progress line, and MFU.

Only process 0 writes (the trainer passes ``enabled=False`` elsewhere). ``metrics.jsonl`` holds
one JSON object per logged step (``step``, ``loss``, the objective's metrics, ``tokens_per_sec``,
``mfu``, ``learning_rate``) and one per evaluation (``step`` and ``eval/...`` keys). On resume
the file is cut back to the restored step, so a run killed and restarted ends with exactly the
lines of an uninterrupted run.

How FLOPs are counted (the objective's ``flops_per_step``, objectives/t5_family.py and
electra_family.py): model FLOPs only, the matmuls of the forward pass times 3 for training
(backward = 2 x forward); a matmul of [m, k] x [k, n] is 2mkn; rematerialised recomputation is
NOT counted, so MFU does not improve by recomputing. Per Transformer layer over T tokens of
width d (heads x head_dim = d): 2T(4d^2) for the Q/K/V/O projections, 2T(2 d d_ff) for a
two-matrix MLP (3 matrices for gated-GELU), 4 L T d for attention scores and values (sequence
length L); T5 decoder layers add cross-attention (projections over encoder and decoder tokens,
4 L_dec L_enc d); the output projection to the vocabulary is 2 T d V, counted only where a
loss needs logits (all decoder positions for T5; the masked slots for ELECTRA's generator).
Embedding lookups, norms, softmax and the optimizer are not counted. For T5 v1.1 small at
batch 8 x 512/114 this gives 850 GFLOP per step; for the ELECTRA-Small discriminator alone at
32 x 128, 254 GFLOP.

MFU = model FLOPs per step / step time / peak, where the peak is MEASURED once per process
(best time of a large square matmul in the run's compute dtype, float32 accumulation) and
multiplied by the device count on accelerators. On CPU all (fake) devices share the same cores,
so the CPU peak is the one measurement (``config.train.peak_flops`` overrides it).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

METRICS_FILE = "metrics.jsonl"


# ---------------------------------------------------------------------------------------------
# Peak FLOP/s.
# ---------------------------------------------------------------------------------------------
@functools.cache
def measure_peak_flops(dtype: str = "float32", size: int = 2048, repeats: int = 3) -> float:
    """Best FLOP/s of a ``size`` x ``size`` matmul on one device (cached per process)."""
    dtype = jnp.dtype(dtype)
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(key_b, (size, size), jnp.float32).astype(dtype)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    matmul(a, b).block_until_ready()  # compile
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def peak_flops(dtype: str, configured: float = 0.0) -> float:
    """The configured peak, or the measured one (x devices on accelerators)."""
    if configured > 0:
        return configured
    devices = 1 if jax.default_backend() == "cpu" else jax.device_count()
    return measure_peak_flops(dtype) * devices


# ---------------------------------------------------------------------------------------------
# Writers.
# ---------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """JSON-able Python scalars from numpy / jax scalars (NaN and inf stay floats)."""
    if isinstance(value, str | bool | int) or value is None:
        return value
    array = np.asarray(value)
    if array.size == 1:
        item = array.reshape(()).item()
        return float(item) if isinstance(item, float) else item
    return array.tolist()


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The JSON objects of a metrics.jsonl (a torn last line from a kill is ignored)."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    records = []
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def truncate_metrics(path: str, last_step: int) -> None:
    """Keeps only records with ``step <= last_step`` (and drops a torn last line)."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for record in kept:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)


class MetricsWriter:
    """metrics.jsonl + TensorBoard + console; a no-op when ``enabled`` is False."""

    def __init__(self, workdir: str, *, start_step: int, total_steps: int, enabled: bool = True,
                 tensorboard: bool = True, console: bool = True,
                 progress_keys: Sequence[str] = ()):
        self.enabled, self.console = enabled, console
        self.progress_keys = tuple(progress_keys)  # metrics shown in the progress line
        self.start_step, self.total_steps = start_step, total_steps
        self._start_time = time.perf_counter()
        self._tb = None
        self.path = os.path.join(workdir, METRICS_FILE)
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        truncate_metrics(self.path, start_step)
        self._file = open(self.path, "a")  # noqa: SIM115 -- closed in close()
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Appends one record (flushed, so a kill loses at most the line being written)."""
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        if not self.enabled:
            return record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        return record

    def progress(self, step: int, record: Mapping[str, Any]) -> None:
        """``step 120/1200 | loss 4.123 | 5,432 tok/s | MFU 12.3% | ETA 3m02s``."""
        if not (self.enabled and self.console):
            return
        elapsed = time.perf_counter() - self._start_time
        done = max(step - self.start_step, 1)
        eta = elapsed / done * max(self.total_steps - step, 0)
        parts = [f"step {step}/{self.total_steps}", f"loss {record.get('loss', math.nan):.4f}"]
        for key in self.progress_keys:
            if key in record:
                parts.append(f"{key} {record[key]:.4f}")
        if "tokens_per_sec" in record:
            parts.append(f"{record['tokens_per_sec']:,.0f} tok/s")
        if "mfu" in record:
            parts.append(f"MFU {100 * record['mfu']:.1f}%")
        parts.append(f"ETA {format_seconds(eta)}")
        print(" | ".join(parts), flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Throughput:
    """tokens/s and MFU over the steps since the last report."""

    def __init__(self, tokens_per_step: int, flops_per_step: float, peak: float):
        self.tokens_per_step, self.flops_per_step, self.peak = (tokens_per_step, flops_per_step,
                                                                 peak)
        self._time, self._steps = time.perf_counter(), 0

    def step(self) -> None:
        self._steps += 1

    def restart(self) -> None:
        """Excludes time spent outside training steps (evaluation, checkpoints) from rates."""
        self._time, self._steps = time.perf_counter(), 0

    def report(self) -> dict[str, float]:
        now = time.perf_counter()
        elapsed, steps = now - self._time, self._steps
        self._time, self._steps = now, 0
        if steps == 0 or elapsed <= 0:
            return {}
        step_time = elapsed / steps
        return {"step_time": step_time, "tokens_per_sec": self.tokens_per_step / step_time,
                "mfu": self.flops_per_step / step_time / self.peak}
