"""Orbax checkpoints: periodic async saves, retention, exact resume, re-sharding, warm starts.

Layout: ``WORKDIR/checkpoints/<step>/{state,data[,iterator]}``. ``state`` is the train state
``{"step", "params", "opt_state"}`` (every process writes the shards it holds); ``data`` is the
input pipeline's JSON state, so a resumed run reads exactly the batches it has not consumed;
``iterator`` (streaming seqio sources only) holds each process's tf.data iterator, written with
``tf.train.Checkpoint`` while the save waits, so such a run resumes where it stopped instead of
re-reading every batch it consumed (T5X checkpoints its input iterators the same way).

Atomicity comes from orbax: a save is written under ``<step>.orbax-checkpoint-tmp-*`` and renamed
to ``<step>`` only once every process has finished, so a run killed mid-save leaves a temporary
directory that is never listed as a step (and is removed when the manager next starts).

Restore reads with the CURRENT run's shardings (``jax.ShapeDtypeStruct(..., sharding=...)``), so
a checkpoint saved on 8 devices restores on 4 or on 1. A step that fails to restore (a corrupt
or truncated file) is reported with its path and the previous good step is tried; nothing is
deleted.

Orbax does not checksum array data: bytes overwritten inside a tensorstore chunk restore
without error as wrong numbers (found by ``launch.chaos``'s ``flip`` drill: the run resumed,
then diverged). So every save also records two 32-bit checksums per array in the data item
(:func:`fingerprints`: wrapping sums over the array's bit patterns, computed on device, exact
and independent of the sharding), and a restore whose arrays do not match them is treated as
unreadable: reported, the previous step tried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
STATE_ITEM = "state"
DATA_ITEM = "data"
ITERATOR_ITEM = "iterator"
FINGERPRINTS = "state_checksums"  # key of the data item holding the state's checksums


def _bits(x: jax.Array) -> jax.Array:
    """An array's bit patterns as uint32 words (no reshape, so no resharding)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_ or x.dtype.itemsize == 1:
        return x.astype(jnp.uint32)
    if x.dtype.itemsize == 2:
        return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8-byte types gain a trailing dim 2


@jax.jit
def _checksums(leaves: list[jax.Array]) -> list[jax.Array]:
    out = []
    for x in leaves:
        words = _bits(x)
        mixed = (words ^ (words >> 15)) * jnp.uint32(0x2C1B3C6D)
        mixed = (mixed ^ (mixed >> 12)) * jnp.uint32(0x297A2D39)
        out.append(jnp.stack([jnp.sum(words, dtype=jnp.uint32),
                              jnp.sum(mixed ^ (mixed >> 15), dtype=jnp.uint32)]))
    return out


def fingerprints(state: Any) -> dict[str, list[int]]:
    """{array path: [sum of its 32-bit words, sum of a hash of each word]}, both mod 2**32.

    Wrapping integer sums are exact and order-free, so the same arrays give the same numbers
    on any mesh or device count; a corrupted byte changes both with near certainty."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    leaves = [(jax.tree_util.keystr(path), x) for path, x in flat if hasattr(x, "dtype")]
    sums = jax.device_get(_checksums([x for _, x in leaves]))
    return {name: [int(v) for v in np.asarray(value)]
            for (name, _), value in zip(leaves, sums, strict=True)}


def _verify(step: int, state: Any, expected: dict[str, list[int]] | None) -> None:
    if expected is None:  # written before checksums were recorded
        return
    for name, value in fingerprints(state).items():
        if expected.get(name) != value:
            raise ValueError(f"array {name} of step {step} does not match the checksum saved "
                             f"with it ({expected.get(name)} saved, {value} read): the files "
                             "were changed after the save")


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
    """Drops the background threads' reports of a full disk: :class:`DiskFull` says it in one
    sentence (orbax, asyncio and tensorstore repeat the same error dozens of times)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        return not ((error is not None and _is_disk_full(error))
                    or "No space left" in message or "RESOURCE_EXHAUSTED" in message)


