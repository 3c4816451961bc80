"""The training loop: one function, :func:`train`, readable top to bottom.

program (launch/step.py: mesh, rules, objective, shardings, jitted steps) -> restore the latest
checkpoint, or a sharded init (+ warm start) -> inputs -> loop (log, evaluate, checkpoint, stop
on signal or NaN).

The loop knows nothing about what is trained: the objective (objectives/base.py) supplies the
model, the examples, the metric keys worth showing and the showcase. Randomness is described in
launch/step.py; ``jax_threefry_partitionable`` makes it independent of the sharding.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import math
import os
import re
import signal
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from data import vocab as vocab_lib
from launch import checkpoint as ckpt_lib
from launch import evaluation, supervise
from launch import inputs as inputs_lib
from launch import lock as lock_lib
from launch import mesh as mesh_lib
from launch import metrics as metrics_lib
from launch import step as step_lib
from objectives import registry

DISTRIBUTED_MODES = ("auto", "on", "off")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN/Inf with ``nan_policy="stop"``."""


class StartupError(ValueError):
    """The run could not start (config, mesh, data, vocabulary, checkpoint, workdir lock)."""


@contextlib.contextmanager
def _startup_errors():
    """Re-raises what goes wrong before the first step as a :class:`StartupError`."""
    try:
        yield
    except StartupError:
        raise
    except (ValueError, KeyError, TypeError, FileNotFoundError, NotADirectoryError,
            PermissionError) as error:
        message = str(error) if not isinstance(error, KeyError) else f"missing key {error}"
        raise StartupError(message) from error


