"""Orbax checkpoints: periodic async saves, retention, exact resume, re-sharding, warm starts.

Layout: ``WORKDIR/checkpoints/<step>/{state,data}``. ``state`` is the train state
``{"step", "params", "opt_state"}`` (every process writes the shards it holds); ``data`` is the
input pipeline's JSON state, so a resumed run reads exactly the batches it has not consumed.

Atomicity comes from orbax: a save is written under ``<step>.orbax-checkpoint-tmp-*`` and renamed
to ``<step>`` only once every process has finished, so a run killed mid-save leaves a temporary
directory that is never listed as a step (and is removed when the manager next starts).

Restore reads with the CURRENT run's shardings (``jax.ShapeDtypeStruct(..., sharding=...)``), so
a checkpoint saved on 8 devices restores on 4 or on 1. A step that fails to restore (a corrupt
or truncated file) is reported with its path and the previous good step is tried; nothing is
deleted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
STATE_ITEM = "state"
DATA_ITEM = "data"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def abstract_like(tree: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` leaves carrying the target ``shardings`` (what restore lays out)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


class DiskFull(OSError):
    """A checkpoint could not be written for lack of space (the earlier ones are intact)."""


def _is_disk_full(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = f"{type(error).__name__}: {error}"
        if (getattr(error, "errno", None) == errno.ENOSPC or "No space left" in text
                or "RESOURCE_EXHAUSTED" in text):
            return True
        error = error.__cause__ or error.__context__
    return False


class _DiskFullRecords(logging.Filter):
    """Drops orbax's background-thread tracebacks of a full disk: :class:`DiskFull` says it in
    one sentence (they repeat the same error four times, ~300 lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        error = record.exc_info[1] if record.exc_info else None
        return not ((error is not None and _is_disk_full(error))
                    or "No space left" in record.getMessage()
                    or "RESOURCE_EXHAUSTED" in record.getMessage())


_DISK_FULL_FILTER = _DiskFullRecords()


def _size_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total / 2**20


class Checkpointer:
    """An orbax ``CheckpointManager`` with pretrax's cadence, retention and fallback.

    A save that runs out of disk space (when it starts, or later while its async part
    writes) raises :class:`DiskFull` naming the step, the directory, the space a checkpoint
    needs and the newest intact checkpoint; orbax's half-written temporary directory is
    removed on the next start (``cleanup_tmp_directories``).
    """

    def __init__(self, directory: str, *, every: int, keep: int, keep_period: int = 0,
                 async_save: bool = True, log: Callable[[str], None] = print):
        if keep < 1:
            raise ValueError(f"config.checkpoint.keep={keep}; expected >= 1")
        self.directory, self.every, self.log = directory, every, log
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_period or None, create=True,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(directory, options=options,
                                             item_names=(STATE_ITEM, DATA_ITEM))
        for name in ("absl", ""):  # orbax logs through absl (and the root logger)
            if _DISK_FULL_FILTER not in logging.getLogger(name).filters:
                logging.getLogger(name).addFilter(_DISK_FULL_FILTER)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state: Any, data_state: dict[str, Any]) -> bool:
        """Starts an (async) save of ``step``; False if that step is already on disk."""
        if step in self.manager.all_steps():
            return False
        args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                     DATA_ITEM: ocp.args.JsonSave(data_state)})
        with self._disk_errors(step):
            self.manager.wait_until_finished()  # a failed earlier async save surfaces here
            self._pending = step
            saved = bool(self.manager.save(step, args=args, force=True))
        return saved

    @contextlib.contextmanager
    def _disk_errors(self, step: int | None):
        try:
            yield
        except Exception as error:
            if not _is_disk_full(error):
                raise
            failed = getattr(self, "_pending", None) or step
            intact = [s for s in self.all_steps() if s != failed]
            sizes = [_size_mb(os.path.join(self.directory, str(s))) for s in intact[-1:]]
            need = f" (a checkpoint takes ~{sizes[0]:.0f} MB)" if sizes and sizes[0] else ""
            raise DiskFull(
                f"disk full while saving step {failed} to {self.directory}{need}; "
                + (f"checkpoint {intact[-1]} is intact" if intact else "no earlier checkpoint")
                + ". Free space (or point --workdir elsewhere) and rerun to resume.") from error

    def restore(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, data_state) of the newest READABLE step, or None when there is none.

        ``abstract_state``: ``abstract_like(state, shardings)`` of the current run.
        """
        self.manager.reload()
        for step in sorted(self.manager.all_steps(), reverse=True):
            path = os.path.join(self.directory, str(step))
            try:
                args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                                             DATA_ITEM: ocp.args.JsonRestore()})
                restored = self.manager.restore(step, args=args)
            except Exception as error:  # noqa: BLE001 -- any unreadable step falls back
                message = (f"checkpoint {path} could not be restored "
                           f"({type(error).__name__}: {str(error)[:300]}); trying an older "
                           "step (nothing is deleted)")
                logging.error(message)
                self.log(f"ERROR: {message}")
                continue
            return step, restored[STATE_ITEM], dict(restored[DATA_ITEM])
        return None

    def wait(self) -> None:
        """Blocks until the pending async save is committed."""
        with self._disk_errors(None):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            with self._disk_errors(None):
                self.manager.wait_until_finished()
        finally:
            self.manager.close()


# ---------------------------------------------------------------------------------------------
# Warm starts (params only).
# ---------------------------------------------------------------------------------------------
def is_hf_dir(path: str) -> bool:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config) as f:
        return "model_type" in json.load(f)


def resolve_step_dir(path: str) -> str:
    """A workdir, a ``checkpoints`` dir or a step dir -> the newest step dir."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, STATE_ITEM)):
        return path
    if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
        path = os.path.join(path, CHECKPOINT_DIR)
    steps = [int(name) for name in os.listdir(path) if name.isdigit()] if os.path.isdir(
        path) else []
    if not steps:
        raise FileNotFoundError(f"init_from={path!r} holds no checkpoint (expected a workdir, "
                                f"its '{CHECKPOINT_DIR}' dir, a step dir or a Hugging Face dir)")
    return os.path.join(path, str(max(steps)))


