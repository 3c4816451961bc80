"""The base config: every key the trainer reads, with its default.

Family files (``configs/t5.py``, ``configs/electra.py``) start from :func:`base_config` and only
change values; they never add keys. The trainer reads keys directly (``config.train.steps``),
never ``config.get(key, default)``, and ``launch/train.py`` locks the config, so a typo'd
``--config.train.stpes=10`` fails at start-up instead of being silently ignored.

Sections:

- ``model``: which preset of the family and the few fields commonly changed from the command
  line; ``None`` means "the preset's value".
- ``objective``: the registry name (``objectives/registry.py``) and its loss settings.
- ``data``: where the text comes from and the batch shapes.
- ``optimizer``: ``launch/optim.make_optimizer``'s keys (defaults copied from ``optim.DEFAULTS``).
- ``train``: steps, gradient accumulation, logging/eval cadence, the NaN policy, warm starts.
- ``checkpoint``: orbax cadence and retention.
- ``mesh`` / ``sharding``: mesh axis sizes (one may be -1) and the rule preset name.
- ``distributed``: multi-host initialisation.
- ``debug``: deliberate fault injection (a NaN loss at a chosen step).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
from ml_collections import config_dict

from launch import optim


def base_config() -> ml_collections.ConfigDict:
    """Every key and its default; see the module docstring for the sections."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # root of every random stream: init, dropout/masking, data order

    # -- model ------------------------------------------------------------------------------
    config.model = ml_collections.ConfigDict()
    # A name in modeling.t5.PRESETS or modeling.electra.PRESETS: the objective decides which
    # family (objectives/registry.py), so there is no family key.
    config.model.preset = "tiny"
    # Size overrides (None: the preset's value), e.g. a wider "tiny" for a quick experiment.
    config.model.vocab_size = config_dict.placeholder(int)
    config.model.d_model = config_dict.placeholder(int)
    config.model.num_heads = config_dict.placeholder(int)
    config.model.head_dim = config_dict.placeholder(int)
    config.model.d_ff = config_dict.placeholder(int)
    config.model.num_layers = config_dict.placeholder(int)
    config.model.num_decoder_layers = config_dict.placeholder(int)  # T5 only
    config.model.embedding_size = config_dict.placeholder(int)  # ELECTRA only: factorized width
    # ELECTRA only: generator width / discriminator width, and what the two networks share
    # ("tied" | "untied" | "all" | "gdes", modeling.electra.SHARING_MODES).
    config.model.generator_fraction = config_dict.placeholder(float)
    config.model.embedding_sharing = config_dict.placeholder(str)
    config.model.dtype = "float32"  # matmul compute dtype: "float32" | "bfloat16"
    config.model.dropout_rate = config_dict.placeholder(float)  # None: the preset's
    config.model.scan_layers = False
    config.model.remat_policy = "none"  # modeling.transformer.REMAT_POLICIES

    # -- objective --------------------------------------------------------------------------
    config.objective = ml_collections.ConfigDict()
    config.objective.name = "span_corruption"  # objectives.registry.OBJECTIVES
    # T5 family: the denoiser's noise (None: the paper's value for that objective, e.g. 0.15
    # and 3 for span corruption, 0.5 for prefix LM) ...
    config.objective.noise_density = config_dict.placeholder(float)
    config.objective.mean_noise_span_length = config_dict.placeholder(float)
    # ... and cross-entropy as T5X computes it.
    config.objective.z_loss = 1e-4
    config.objective.label_smoothing = 0.0
    config.objective.normalize = "sum"  # losses.NORMALIZE_MODES: "sum" | "token" | "sequence"
    # ELECTRA family: objectives.rtd.RTDConfig fields (special ids come from the vocabulary).
    config.objective.mask_prob = 0.15
    config.objective.max_predictions = config_dict.placeholder(int)  # None: from mask_prob
    config.objective.mask_replace_prob = 0.85
    config.objective.random_token_prob = 0.0
    config.objective.temperature = 1.0
    config.objective.disallow_correct = False
    config.objective.uniform_generator = False
    config.objective.unigram_generator = False  # replacements from the batch's unigram counts
    config.objective.gen_weight = 1.0
    config.objective.disc_weight = 50.0
    config.objective.main_mlm_weight = 1.0
    # Fine-tuning (objectives/finetune.py): the ELECTRA classifier head ("electra": [CLS] ->
    # dropout -> dense, the reference code; "hf": ElectraForSequenceClassification's) and T5's
    # decoding for predictions (1: greedy; > 1: beam search with that many beams).
    config.objective.classifier_head = "electra"
    config.objective.beam_size = 1

    # -- data -------------------------------------------------------------------------------
    config.data = ml_collections.ConfigDict()
    # "bundled" | "files" | "seqio" (config.data.task) | "task" (a fine-tuning task) |
    # "synthetic" (random ids, benchmarks)
    config.data.source = "bundled"
    # A registered seqio task or mixture (source="seqio"), or a fine-tuning task (source="task",
    # data/finetune.py).
    config.data.task = ""
    config.data.task_module = ""  # a module imported first, which may register more tasks
    config.data.train_files = ""  # glob(s), comma-separated, for source="files"
    config.data.validation_files = ""
    config.data.vocab_path = ""  # "" -> the bundled sentencepiece model
    config.data.batch_size = 8  # GLOBAL batch (all processes), split over data x fsdp
    config.data.inputs_length = 64  # encoder length (ELECTRA: the sequence length)
    config.data.targets_length = 16  # decoder length (T5 only)
    config.data.pack = True
    config.data.prefetch = 2  # batches prepared ahead in a background thread

    # -- optimizer --------------------------------------------------------------------------
    config.optimizer = ml_collections.ConfigDict(dict(optim.DEFAULTS))

    # -- train ------------------------------------------------------------------------------
    config.train = ml_collections.ConfigDict()
    config.train.steps = 100
    # Fine-tuning: passes over the task's training split; when set, steps = ceil(epochs x
    # examples / batch_size), and the optimizer's total/warm-up steps follow (warmup_fraction).
    config.train.epochs = config_dict.placeholder(float)
    config.train.warmup_fraction = config_dict.placeholder(float)
    config.train.microbatches = 1  # gradient accumulation: batch_size / microbatches per pass
    config.train.log_every = 10
    config.train.eval_every = 100  # 0 disables periodic evaluation
    config.train.eval_steps = 4  # validation batches per evaluation
    # Fine-tuning: records of the validation split scored by the task's metrics at each
    # evaluation (the first N in file order; None: all of them).
    config.train.task_eval_examples = config_dict.placeholder(int)
    config.train.nan_policy = "stop"  # "stop": raise, checkpoint intact | "skip": drop the update
    # The host reads (logs, checks for NaN/Inf) each step's loss this many steps after
    # dispatching it, so the device never idles waiting for the host; 0 waits for every step.
    # Checkpoints, evaluations and stops first check every pending step.
    config.train.metrics_lag = 1
    # Several processes agree on a SIGTERM/SIGINT by a gather every N steps and at the last
    # (one process reads its own flag every step). 1 by default: a SLURM requeue's grace
    # period is short; raise it where steps are short and the grace long.
    config.train.stop_check_every = 1
    config.train.init_from = ""  # a checkpoint dir (pretrax) or an HF dir: params only
    config.train.console = True  # progress line on stdout (process 0)
    # At the end, step 0 vs trained on a held-out example (launch/showcase.py): T5 fills masked
    # spans, ELECTRA flags replaced tokens. Re-creates the step-0 params: small configs only.
    config.train.showcase = False
    config.train.tensorboard = True
    config.train.peak_flops = 0.0  # FLOP/s for MFU; 0 -> measured once at start-up
    # JAX's persistent compilation cache: a restarted/resumed run skips recompiling ("" = off).
    config.train.compilation_cache_dir = "~/.cache/pretrax/jax"

    # -- checkpoint -------------------------------------------------------------------------
    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every = 1000  # steps between saves (0 disables periodic saves)
    config.checkpoint.keep = 3  # the last K checkpoints...
    config.checkpoint.keep_period = 0  # ...plus every P-th step forever (0: none)
    config.checkpoint.async_save = True
    # Streaming seqio sources: save each process's tf.data iterator with every checkpoint and
    # resume from it (T5X's save_dataset); off: a resume re-reads the batches consumed.
    config.checkpoint.save_iterator = True
    # Refuse a save that cannot fit before writing it (local dirs; gs:// etc. are not checked).
    config.checkpoint.check_free_space = True
    # Fine-tuning: keep the params of the best evaluation by the task's main metric in
    # WORKDIR/best beside the latest checkpoints.
    config.checkpoint.keep_best = True

    # -- mesh and sharding ------------------------------------------------------------------
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = 1
    config.mesh.fsdp = -1  # -1: all remaining devices
    config.mesh.model = 1
    config.sharding = "fsdp"  # a name in launch.mesh.RULES: "dp" | "fsdp" | "fsdp_tp"

    # -- distributed ------------------------------------------------------------------------
    config.distributed = ml_collections.ConfigDict()
    # "auto": initialise when the environment says so (TPU pod, SLURM, JAX_COORDINATOR_ADDRESS);
    # "on": always (with the fields below); "off": single process.
    config.distributed.mode = "auto"
    config.distributed.coordinator_address = ""  # "host:port" of process 0
    config.distributed.num_processes = config_dict.placeholder(int)
    config.distributed.process_id = config_dict.placeholder(int)
    config.distributed.initialization_timeout = 300  # seconds
    config.distributed.cpu_collectives = ""  # "gloo" for multi-process CPU runs
    # A process silent this long is declared dead by the coordination service; every other
    # process then exits (code 3) with one line naming it, the step and the newest checkpoint.
    config.distributed.heartbeat_timeout = 60  # seconds (JAX's own default is 100)
    # Run a multi-process job's trainer in a watched child process (launch/supervise.py), so
    # a dead peer or coordinator ends it with that line instead of the runtime's stack dump.
    config.distributed.supervise = True

    # -- debug: deliberate fault injection (launch/step.py), for fault drills and tests ------
    config.debug = ml_collections.ConfigDict()
    # Make the loss (and so every gradient) NaN at this step (1-based); None: never.
    config.debug.inject_nan_at_step = config_dict.placeholder(int)
    # What that step gets: "nan" or "inf", into the "loss" (and so every gradient) or into the
    # "gradients" only (the loss stays finite: the trainer checks the gradient norm too).
    config.debug.inject_value = "nan"
    config.debug.inject_into = "loss"
    return config