# ---------------------------------------------------------------------------------------------
# Multi-host start-up.
# ---------------------------------------------------------------------------------------------
def _slurm_hosts(nodelist: str) -> list[str]:
    """``node[01-03,07],gpu5`` -> the host names (what ``scontrol show hostnames`` prints)."""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]*)\]|([^,\[]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            for i in range(int(first), int(last or first) + 1):
                hosts.append(f"{prefix}{i:0{len(first)}d}")
    return hosts


def _tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """``SLURM_STEP_TASKS_PER_NODE`` (``2(x3),1``) -> the task count of node ``node_id``."""
    counts = []
    for count, repeat in re.findall(r"(\d+)(?:\(x(\d+)\))?", tasks_per_node):
        counts += [int(count)] * int(repeat or 1)
    return counts[node_id]


def slurm_arguments(env: Mapping[str, str]) -> dict[str, Any] | None:
    """``jax.distributed.initialize`` arguments for a multi-task SLURM job step; None otherwise.

    jax detects SLURM itself but (a) only inside an ``srun`` step: in an ``sbatch`` script or
    an ``salloc`` shell of several tasks it fails with "coordinator_address should be defined",
    so we say what to do instead; (b) it restricts every process to the one local device
    numbered ``SLURM_LOCALID``, which is right for one task per GPU and leaves all but one GPU
    idle with one task per host, so a node running one task keeps every device.
    """
    if "SLURM_JOB_ID" not in env:
        return None
    if "SLURM_STEP_NODELIST" not in env:
        if int(env.get("SLURM_NTASKS", "1")) > 1:
            raise StartupError(
                f"this process runs in SLURM job {env['SLURM_JOB_ID']} of "
                f"{env['SLURM_NTASKS']} tasks but outside a job step; start every task with "
                "`srun python -m launch.train ...`, or pass --config.distributed.mode=off to "
                "train in this one process")
        return None
    num_processes = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    if num_processes == 1:
        return None
    if _tasks_on_node(env.get("SLURM_STEP_TASKS_PER_NODE", str(num_processes)),
                      int(env.get("SLURM_NODEID", "0"))) > 1:
        return {}  # one task per device: jax's own detection is right
    # The coordinator is process 0 on the step's first host; the port is jax's choice.
    port = env.get("JAX_COORDINATOR_PORT") or int(env["SLURM_JOB_ID"]) % 4096 + 61440
    return {"coordinator_address": f"{_slurm_hosts(env['SLURM_STEP_NODELIST'])[0]}:{port}",
            "num_processes": num_processes, "process_id": int(env["SLURM_PROCID"]),
            "cluster_detection_method": "deactivate"}


def _cluster_detected() -> bool:
    """Environments where ``jax.distributed.initialize()`` finds its peers by itself."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return True
    try:
        # Set when libtpu is installed (a Cloud TPU VM); jax then reads the pod's workers from
        # the metadata server, and a single-host TPU VM initialises as one process.
        from jax._src import cloud_tpu_init

        return bool(cloud_tpu_init.running_in_cloud_tpu_vm)
    except (ImportError, AttributeError):
        return False


def initialize_distributed(cfg: Any) -> None:
    """``jax.distributed.initialize`` from ``config.distributed`` or the environment."""
    if cfg.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    if jax.distributed.is_initialized() or not multi_process_expected(cfg):
        return
    slurm = None if cfg.coordinator_address else slurm_arguments(os.environ)
    kwargs = {"initialization_timeout": cfg.initialization_timeout,
              "heartbeat_timeout_seconds": cfg.heartbeat_timeout, **(slurm or {})}
    if cfg.coordinator_address:
        kwargs["coordinator_address"] = cfg.coordinator_address
    if cfg.num_processes is not None:
        kwargs["num_processes"] = cfg.num_processes
    if cfg.process_id is not None:
        kwargs["process_id"] = cfg.process_id
    jax.distributed.initialize(**kwargs)
    from jax._src import distributed

    supervise.note_start(jax.process_index(), jax.process_count(),
                         distributed.global_state.coordinator_address or "")


def multi_process_expected(cfg: Any) -> bool:
    """Whether ``initialize_distributed(cfg)`` starts a ``jax.distributed`` process group."""
    if cfg.mode not in DISTRIBUTED_MODES:
        raise ValueError(f"config.distributed.mode={cfg.mode!r}; expected one of "
                         f"{DISTRIBUTED_MODES}")
    if cfg.mode == "off":
        return False
    if cfg.mode == "on" or cfg.coordinator_address:
        return True
    return slurm_arguments(os.environ) is not None or _cluster_detected()


def _compile_then_meet(program: step_lib.Program, config: Any, evaluates: bool) -> None:
    """Compiles the steps, then waits for every process at a coordination-service barrier.

    A step's first collective must be joined by every process within gloo's fixed 30 s (CPU
    collectives), and compiling takes longer than that on a loaded machine: a process that
    compiled faster than its peer failed with "Gloo context initialization failed:
    DEADLINE_EXCEEDED" (seen with two SLURM tasks on one busy 2-core node). jit reuses these
    executables, so step 1 starts on every process at the same moment.
    """
    with mesh_lib.use_mesh(program.mesh, program.rules):
        program.lower().compile()
        if evaluates:
            program.eval_step.lower(program.abstract_state["params"], program.abstract_batch(),
                                    program.eval_key).compile()
    from jax._src import distributed

    distributed.global_state.client.wait_at_barrier(
        "pretrax_steps_compiled", config.distributed.initialization_timeout * 1000)


def enable_compilation_cache(path: str) -> None:
    """Persists compiled executables under ``path`` so a restart does not recompile."""
    if not path:
        return
    path = os.path.expanduser(path)
    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
        # The cache is set up at the first compilation; start over so the new dir is used.
        compilation_cache.reset_cache()


class StopSignal:
    """Records SIGTERM/SIGINT; the loop saves and exits at the next step boundary."""

    def __init__(self, every: int = 1):
        self.received: int | None = None
        self.every = every
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        del frame
        self.received = signum

    def any_process(self, step: int, last: bool = False) -> bool:
        """True if any process got a signal; all processes stop at the same step.

        One process reads its own flag. Several agree by a gather, only every ``every`` steps
        and at the ``last`` step (a collective per step would serialise the loop on the host),
        so a signal that arrives near the end still ends the run as stopped, not as done.
        """
        local = self.received is not None
        if jax.process_count() == 1:
            return local
        if step % self.every and not last:
            return False
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.asarray(local))))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _mean_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in records])) for k in records[0]}


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------
def train(config: Any, workdir: str) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint); returns a summary.

    The workdir is locked for the job (launch/lock.py) while it trains; a start-up problem
    raises :class:`StartupError`. Summary: see :func:`_train`.
    """
    initialize_distributed(config.distributed)
    is_main = jax.process_index() == 0
    lock = lock_lib.WorkdirLock(workdir, log=print) if is_main else None
    refusal = ""
    if lock is not None:
        try:
            lock.acquire()
        except lock_lib.WorkdirBusy as error:
            refusal = str(error)
    if jax.process_count() > 1:  # every process stops when process 0 could not lock
        from jax.experimental import multihost_utils

        refused = bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(refusal))))
    else:
        refused = bool(refusal)
    if refused:
        raise StartupError(refusal or "the workdir is in use by another job (see process 0)")
    try:
        return _train(config, workdir)
    finally:
        if lock is not None and not refusal:
            lock.release()