_DISK_FULL_FILTER = _DiskFullRecords()


def _quiet_unraisable(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """A ``sys.unraisablehook`` that drops what a failed async save leaves behind: tensorstore
    completes the writes still in flight on orbax's already-closed event loop ("Event loop is
    closed", one traceback per write) and the disk-full errors themselves."""

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if (isinstance(error, RuntimeError) and str(error) == "Event loop is closed") or (
                error is not None and _is_disk_full(error)):
            return
        previous(unraisable)

    hook.pretrax_quiet = True
    return hook


def _install_quiet_reporting() -> None:
    import sys

    # Handlers as well as loggers: a logger's own filters do not see records propagated from
    # its children (asyncio's "Task exception was never retrieved" reaches the root handlers).
    root = logging.getLogger()
    for target in (root, logging.getLogger("absl"), *root.handlers):
        if _DISK_FULL_FILTER not in target.filters:
            target.addFilter(_DISK_FULL_FILTER)
    if not getattr(sys.unraisablehook, "pretrax_quiet", False):
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)


def _size_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total / 2**20


def _iterator_prefix(directory: Any) -> str:
    """Where this process keeps its iterator in an iterator item. ``directory``: orbax's
    epath.Path, or a str (gs:// too: tf.io.gfile reads them)."""
    return f"{directory}/process_{jax.process_index()}-of-{jax.process_count()}"


class TfIteratorHandler(ocp.CheckpointHandler):
    """Saves / restores this process's tf.data iterator (its file reading position and its
    shuffle, packing and prefetch buffers) under ``process_<i>-of-<n>``.

    A synchronous handler: orbax runs it before ``save`` returns, so the iterator is captured
    at the step being saved while the trainer waits. TensorFlow is imported only here, and
    only runs with a streaming source ever pass an iterator."""

    def save(self, directory: Any, args: TfIteratorSave) -> None:
        import tensorflow as tf

        tf.train.Checkpoint(iterator=args.iterator).write(_iterator_prefix(directory))

    def restore(self, directory: Any, args: TfIteratorRestore) -> Any:
        import tensorflow as tf

        prefix = _iterator_prefix(directory)
        if not tf.io.gfile.exists(prefix + ".index"):
            raise FileNotFoundError(f"{prefix}.index: no iterator of this process")
        tf.train.Checkpoint(iterator=args.iterator).read(prefix).assert_consumed()
        return args.iterator


@ocp.args.register_with_handler(TfIteratorHandler, for_save=True)
@dataclasses.dataclass
class TfIteratorSave(ocp.args.CheckpointArgs):
    iterator: Any


@ocp.args.register_with_handler(TfIteratorHandler, for_restore=True)
@dataclasses.dataclass
class TfIteratorRestore(ocp.args.CheckpointArgs):
    iterator: Any  # a fresh iterator of the same dataset, restored in place