# Keys that moved or went away: an override of one fails at start-up with its new name.
RENAMED: dict[str, str] = {
    "data.noise_density": "objective.noise_density",
    "data.mean_noise_span_length": "objective.mean_noise_span_length",
    "model.family": "",  # the objective decides the model family
}


def check_renamed(argv: list[str]) -> None:
    """Raises ValueError for a ``--config.KEY=...`` override of a key in :data:`RENAMED`."""
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config."):].split("=", 1)[0]
        if key in RENAMED:
            new = RENAMED[key]
            raise ValueError(
                f"--config.{key} no longer exists: " + (
                    f"it is --config.{new} now" if new else
                    "the objective decides the model family (--config.objective.name, "
                    "objectives/registry.py)"))


def parse_arg(arg: str | None, known: tuple[str, ...], file: str) -> str:
    """The variant named after ``:`` in ``--config=FILE:VARIANT``; a clear error if unknown."""
    variant = arg or "tiny"
    if variant not in known:
        raise ValueError(f"{file}: unknown variant {variant!r}; expected one of {known}")
    return variant


# Resolved configs on disk: what a run trained with, and how a sweep pins what a run will train.
def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """``config.json`` (machine-readable) and ``config.txt`` (ml_collections' own dump)."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config_json(config))
    with open(os.path.join(workdir, "config.txt"), "w") as f:
        f.write(str(config))


def config_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


def read_config(path: str) -> ml_collections.ConfigDict:
    """A ``config.json`` back into :func:`base_config` (key by key, so types are checked).

    A key the base config no longer has, or a value of the wrong type, is an error naming the
    file and the key: the file came from another version of pretrax.
    """
    with open(path) as f:
        values = json.load(f)
    config = base_config()

    def assign(target: ml_collections.ConfigDict, tree: dict[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            name = f"{prefix}{key}"
            if key not in target:
                raise ValueError(f"{path}: key {name!r} is not in configs/common.py's base "
                                 "config (written by another version of pretrax?)")
            if isinstance(target[key], ml_collections.ConfigDict):
                if not isinstance(value, dict):
                    raise ValueError(f"{path}: {name!r} should be a section, got {value!r}")
                assign(target[key], value, f"{name}.")
                continue
            try:
                target[key] = value
            except TypeError as error:
                raise ValueError(f"{path}: {name}={value!r}: {error}") from None

    assign(config, values, "")
    return config