def _train(config: Any, workdir: str) -> dict[str, Any]:
    """The run itself (the workdir already locked).

    Summary keys: ``step`` (last step trained), ``start_step``, ``last`` (last logged record),
    ``eval`` (list of evaluation records), ``stopped_by_signal``, ``objective`` (what was
    trained, for the caller's report) and, for small single-process runs with
    ``config.train.showcase``, ``showcase`` (lines).
    """
    # ===== Process group, flags =====
    initialize_distributed(config.distributed)
    jax.config.update("jax_threefry_partitionable", True)
    enable_compilation_cache(config.train.compilation_cache_dir)
    is_main = jax.process_index() == 0

    # Everything up to the first step: a bad config, mesh, vocabulary, corpus or checkpoint
    # is a StartupError (one sentence, exit code 2 from launch/train.py).
    with _startup_errors():
        # ===== The program: mesh, objective, optimizer, shardings, jitted steps (no arrays) =====
        objective = registry.build(config)
        train_examples = inputs_lib.make_examples(config, objective, "train")
        config = _resolve_epochs(config, train_examples, workdir, is_main)
        program = step_lib.build(config, objective=objective)
        mesh = program.mesh

        # ===== Restore the latest checkpoint, or warm-start from init_from =====
        log = print if is_main and config.train.console else (lambda message: None)
        checkpointer = ckpt_lib.Checkpointer(
            ckpt_lib.checkpoint_dir(workdir), every=config.checkpoint.every,
            keep=config.checkpoint.keep, keep_period=config.checkpoint.keep_period,
            async_save=config.checkpoint.async_save,
            check_free_space=config.checkpoint.check_free_space, log=log)
        data_state = None
        restored = checkpointer.restore(program.abstract_state)
        if restored is not None:
            start_step, state, data_state = restored
            log(f"resumed from {checkpointer.directory}/{start_step}")
        else:
            start_step = 0
            # Sharded init: every array is created on the devices that hold it.
            state = program.init_state()
            if config.train.init_from:
                state["params"] = _warm_start(config.train.init_from, program, state["params"],
                                              config.model.scan_layers)
                log(f"initialised params from {config.train.init_from}")
        if int(state["step"]) != start_step:
            raise ValueError(f"checkpoint step {start_step} holds state.step={int(state['step'])}")

        # ===== Input pipelines =====
        batch_sharding = program.batch_sharding
        train_inputs = inputs_lib.make_inputs(
            config, objective, train_examples, batch_sharding, data_state,
            restore_iterator=(functools.partial(checkpointer.restore_iterator, start_step)
                              if restored is not None else None))
        eval_examples = (inputs_lib.make_examples(config, objective, "validation")
                         if config.train.eval_every > 0 or config.train.showcase else None)
        if getattr(train_examples, "truncated", 0):
            log(f"{train_examples.truncated} of {train_examples.num_items} training records were "
                "truncated to fit config.data.*_length")

        def evaluate(params, step: int) -> dict[str, float]:
            # A fresh pipeline each time: every evaluation sees the same validation batches.
            eval_inputs = inputs_lib.make_inputs(config, objective, eval_examples, batch_sharding,
                                                 prefetch=0, split="validation")
            records, host_batches = [], []
            for i in range(config.train.eval_steps):
                batch = next(eval_inputs)
                records.append(jax.device_get(program.eval_step(
                    params, batch, jax.random.fold_in(program.eval_key, i))))
                if jax.process_count() == 1:
                    host_batches.append(jax.device_get(batch))
            eval_inputs.close()
            # Context-free baselines of the same batches (e.g. T5's unigram entropy).
            out = {**_mean_metrics(records), **objective.baselines(host_batches)}
            if program.predict_step is not None:
                # A fine-tuning task: its own metrics over the whole validation split.
                out.update(evaluation.task_metrics(
                    program, params, eval_examples,
                    os.path.join(workdir, "predictions", f"validation-{step}.jsonl"),
                    limit=config.train.task_eval_examples))
            return out

    # ===== Several processes: compile, then start together =====
    if jax.process_count() > 1:
        _compile_then_meet(program, config, eval_examples is not None)

    # ===== Metrics, throughput, signals =====
    writer = metrics_lib.MetricsWriter(
        workdir, start_step=start_step, total_steps=config.train.steps, enabled=is_main,
        tensorboard=config.train.tensorboard, console=config.train.console,
        progress_keys=objective.summary_keys[:2])
    peak = metrics_lib.peak_flops(config.model.dtype, config.train.peak_flops)
    throughput = metrics_lib.Throughput(objective.tokens_per_step, objective.flops_per_step,
                                        peak)
    stop = StopSignal(every=config.train.stop_check_every)
    summary: dict[str, Any] = {"start_step": start_step, "eval": [], "last": None,
                               "stopped_by_signal": False, "objective": objective}
    log(f"{objective.name} on {config.model.preset}: "
        f"{sum(x.size for x in jax.tree.leaves(state['params'])):,} params, mesh "
        f"{dict(mesh.shape)}, rules {config.sharding!r}, batch {config.data.batch_size}, "
        f"{objective.flops_per_step / 1e9:.2f} GFLOP/step, peak {peak / 1e9:.0f} GFLOP/s")

    best = ckpt_lib.best_record(workdir)

    def run_eval(step: int) -> None:
        nonlocal best
        record = writer.write(step, {f"eval/{k}": v
                                     for k, v in evaluate(state["params"], step).items()})
        summary["eval"].append(record)
        log(f"eval @ step {step}: " + ", ".join(f"{k[5:]} {v:.4f}" for k, v in record.items()
                                                 if k != "step"))
        if objective.task is not None and config.checkpoint.keep_best and step > 0:
            metric = objective.task.metric
            value = record[f"eval/{metric}"]
            if best is None or value > best["value"]:
                ckpt_lib.save_best(workdir, state["params"], step, metric, value)
                best = {"step": step, "metric": metric, "value": value}
                log(f"best {metric} so far: {value:.4f} at step {step} (kept in "
                    f"{workdir}/{ckpt_lib.BEST_DIR})")
        throughput.restart()

    def save(step: int) -> None:
        if checkpointer.save(step, state, train_inputs.state(), train_inputs.tf_iterator):
            log(f"saving checkpoint {checkpointer.directory}/{step}")

    # ===== The loop =====
    # The host never waits for the step it just dispatched: it reads the loss and gradient norm
    # of the step ``metrics_lag`` behind (T5X / MaxText style), so the device always has the
    # next step queued. Every read is recorded in ``summary["host_reads"]`` as (step read,
    # newest dispatched step). Before an evaluation, a checkpoint, a stop and the end every
    # pending step is checked, so no checkpoint holds a step whose finiteness is unknown.
    lag = config.train.metrics_lag
    pending: collections.deque[tuple[int, Any]] = collections.deque()
    summary["host_reads"] = host_reads = []

    def check(upto: int) -> None:
        """Reads and checks every pending step <= ``upto`` (oldest first), logging as asked."""
        while pending and pending[0][0] <= upto:
            done, done_metrics = pending.popleft()
            values = jax.device_get(done_metrics)  # waits for step ``done`` only
            host_reads.append((done, step))
            if done == start_step + 1:
                throughput.restart()  # the first step's time is mostly compilation
            else:
                throughput.step()
            loss, grad_norm = float(values["loss"]), float(values["grad_norm"])
            if (not (math.isfinite(loss) and math.isfinite(grad_norm))
                    and config.train.nan_policy == "stop"):
                checkpointer.wait()
                good = checkpointer.latest_step()
                what = (f"loss is {loss}" if not math.isfinite(loss) else
                        f"gradient norm is {grad_norm} (loss {loss:.4g})")
                raise TrainingDiverged(
                    f"{what} at step {done}; stopping (config.train.nan_policy='stop'). Last "
                    f"good checkpoint: "
                    f"{f'{checkpointer.directory}/{good}' if good is not None else 'none'}"
                    "; it is intact. Lower the learning rate, or set "
                    "--config.train.nan_policy=skip to drop such updates.")
            if done % config.train.log_every == 0 or done == config.train.steps:
                summary["last"] = writer.write(done, {**values, **throughput.report()})
                writer.progress(done, summary["last"])

    step = start_step
    try:
        with mesh_lib.use_mesh(mesh, program.rules):
            if config.train.eval_every > 0 and start_step == 0:
                run_eval(0)
            while step < config.train.steps:
                state, metrics = program.train_step(state, next(train_inputs))
                step += 1
                supervise.note_step(step)
                pending.append((step, metrics))
                check(step - lag)
                if config.train.eval_every > 0 and (step % config.train.eval_every == 0
                                                    or step == config.train.steps):
                    check(step)
                    run_eval(step)
                if stop.any_process(step, last=step == config.train.steps):
                    check(step)
                    log(f"received signal {stop.received}: saving step {step} and exiting")
                    save(step)
                    summary["stopped_by_signal"] = True
                    break
                if checkpointer.should_save(step) or step == config.train.steps:
                    check(step)  # never save a step whose finiteness check is pending
                    save(step)
                    throughput.restart()
            check(step)
    finally:
        stop.restore()
        train_inputs.close()
        checkpointer.close()
        writer.close()
    summary["step"] = step
    if config.train.showcase and step == config.train.steps and is_main:
        summary["showcase"] = _showcase(config, program, state["params"], eval_examples)
    return summary