def load_params(path: str, abstract_params: Any) -> Any:
    """Params from a pretrax checkpoint (optimizer state ignored), laid out like
    ``abstract_params`` (``abstract_like(params, shardings)``)."""
    step_dir = resolve_step_dir(path)
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding),
                                abstract_params)
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        restored = checkpointer.restore(
            os.path.join(step_dir, STATE_ITEM),
            args=ocp.args.PyTreeRestore(item={"params": abstract_params},
                                        restore_args={"params": restore_args},
                                        partial_restore=True))
    except Exception as error:
        raise ValueError(f"init_from: cannot read params from {step_dir}: {error}") from error
    return restored["params"]


def save_params(directory: str, params: Any, step: int = 0) -> str:
    """Writes a params-only checkpoint (``launch.convert``); returns its step dir."""
    step_dir = os.path.join(os.path.abspath(directory), CHECKPOINT_DIR, str(step))
    checkpointer = ocp.PyTreeCheckpointer()
    checkpointer.save(os.path.join(step_dir, STATE_ITEM), {"params": params})
    return step_dir


def check_shapes(params: Any, abstract_params: Any, source: str) -> None:
    """Clear error when warm-start params do not fit the configured model."""
    got = jax.tree_util.tree_flatten_with_path(params)[0]
    want = dict(jax.tree_util.tree_flatten_with_path(abstract_params)[0])
    got_paths = {jax.tree_util.keystr(p): np.shape(v) for p, v in got}
    want_paths = {jax.tree_util.keystr(p): tuple(v.shape) for p, v in want.items()}
    if got_paths != want_paths:
        missing = sorted(set(want_paths) - set(got_paths))[:5]
        extra = sorted(set(got_paths) - set(want_paths))[:5]
        wrong = sorted(k for k in set(got_paths) & set(want_paths)
                       if got_paths[k] != want_paths[k])[:5]
        raise ValueError(f"init_from {source}: params do not match the configured model; "
                         f"missing {missing}, unexpected {extra}, wrong shapes "
                         f"{[(k, got_paths[k], want_paths[k]) for k in wrong]}")


def read_params(path: str) -> Any:
    """The params of a pretrax checkpoint as host NumPy arrays, in the layout they were saved
    (for warm starts that change the layout, e.g. a classifier from a pretraining run)."""
    step_dir = resolve_step_dir(path)
    item = os.path.join(step_dir, STATE_ITEM)
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        tree = checkpointer.metadata(item)
        tree = getattr(tree, "item_metadata", tree)
        tree = getattr(tree, "tree", tree)
        params_meta = tree["params"]
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                    params_meta)
        restored = checkpointer.restore(
            item, args=ocp.args.PyTreeRestore(item={"params": params_meta},
                                              restore_args={"params": restore_args},
                                              partial_restore=True))
    except Exception as error:
        raise ValueError(f"init_from: cannot read params from {step_dir}: {error}") from error
    return restored["params"]


BEST_DIR = "best"


def best_record(workdir: str) -> dict | None:
    """``WORKDIR/best/best.json`` ({step, metric, value}) or None."""
    path = os.path.join(workdir, BEST_DIR, "best.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def save_best(workdir: str, params: Any, step: int, metric: str, value: float) -> None:
    """Keeps ``params`` as the best so far: ``WORKDIR/best/checkpoints/STEP`` + ``best.json``
    (a collective on multi-host; process 0 drops the previous best afterwards)."""
    directory = os.path.join(workdir, BEST_DIR)
    save_params(directory, params, step)
    if jax.process_index() != 0:
        return
    steps_dir = os.path.join(directory, CHECKPOINT_DIR)
    for name in os.listdir(steps_dir):
        if name.isdigit() and int(name) != step:
            shutil.rmtree(os.path.join(steps_dir, name), ignore_errors=True)
    tmp = os.path.join(directory, "best.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"step": step, "metric": metric, "value": value}, f)
    os.replace(tmp, os.path.join(directory, "best.json"))