class Checkpointer:
    """An orbax ``CheckpointManager`` with pretrax's cadence, retention and fallback.

    A save that runs out of disk space (when it starts, or later while its async part
    writes) raises :class:`DiskFull` naming the step, the directory, the space a checkpoint
    needs and the newest intact checkpoint; orbax's half-written temporary directory is
    removed on the next start (``cleanup_tmp_directories``).
    """

    def __init__(self, directory: str, *, every: int, keep: int, keep_period: int = 0,
                 async_save: bool = True, check_free_space: bool = True,
                 log: Callable[[str], None] = print):
        if keep < 1:
            raise ValueError(f"config.checkpoint.keep={keep}; expected >= 1")
        self.directory, self.every, self.log = directory, every, log
        self.check_free_space = check_free_space
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_period or None, create=True,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(directory, options=options,
                                             item_names=(STATE_ITEM, DATA_ITEM, ITERATOR_ITEM))
        _install_quiet_reporting()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state: Any, data_state: dict[str, Any],
             iterator: Any = None) -> bool:
        """Starts an (async) save of ``step``; False if that step is already on disk.

        ``iterator``: the input's tf.data iterator, if it has one (written before this
        returns)."""
        if step in self.manager.all_steps():
            return False
        data_state = {**data_state, FINGERPRINTS: fingerprints(state)}
        items = {STATE_ITEM: ocp.args.StandardSave(state),
                 DATA_ITEM: ocp.args.JsonSave(data_state)}
        if iterator is not None:
            items[ITERATOR_ITEM] = TfIteratorSave(iterator)
        args = ocp.args.Composite(**items)
        with self._disk_errors(step):
            self.manager.wait_until_finished()  # a failed earlier async save surfaces here
            self._pending = step
            self._check_space(step, state)
            saved = bool(self.manager.save(step, args=args, force=True))
        return saved

    def _check_space(self, step: int, state: Any) -> None:
        """Refuses a save that cannot fit BEFORE orbax starts writing it.

        A checkpoint needs about as much as the newest one on disk (else the state's bytes); a
        save that runs out of space half-way is still caught by :meth:`_disk_errors`, but
        starting one that cannot fit wastes its write and floods the log with orbax's and
        tensorstore's background errors. Local directories only (an object store has no
        ``statvfs``); every process takes process 0's decision, so none enters the save alone.
        """
        if not self.check_free_space or "://" in self.directory:
            return
        steps = self.all_steps()
        need = (_size_mb(os.path.join(self.directory, str(steps[-1]))) if steps else
                sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes")) / 2**20)
        free = shutil.disk_usage(self.directory).free / 2**20
        short = need * 1.05 + 1 > free
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            short = bool(multihost_utils.broadcast_one_to_all(np.asarray(short)))
        if short:
            raise DiskFull(self._full_message(
                step, f" (a checkpoint takes ~{need:.1f} MB, {free:.1f} MB free)"))

    def _full_message(self, step: int, need: str) -> str:
        intact = [s for s in self.all_steps() if s != step]
        return (f"disk full while saving step {step} to {self.directory}{need}; "
                + (f"checkpoint {intact[-1]} is intact" if intact else "no earlier checkpoint")
                + ". Free space (or point --workdir elsewhere) and rerun to resume.")

    @contextlib.contextmanager
    def _disk_errors(self, step: int | None):
        try:
            yield
        except DiskFull:
            raise
        except Exception as error:
            if not _is_disk_full(error):
                raise
            failed = getattr(self, "_pending", None) or step
            intact = [s for s in self.all_steps() if s != failed]
            sizes = [_size_mb(os.path.join(self.directory, str(s))) for s in intact[-1:]]
            need = f" (a checkpoint takes ~{sizes[0]:.0f} MB)" if sizes and sizes[0] else ""
            # The writes the failed save never started are garbage-collected at exit, each with
            # a "coroutine ... was never awaited" warning after our one line; they are the same
            # failure, already reported.
            warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited",
                                    category=RuntimeWarning)
            raise DiskFull(self._full_message(failed, need)) from error

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
                data_state = dict(restored[DATA_ITEM])
                _verify(step, restored[STATE_ITEM], data_state.pop(FINGERPRINTS, None))
            except Exception as error:  # noqa: BLE001 -- any unreadable step falls back
                message = (f"checkpoint {path} could not be restored "
                           f"({type(error).__name__}: {str(error)[:300]}); trying an older "
                           "step (nothing is deleted)")
                logging.error(message)
                self.log(f"ERROR: {message}")
                continue
            return step, restored[STATE_ITEM], data_state
        return None

    def restore_iterator(self, step: int, iterator: Any,
                         check: Callable[[Any], None] | None = None) -> str | None:
        """Restores ``iterator`` in place from step ``step``'s iterator item, then runs
        ``check(iterator)`` (e.g. reads a batch); None on success, else why it could not (the
        caller falls back to re-reading its batches).

        Decided by all processes together (a collective on multi-host): if any one cannot
        restore its iterator, every one re-reads, so their positions agree. The handler is
        called directly, outside orbax's restore and its cross-process barrier, which a
        process that failed alone would leave the others waiting in."""
        try:
            directory = os.path.join(self.directory, str(step), ITERATOR_ITEM)
            TfIteratorHandler().restore(directory, TfIteratorRestore(iterator))
            if check is not None:
                check(iterator)
            why = None
        except Exception as error:  # noqa: BLE001 -- any failure means: re-read instead
            why = f"{type(error).__name__}: {str(error)[:300]}"
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            failed = multihost_utils.process_allgather(np.asarray(why is not None))
            if why is None and np.any(failed):
                why = (f"process(es) {np.flatnonzero(failed).tolist()} could not restore "
                       "theirs")
        return why

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


