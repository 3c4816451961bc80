"""The training loop: one function, :func:`train`, readable top to bottom.

mesh -> rules -> objective -> ``jax.eval_shape(init)`` -> shardings -> jitted sharded init ->
restore (or warm start) -> jitted train step with explicit in/out shardings and donation ->
loop (log, evaluate, checkpoint, stop on signal or NaN).

Randomness: one root key from ``config.seed`` split once into init / train / eval keys; step
``s`` uses ``fold_in(train_key, s)`` (and microbatch ``i`` a further ``fold_in(., i)``), so
the step neither takes nor returns a key and a resumed run draws exactly the same numbers.
``jax_threefry_partitionable`` makes those numbers independent of the sharding.
"""

from __future__ import annotations

import math
import os
import signal
from typing import Any

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from launch import checkpoint as ckpt_lib
from launch import inputs as inputs_lib
from launch import mesh as mesh_lib
from launch import metrics as metrics_lib
from launch import step as step_lib
from objectives import registry

DISTRIBUTED_MODES = ("auto", "on", "off")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN/Inf with ``nan_policy="stop"``."""


# ---------------------------------------------------------------------------------------------
# Multi-host start-up.
# ---------------------------------------------------------------------------------------------
def _cluster_detected() -> bool:
    """Environments where ``jax.distributed.initialize()`` finds its peers by itself."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
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
    if cfg.mode not in DISTRIBUTED_MODES:
        raise ValueError(f"config.distributed.mode={cfg.mode!r}; expected one of "
                         f"{DISTRIBUTED_MODES}")
    if cfg.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    if cfg.mode == "off" or jax.distributed.is_initialized():
        return
    if cfg.mode == "auto" and not (cfg.coordinator_address or _cluster_detected()):
        return
    kwargs = {"initialization_timeout": cfg.initialization_timeout}
    if cfg.coordinator_address:
        kwargs["coordinator_address"] = cfg.coordinator_address
    if cfg.num_processes is not None:
        kwargs["num_processes"] = cfg.num_processes
    if cfg.process_id is not None:
        kwargs["process_id"] = cfg.process_id
    jax.distributed.initialize(**kwargs)


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

    def __init__(self):
        self.received: int | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        del frame
        self.received = signum

    def any_process(self) -> bool:
        """True if any process got a signal (all processes must stop at the same step)."""
        local = self.received is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.asarray(local))))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# Evaluation helpers.
# ---------------------------------------------------------------------------------------------
def unigram_entropy(batches: list[dict[str, np.ndarray]]) -> float | None:
    """Entropy (nats) of the target-token unigram distribution: a context-free baseline loss."""
    counts: dict[int, float] = {}
    for batch in batches:
        if "decoder_target_tokens" not in batch:
            return None
        targets = np.asarray(batch["decoder_target_tokens"]).ravel()
        weights = np.asarray(batch["decoder_loss_weights"]).ravel()
        for token, weight in zip(targets[weights > 0], weights[weights > 0], strict=True):
            counts[int(token)] = counts.get(int(token), 0.0) + float(weight)
    total = sum(counts.values())
    if not total:
        return None
    probs = np.asarray(list(counts.values())) / total
    return float(-np.sum(probs * np.log(probs)))


