"""Fine-tuning configs: ``--config=configs/finetune.py:VARIANT --config.data.task=NAME
--config.train.init_from=RUN_DIR|HF_DIR``.

Variants:

- ``electra_small`` / ``electra_base`` / ``electra_large`` (objective ``classify``): the
  ELECTRA paper's GLUE recipe (shared/reference/ELECTRA.md): AdamW (epsilon 1e-6, weight decay
  0.01 off norms and biases, no bias correction: the reference's fine-tuning uses its
  pretraining optimizer), peak LR 3e-4 / 1e-4 / 5e-5, layer-wise LR decay 0.8 / 0.8 / 0.9 (the
  intended rule; ``--config.optimizer.layerwise_lr_legacy=true`` reproduces the reference
  code's off-by-one), 10% linear warm-up then linear decay, dropout 0.1, batch 32, length
  128, 3 epochs (use ``--config.train.epochs=10`` for RTE / STS-B-sized tasks);
- ``t5`` (objective ``text_to_text``): T5's recipe: Adafactor, constant LR 1e-3, dropout 0.1,
  inputs 512 / targets 128 as the paper's GLUE runs (set ``config.model.preset``, e.g.
  ``t5_1_1_base``);
- ``electra_tiny`` / ``t5_tiny``: the tiny presets on the bundled vocabulary, a few steps
  (tests and smoke runs); ``electra_quickstart`` / ``t5_quickstart``: the quickstart
  pretraining runs' shapes (``configs/electra.py:quickstart``, ``configs/t5.py:quickstart``),
  so their workdirs are valid ``init_from`` values.

Every run evaluates the task's metrics on the validation split at each ``eval_every`` and at
the end (predictions in ``WORKDIR/predictions/``) and keeps the best params by the task's main
metric in ``WORKDIR/best``.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs import electra as electra_configs
from configs import t5 as t5_configs

VARIANTS = ("electra_small", "electra_base", "electra_large", "t5", "electra_tiny", "t5_tiny",
            "electra_quickstart", "t5_quickstart")

# preset -> (peak LR, layer-wise decay): ELECTRA.md's GLUE fine-tuning recipe.
_ELECTRA_RECIPES = {"electra_small": (3e-4, 0.8), "electra_base": (1e-4, 0.8),
                    "electra_large": (5e-5, 0.9)}


def _electra(config: ml_collections.ConfigDict, preset: str, learning_rate: float,
             layerwise_decay: float) -> None:
    config.objective.name = "classify"
    config.model.preset = preset
    config.model.dropout_rate = 0.1
    config.data.inputs_length = 128
    config.data.targets_length = 0
    config.data.batch_size = 32
    opt = config.optimizer
    opt.name = "adamw"
    opt.learning_rate = learning_rate
    opt.schedule = "linear"
    opt.weight_decay = 0.01
    opt.b1, opt.b2, opt.eps = 0.9, 0.999, 1e-6
    opt.bias_correction = False  # the reference's AdamWeightDecayOptimizer has none
    opt.clip_norm = 1.0
    opt.layerwise_lr_decay = layerwise_decay
    config.train.epochs = 3.0
    config.train.warmup_fraction = 0.1


def _t5(config: ml_collections.ConfigDict, preset: str) -> None:
    config.objective.name = "text_to_text"
    config.model.preset = preset
    config.model.dropout_rate = 0.1
    config.data.inputs_length = 512
    config.data.targets_length = 128
    config.data.batch_size = 128
    opt = config.optimizer
    opt.name = "adafactor"
    opt.learning_rate = 1e-3
    opt.schedule = "constant"
    opt.warmup_steps = 0
    config.train.steps = 262_144  # the T5 paper's fine-tuning length (2^18 steps)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of one variant (default ``electra_tiny``)."""
    variant = common.parse_arg(arg or "electra_tiny", VARIANTS, "configs/finetune.py")
    config = common.base_config()
    config.data.source = "task"
    config.data.task = "wn_lexname"
    config.data.pack = False  # one record per row
    config.train.eval_steps = 2
    config.checkpoint.keep = 1
    if variant in _ELECTRA_RECIPES:
        _electra(config, variant, *_ELECTRA_RECIPES[variant])
        config.data.source = "task"
        config.train.eval_every = 1000
        config.checkpoint.every = 1000
    elif variant == "t5":
        _t5(config, "t5_1_1_base")
        config.train.eval_every = 5000
        config.checkpoint.every = 5000
    elif variant in ("electra_tiny", "electra_quickstart"):
        _electra(config, "tiny", 1e-3, 0.8)
        config.model.vocab_size = 8192  # the bundled vocabulary
        config.model.dropout_rate = 0.0 if variant == "electra_tiny" else 0.1
        if variant == "electra_quickstart":
            config.model.update(electra_configs.QUICKSTART_MODEL)
            config.optimizer.learning_rate = 3e-4
        config.data.inputs_length = 64 if variant == "electra_tiny" else 128
        config.data.batch_size = 8 if variant == "electra_tiny" else 32
    else:  # t5_tiny, t5_quickstart
        _t5(config, "tiny")
        config.model.vocab_size = 8192  # the bundled vocabulary (+ extra ids)
        if variant == "t5_quickstart":
            config.model.update(t5_configs.QUICKSTART_MODEL)
        config.data.batch_size = 8 if variant == "t5_tiny" else 32
        config.data.inputs_length = 64 if variant == "t5_tiny" else 128
        config.data.targets_length = 16
        config.train.steps = 20 if variant == "t5_tiny" else 2000
    if variant.endswith("_tiny"):
        config.data.task = "wn_lexname"
        config.train.epochs = None
        config.train.steps = 20
        config.optimizer.total_steps = 20
        config.optimizer.warmup_steps = 2
        config.train.log_every = 5
        config.train.eval_every = 10
        config.checkpoint.every = 10
    elif variant.endswith("_quickstart"):
        config.train.log_every = 50
        config.train.eval_every = 500
        config.checkpoint.every = 500
    return config