def committed_steps(directory: str) -> list[int]:
    """The committed steps under a checkpoint directory, read from its listing alone (no
    orbax manager): orbax renames a finished save to its step number, while an unfinished one
    carries an ``.orbax-checkpoint-tmp`` suffix. [] when the directory does not exist."""
    try:
        return sorted(int(name) for name in os.listdir(directory) if name.isdigit())
    except OSError:
        return []


def resolve_step_dir(path: str) -> str:
    """A workdir, a ``checkpoints`` dir or a step dir -> the newest step dir."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, STATE_ITEM)):
        return path
    if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
        path = os.path.join(path, CHECKPOINT_DIR)
    steps = committed_steps(path)
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
        stored = _params_metadata(checkpointer, os.path.join(step_dir, STATE_ITEM))
    except Exception as error:
        raise ValueError(f"init_from: cannot read params from {step_dir}: {error}") from error
    check_shapes(stored, abstract_params, step_dir)  # names the first mismatching tensor
    try:
        restored = checkpointer.restore(
            os.path.join(step_dir, STATE_ITEM),
            args=ocp.args.PyTreeRestore(item={"params": abstract_params},
                                        restore_args={"params": restore_args},
                                        partial_restore=True))
    except Exception as error:
        raise ValueError(f"init_from: cannot read params from {step_dir}: {error}") from error
    return restored["params"]


def _params_metadata(checkpointer: Any, item: str) -> Any:
    """The saved params' tree of array metadata (shapes, dtypes), read without the data."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns that a step-level metadata file is absent
    try:
        tree = checkpointer.metadata(item)
    finally:
        absl_logger.setLevel(level)
    tree = getattr(tree, "item_metadata", tree)
    tree = getattr(tree, "tree", tree)
    return tree["params"]


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
    got_paths = {jax.tree_util.keystr(p): tuple(getattr(v, "shape", np.shape(v)))
                 for p, v in got}
    want_paths = {jax.tree_util.keystr(p): tuple(v.shape) for p, v in want.items()}
    if got_paths != want_paths:
        missing = sorted(set(want_paths) - set(got_paths))[:5]
        extra = sorted(set(got_paths) - set(want_paths))[:5]
        wrong = sorted(k for k in set(got_paths) & set(want_paths)
                       if got_paths[k] != want_paths[k])[:5]
        first = (f"first mismatch: {wrong[0]} is {got_paths[wrong[0]]} there, "
                 f"{want_paths[wrong[0]]} here; " if wrong else "")
        raise ValueError(f"init_from {source}: params do not match the configured model "
                         f"(another size or family?); {first}missing {missing}, unexpected "
                         f"{extra}, wrong shapes "
                         f"{[(k, got_paths[k], want_paths[k]) for k in wrong]}")


def read_params(path: str) -> Any:
    """The params of a pretrax checkpoint as host NumPy arrays, in the layout they were saved
    (for warm starts that change the layout, e.g. a classifier from a pretraining run)."""
    step_dir = resolve_step_dir(path)
    item = os.path.join(step_dir, STATE_ITEM)
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        params_meta = _params_metadata(checkpointer, item)
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