def _showcase(config: Any, program: step_lib.Program, params: Any, examples: Any) -> list[str]:
    """Step 0 vs trained on one held-out example (objectives/showcase.py); [] where it cannot
    run: no showcase for this objective, multi-host, synthetic data or a streaming seqio task."""
    objective = program.objective
    if (objective.showcase is None or jax.process_count() > 1
            or not hasattr(examples, "example")):
        return []
    from flax import linen as nn

    init_params = jax.device_get(nn.unbox(jax.jit(objective.init_fn)(program.init_key)["params"]))
    return objective.showcase(jax.device_get(params), init_params, examples.example(0),
                              vocab_lib.path_of(config))


def _warm_start(path: str, program: step_lib.Program, fresh: Any, scan_layers: bool) -> Any:
    """Params from a pretrax checkpoint or a Hugging Face directory, laid out for this run.

    An objective with ``adapt_params`` (fine-tuning) maps the source's layout onto its own
    (e.g. a pretraining run's discriminator into a classifier; a new head from ``fresh``).
    """
    abstract_params = program.abstract_state["params"]
    adapt = program.objective.adapt_params
    if ckpt_lib.is_hf_dir(path):
        from modeling import hf

        _, params = hf.from_hf(path, scan_layers=scan_layers)
    elif adapt is not None:
        params = ckpt_lib.read_params(path)
    else:
        return ckpt_lib.load_params(path, abstract_params)
    if adapt is not None:
        params = adapt(params, jax.device_get(fresh))
    ckpt_lib.check_shapes(params, abstract_params, path)
    return jax.tree.map(lambda x, a: jax.device_put(np.asarray(x, a.dtype), a.sharding),
                        params, abstract_params)


def _resolve_epochs(config: Any, examples: Any, workdir: str, is_main: bool) -> Any:
    """``config.train.epochs`` -> steps (and the optimizer's total / warm-up steps)."""
    if config.train.epochs is None:
        return config
    if not hasattr(examples, "num_items"):
        raise ValueError("config.train.epochs needs a finite training set (a fine-tuning task "
                         "or local files); set config.train.steps instead")
    steps = max(1, math.ceil(config.train.epochs * examples.num_items / config.data.batch_size))
    resolved = config.copy_and_resolve_references()
    with resolved.unlocked():
        resolved.train.steps = steps
        resolved.optimizer.total_steps = steps
        if config.train.warmup_fraction is not None:
            resolved.optimizer.warmup_steps = int(round(config.train.warmup_fraction * steps))
    resolved.lock()
    if is_main:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(resolved.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        if config.train.console:
            print(f"{config.train.epochs:g} epochs of {examples.num_items} examples at batch "
                  f"{config.data.batch_size}: {steps} steps, warm-up "
                  f"{resolved.optimizer.warmup_steps}", flush=True)
    return resolved
