"""ELECTRA pretraining configs: ``--config=configs/electra.py:VARIANT``.

Variants:

- every preset of ``modeling.electra.PRESETS`` (``electra_small``, ``electra_small_pp``,
  ``electra_base``, ``electra_large``) with the reference recipe (shared/reference/ELECTRA.md):
  replaced token detection (MLM weight 1, discriminator weight 50), the preset's mask
  probability, AdamW (epsilon 1e-6, no bias correction, weight decay 0.01 off norms and biases,
  global-norm clipping 1.0), linear decay times a 10k-step warm-up, the paper's length, batch,
  peak LR and steps;
- ``tiny``: a 2-layer width-32 discriminator with a width-16 generator on the bundled corpus,
  about a second per step on a 2-core CPU (tests and smoke runs);
- ``quickstart``: a small ELECTRA (2.1M parameters) on the bundled corpus, about 4 CPU minutes,
  with the generator sampled at temperature 2 so that replaced token detection visibly learns
  in 1,000 steps (ROC AUC 0.83 vs 0.75 for token identity alone; at temperature 1 it stays
  near chance, 0.53, for the whole run);
- ``laptop``: the same networks with a 1/4-width generator, temperature 2, 25% masks, 32 x 128
  tokens per step, 4,000 steps: discriminator ROC AUC 0.858 on held-out text (0.683 for token
  identity alone), about 35 minutes on a 2-core Intel Xeon (Sapphire Rapids,
  AVX-512 BF16). The recipe of the README's "ELECTRA at
  laptop scale", run side by side with ``launch.electra_reference``.
"""

from __future__ import annotations

import ml_collections

from configs import common
from modeling import electra

VARIANTS: tuple[str, ...] = tuple(name for name in electra.PRESETS if name != "tiny") + (
    "tiny", "quickstart", "laptop")

# The quickstart's model: the tiny preset widened (configs/finetune.py reuses it).
QUICKSTART_MODEL = dict(d_model=128, embedding_size=128, num_heads=2, head_dim=64, d_ff=512,
                        num_layers=4)

# Per preset: (sequence length, batch, peak LR, steps), ELECTRA.md's recipe table.
_RECIPES = {
    "electra_small": (128, 128, 5e-4, 1_000_000),
    "electra_small_pp": (128, 128, 5e-4, 1_000_000),
    "electra_base": (512, 256, 2e-4, 766_000),
    "electra_large": (512, 2048, 2e-4, 400_000),
}


def _electra_optimizer(config: ml_collections.ConfigDict, learning_rate: float, warmup: int,
                       steps: int) -> None:
    opt = config.optimizer
    opt.name = "adamw"
    opt.learning_rate = learning_rate
    opt.schedule = "linear"
    opt.warmup_steps = warmup
    opt.total_steps = steps
    opt.weight_decay = 0.01
    opt.b1, opt.b2, opt.eps = 0.9, 0.999, 1e-6
    opt.bias_correction = False
    opt.clip_norm = 1.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of one variant (default ``tiny``)."""
    variant = common.parse_arg(arg, VARIANTS, "configs/electra.py")
    config = common.base_config()
    config.objective.name = "electra"
    config.data.pack = False  # ELECTRA examples are built to length; no packing
    config.data.targets_length = 0  # no decoder

    if variant in ("tiny", "quickstart", "laptop"):
        config.model.preset = "tiny"
        config.model.vocab_size = 8192  # the bundled vocabulary
        config.objective.mask_prob = electra.PRETRAINING_MASK_PROB["tiny"]
    if variant == "tiny":
        config.data.batch_size = 8
        config.data.inputs_length = 64
        config.train.steps = 20
        config.train.log_every = 1
        config.train.eval_every = 10
        config.train.eval_steps = 2
        config.checkpoint.every = 10
        _electra_optimizer(config, 1e-3, 5, 20)
    elif variant == "quickstart":
        # Discriminator width 128 (4 layers), generator half width (the tiny preset's
        # fraction), 16 x 128 tokens per step. Embeddings 128 wide: the tiny preset's 16 were
        # measured to hold the generator near unigram level (MLM accuracy 0.06 vs 0.18 at 1k
        # steps).
        config.model.update(QUICKSTART_MODEL)
        config.data.batch_size = 16
        config.data.inputs_length = 128
        config.train.steps = 1000
        config.train.log_every = 25
        config.train.eval_every = 250
        config.train.showcase = True
        config.train.eval_steps = 4
        config.checkpoint.every = 250
        _electra_optimizer(config, 5e-4, 100, 1000)  # 2e-3 was measured to stall
        # A generator this young sampled at temperature 1 writes replacements the
        # discriminator cannot yet tell from their context (README, "ELECTRA at laptop scale").
        config.objective.temperature = 2.0
    elif variant == "laptop":
        # Replaced token detection that learns on a laptop CPU (see the README, "ELECTRA at
        # laptop scale"): the quickstart's networks, 32 x 128 tokens per step, 4,000 steps, and
        # the generator sampled at temperature 2. At temperature 1 a generator this small and
        # young already writes replacements that fit their context, and the discriminator
        # stays at chance for thousands of steps; hotter samples are easier to spot, so the
        # discriminator starts learning at once and then learns context beyond token identity.
        config.model.update(QUICKSTART_MODEL)
        config.model.generator_fraction = 0.25  # ELECTRA-Small's generator/discriminator ratio
        config.objective.temperature = 2.0
        config.objective.mask_prob = 0.25  # ELECTRA-Large's rate: more replaced tokens per step
        config.data.batch_size = 32
        config.data.inputs_length = 128
        config.train.steps = 4000
        config.train.log_every = 50
        config.train.eval_every = 250
        config.train.eval_steps = 8
        config.train.showcase = True
        config.checkpoint.every = 500
        _electra_optimizer(config, 5e-4, 400, 4000)
    else:
        length, batch, lr, steps = _RECIPES[variant]
        config.model.preset = variant
        config.objective.mask_prob = electra.PRETRAINING_MASK_PROB[variant]
        config.data.source = "files"
        config.data.batch_size = batch
        config.data.inputs_length = length
        config.train.steps = steps
        config.train.log_every = 100
        config.train.eval_every = 10_000
        config.train.eval_steps = 20
        config.checkpoint.every = 10_000
        config.checkpoint.keep_period = 100_000
        _electra_optimizer(config, lr, 10_000, steps)
    return config