def _mean_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in records])) for k in records[0]}


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------
def train(config: Any, workdir: str) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint); returns a summary.

    Summary keys: ``step`` (last step trained), ``start_step``, ``last`` (last logged record),
    ``eval`` (list of evaluation records), ``stopped_by_signal``.
    """
    # ===== Process group, flags =====
    initialize_distributed(config.distributed)
    jax.config.update("jax_threefry_partitionable", True)
    enable_compilation_cache(config.train.compilation_cache_dir)
    is_main = jax.process_index() == 0

    # ===== The program: mesh, objective, optimizer, shardings, jitted steps (no arrays yet) =====
    program = step_lib.build(config)
    objective, mesh = program.objective, program.mesh
    batch_size = config.data.batch_size

    # ===== Sharded init: every array is created on the devices that hold it =====
    state = program.init_state()
    batch_sharding = program.batch_sharding

    # ===== Restore the latest checkpoint, or warm-start from init_from =====
    log = print if is_main and config.train.console else (lambda message: None)
    checkpointer = ckpt_lib.Checkpointer(
        ckpt_lib.checkpoint_dir(workdir), every=config.checkpoint.every,
        keep=config.checkpoint.keep, keep_period=config.checkpoint.keep_period,
        async_save=config.checkpoint.async_save, log=log)
    data_state = None
    restored = checkpointer.restore(program.abstract_state)
    if restored is not None:
        start_step, state, data_state = restored
        log(f"resumed from {checkpointer.directory}/{start_step}")
    else:
        start_step = 0
        if config.train.init_from:
            state["params"] = _warm_start(config.train.init_from,
                                          program.abstract_state["params"],
                                          config.model.scan_layers)
            log(f"initialised params from {config.train.init_from}")
    if int(state["step"]) != start_step:
        raise ValueError(f"checkpoint step {start_step} holds state.step={int(state['step'])}")

    # ===== Input pipelines =====
    vocab_size = objective.vocab_size
    train_examples = inputs_lib.make_examples(config, "train")
    train_inputs = inputs_lib.make_inputs(config, train_examples, objective.batch_spec,
                                          vocab_size, batch_sharding, data_state)
    eval_examples = (inputs_lib.make_examples(config, "validation")
                     if config.train.eval_every > 0 else None)
    train_step, eval_step, eval_key = program.train_step, program.eval_step, program.eval_key

    def evaluate(params) -> tuple[dict[str, float], list[dict[str, np.ndarray]]]:
        # A fresh pipeline each time: every evaluation sees the same validation batches.
        eval_inputs = inputs_lib.make_inputs(config, eval_examples, objective.batch_spec,
                                             vocab_size, batch_sharding, prefetch=0,
                                             split="validation")
        records, host_batches = [], []
        for i in range(config.train.eval_steps):
            batch = next(eval_inputs)
            records.append(jax.device_get(eval_step(params, batch, jax.random.fold_in(
                eval_key, i))))
            if jax.process_count() == 1:
                host_batches.append(jax.device_get(batch))
        eval_inputs.close()
        return _mean_metrics(records), host_batches

    # ===== Metrics, throughput, signals =====
    writer = metrics_lib.MetricsWriter(
        workdir, start_step=start_step, total_steps=config.train.steps, enabled=is_main,
        tensorboard=config.train.tensorboard, console=config.train.console)
    peak = metrics_lib.peak_flops(config.model.dtype, config.train.peak_flops)
    throughput = metrics_lib.Throughput(objective.tokens_per_step, objective.flops_per_step,
                                        peak)
    stop = StopSignal()
    summary: dict[str, Any] = {"start_step": start_step, "eval": [], "last": None,
                               "stopped_by_signal": False}
    log(f"{config.model.family} {config.model.preset} / {objective.name}: "
        f"{sum(x.size for x in jax.tree.leaves(state['params'])):,} params, mesh "
        f"{dict(mesh.shape)}, rules {config.sharding!r}, batch {batch_size}, "
        f"{objective.flops_per_step / 1e9:.2f} GFLOP/step, peak {peak / 1e9:.0f} GFLOP/s")

    def run_eval(step: int) -> None:
        record, host_batches = evaluate(state["params"])
        baseline = unigram_entropy(host_batches)
        if baseline is not None:
            record["unigram_entropy"] = baseline
        record = writer.write(step, {f"eval/{k}": v for k, v in record.items()})
        summary["eval"].append(record)
        log(f"eval @ step {step}: " + ", ".join(f"{k[5:]} {v:.4f}" for k, v in record.items()
                                                 if k != "step"))
        throughput.restart()

    def save(step: int) -> None:
        if checkpointer.save(step, state, train_inputs.state()):
            log(f"saving checkpoint {checkpointer.directory}/{step}")

    # ===== The loop =====
    step = start_step
    try:
        with mesh_lib.use_mesh(mesh, program.rules):
            if config.train.eval_every > 0 and start_step == 0:
                run_eval(0)
            while step < config.train.steps:
                state, metrics = train_step(state, next(train_inputs))
                step += 1
                loss = float(metrics["loss"])  # waits for the step; checks every step
                if step == start_step + 1:
                    throughput.restart()  # the first step's time is mostly compilation
                else:
                    throughput.step()
                if not math.isfinite(loss) and config.train.nan_policy == "stop":
                    checkpointer.wait()
                    good = checkpointer.latest_step()
                    raise TrainingDiverged(
                        f"loss is {loss} at step {step}; stopping (config.train.nan_policy="
                        f"'stop'). Last good checkpoint: "
                        f"{f'{checkpointer.directory}/{good}' if good is not None else 'none'}"
                        "; it is intact. Lower the learning rate, or set "
                        "--config.train.nan_policy=skip to drop such updates.")
                if step % config.train.log_every == 0 or step == config.train.steps:
                    record = {**jax.device_get(metrics), **throughput.report()}
                    summary["last"] = writer.write(step, record)
                    writer.progress(step, summary["last"])
                if config.train.eval_every > 0 and (step % config.train.eval_every == 0
                                                    or step == config.train.steps):
                    run_eval(step)
                if stop.any_process():
                    log(f"received signal {stop.received}: saving step {step} and exiting")
                    save(step)
                    summary["stopped_by_signal"] = True
                    break
                if checkpointer.should_save(step) or step == config.train.steps:
                    save(step)
                    throughput.restart()
    finally:
        stop.restore()
        train_inputs.close()
        checkpointer.close()
        writer.close()
    summary["step"] = step
    if config.train.showcase and step == config.train.steps and is_main:
        summary["showcase"] = _showcase(config, objective, state["params"], program.init_key,
                                        eval_examples, objective.special_ids)
    return summary


def _showcase(config: Any, objective: registry.Objective, params: Any, init_key: jax.Array,
              examples: Any, special_ids: dict[str, int] | None) -> list[str]:
    """Step 0 vs trained on one held-out example (launch/showcase.py); [] where it cannot run."""
    examples = examples or inputs_lib.make_examples(config, "validation")
    if jax.process_count() > 1 or not hasattr(examples, "example"):
        return []  # multi-host, synthetic data, or a streaming seqio task
    from flax import linen as nn

    from data import vocab as vocab_lib
    from launch import showcase

    example = examples.example(0)
    params = jax.device_get(params)
    init_params = jax.device_get(nn.unbox(jax.jit(objective.init_fn)(init_key)["params"]))
    path = inputs_lib.vocab_path(config)
    if config.model.family == "t5":
        return showcase.t5_span_filling(
            objective.model, params, init_params, example, vocab_lib.get_vocabulary(path),
            config.data.inputs_length, config.data.targets_length)
    if config.objective.name not in ("electra", "electra_15"):
        return []
    import sentencepiece as spm

    cfg = registry.rtd_config(config, special_ids, objective.model.config.discriminator.vocab_size)
    return showcase.electra_detection(
        objective.model, params, init_params, example, spm.SentencePieceProcessor(model_file=path),
        cfg, config.data.inputs_length, jax.random.key(config.seed + 1))


def _warm_start(path: str, abstract_params: Any, scan_layers: bool = False) -> Any:
    """Params from a pretrax checkpoint or a Hugging Face directory, laid out for this run."""
    if ckpt_lib.is_hf_dir(path):
        from modeling import hf

        _, params = hf.from_hf(path, scan_layers=scan_layers)
        ckpt_lib.check_shapes(params, abstract_params, path)
        return jax.tree.map(lambda x, a: jax.device_put(np.asarray(x, a.dtype), a.sharding),
                            params, abstract_params)
    return ckpt_lib.load_params(path, abstract_params)
