"""T5 pretraining configs: ``--config=configs/t5.py:VARIANT``.

Variants:

- every preset of ``modeling.t5.PRESETS`` (``t5_small`` ... ``t5_1_1_xxl``) with the T5X recipe
  (shared/reference/T5.md): batch 128 x 512/114 packed span corruption, Adafactor (decay 0.8,
  factored by logical axis, parameter scaling, update clipping 1.0), LR ``1/sqrt(max(step,
  10k))``, summed token cross-entropy + z-loss 1e-4, 2^19 steps, FSDP over every device;
- ``tiny``: 2 + 2 layers of width 32 on the bundled corpus, about a second per step on a 2-core
  CPU (tests and smoke runs);
- ``quickstart``: a small T5 v1.1 on the bundled corpus that learns visibly on a laptop CPU in a
  few minutes (README's first command).

Anything else is a command-line override: ``--config.train.steps=1000 --config.mesh.fsdp=4``.
"""

from __future__ import annotations

import ml_collections

from configs import common
from modeling import t5

VARIANTS: tuple[str, ...] = tuple(name for name in t5.PRESETS if name != "tiny") + (
    "tiny", "quickstart")


# The quickstart's model: the tiny preset widened (configs/finetune.py reuses it).
QUICKSTART_MODEL = dict(d_model=128, num_heads=4, head_dim=32, d_ff=256)

def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of one variant (default ``tiny``)."""
    variant = common.parse_arg(arg, VARIANTS, "configs/t5.py")
    config = common.base_config()
    config.objective.name = "span_corruption"

    if variant == "tiny":
        config.model.preset = "tiny"
        config.model.vocab_size = 8192  # the bundled sentencepiece vocabulary (+ extra ids)
        config.data.batch_size = 8
        config.data.inputs_length = 64
        config.data.targets_length = 14  # span corruption of 64 inputs
        config.train.steps = 20
        config.train.log_every = 1
        config.train.eval_every = 10
        config.train.eval_steps = 2
        config.checkpoint.every = 10
        config.optimizer.warmup_steps = 10
        config.optimizer.total_steps = 20
    elif variant == "quickstart":
        # A T5 v1.1-shaped model (gated-gelu, untied logits), width 128, 2 + 2 layers,
        # 16 x 128/29 tokens per step. T5X's schedule shape, shortened: rsqrt with 1000
        # warm-up steps is a flat 1/sqrt(1000) = 0.032 then decay (a peak of 0.1 from 100
        # warm-up steps was measured to learn slower: noisier updates).
        config.model.preset = "tiny"
        config.model.update(QUICKSTART_MODEL)
        config.model.vocab_size = 8192
        config.data.batch_size = 16
        config.data.inputs_length = 128
        config.data.targets_length = 29  # span corruption of 128 inputs
        config.train.steps = 1000
        config.train.log_every = 25
        config.train.eval_every = 250
        config.train.showcase = True
        config.train.eval_steps = 8
        config.checkpoint.every = 250
        config.optimizer.warmup_steps = 1000
        config.optimizer.total_steps = 1000
    else:
        # The published recipe for a real pretraining run.
        config.model.preset = variant
        config.data.source = "files"
        config.data.batch_size = 128
        config.data.inputs_length = 512
        config.data.targets_length = 114
        config.train.steps = 524_288
        config.train.log_every = 100
        config.train.eval_every = 5000
        config.train.eval_steps = 20
        config.checkpoint.every = 5000
        config.checkpoint.keep_period = 100_000
        config.optimizer.warmup_steps = 10_000
        config.optimizer.total_steps = 524_288
    return config
