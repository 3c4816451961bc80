"""Every registered objective builds its model and trains it through the registry's loss_fn.

The objective functions themselves are checked by hand in test_rtd.py / test_losses.py; here
the question is the wiring: that each name reaches the right network and head, and that the
gradient flows into exactly the parameters that objective trains.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import electra as electra_configs
from configs import t5 as t5_configs
from data import vocab as vocab_lib
from objectives import electra_family, registry, t5_family

SPECIAL = vocab_lib.special_ids()
# Pretraining objectives (the fine-tuning ones are tested in test_finetune.py).
ELECTRA_NAMES = [n for n, e in registry.OBJECTIVES.items()
                 if e.family == "electra" and not e.finetune]
T5_NAMES = [n for n, e in registry.OBJECTIVES.items() if e.family == "t5" and not e.finetune]


def _electra_batch(config, seed=0):
    batch, length = config.data.batch_size, config.data.inputs_length
    rng = np.random.default_rng(seed)
    tokens = rng.integers(10, config.model.vocab_size, (batch, length)).astype(np.int32)
    tokens[:, 0] = SPECIAL["cls"]
    tokens[:, length // 2] = SPECIAL["sep"]
    tokens[:, -1] = SPECIAL["sep"]
    tokens[1, length - 8:] = 0  # a padded row
    types = np.zeros_like(tokens)
    types[:, length // 2 + 1:] = 1
    return {"encoder_input_tokens": jnp.asarray(tokens),
            "encoder_token_type_ids": jnp.asarray(types)}


def _grads(name):
    config = electra_configs.get_config("tiny")
    config.objective.name = name
    objective = registry.build(config)
    params = nn.unbox(objective.init_fn(jax.random.key(0))["params"])
    batch = _electra_batch(config)

    def loss(p):
        return objective.loss_fn(p, batch, jax.random.key(1), True)

    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params)
    norms = {k: float(optax_norm(v)) for k, v in grads.items()}
    return objective, float(value), metrics, norms


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("name", ELECTRA_NAMES)
def test_electra_objective_trains_the_right_parameters(name):
    objective, value, metrics, norms = _grads(name)
    assert np.isfinite(value) and value > 0
    assert all(np.isfinite(float(v)) for v in metrics.values())
    # The generator (or, for the BERT baseline, the single network) always learns by MLM.
    assert norms["generator_head"] > 0
    if name == "mlm":
        # One discriminator-sized encoder: the generator IS the discriminator network.
        cfg = objective.model.config
        assert cfg.embedding_sharing == "all"
        assert cfg.generator_config() == cfg.discriminator
        assert norms["discriminator"] > 0 and norms["discriminator_head"] == 0
    elif name in ("electra", "electra_15"):
        assert norms["generator"] > 0 and norms["discriminator"] > 0
        assert norms["discriminator_head"] > 0 and "main_mlm_head" not in norms
    elif name == "replace_mlm":
        # The main network predicts originals at the masked slots; no replaced-token head.
        assert norms["main_mlm_head"] > 0 and norms["discriminator"] > 0
        assert norms["discriminator_head"] == 0
        assert "main_mlm_loss" in metrics and "main_accuracy" in metrics
    elif name == "all_tokens_mlm":
        # Every token predicted; the replaced-token head serves as the copy gate.
        assert norms["main_mlm_head"] > 0 and norms["discriminator_head"] > 0
        assert 0.0 < float(metrics["copy_probability"]) < 1.0


def test_main_mlm_heads_only_where_needed():
    for name in ELECTRA_NAMES:
        config = electra_configs.get_config("tiny")
        config.objective.name = name
        cfg = registry.build(config).model.config
        assert cfg.main_mlm_head == (name in ("replace_mlm", "all_tokens_mlm")), name


def test_electra_flops_grow_with_the_main_mlm_head():
    """Replace MLM adds the head at N slots, All-Tokens MLM at all L tokens (V-wide matmuls)."""
    flops = {}
    for name in ELECTRA_NAMES:
        config = electra_configs.get_config("tiny")
        config.objective.name = name
        flops[name] = registry.build(config).flops_per_step
    assert flops["electra"] == flops["electra_15"]
    assert flops["electra"] < flops["replace_mlm"] < flops["all_tokens_mlm"]
    # The head's cost by hand: 3 x 2 x tokens x (h x e + e x V), tiny = h 32, e 16, V 8192.
    config = electra_configs.get_config("tiny")
    b, length = config.data.batch_size, config.data.inputs_length
    masked = int((0.15 + 0.005) * length)
    per_slot = 3 * 2 * (32 * 16 + 16 * 8192)
    assert flops["replace_mlm"] - flops["electra"] == pytest.approx(b * masked * per_slot)
    assert flops["all_tokens_mlm"] - flops["electra"] == pytest.approx(b * length * per_slot)


def test_model_overrides_reach_the_electra_config():
    config = electra_configs.get_config("tiny")
    config.model.generator_fraction = 1.0
    config.model.embedding_sharing = "untied"
    cfg = registry.build(config).model.config
    assert cfg.generator_fraction == 1.0 and cfg.embedding_sharing == "untied"
    assert cfg.generator_config().d_model == cfg.discriminator.d_model


def test_t5_objectives_share_one_model_and_loss():
    for name in T5_NAMES:
        config = t5_configs.get_config("tiny")
        config.objective.name = name
        objective = registry.build(config)
        assert objective.reduction == "sum" and objective.example_kind == "encdec"
        assert registry.denoiser(name).name == name


def test_electra_only_keys_are_rejected_for_t5():
    config = t5_configs.get_config("tiny")
    config.model.embedding_size = 64
    with pytest.raises(ValueError, match="embedding_size=64 is an ELECTRA setting"):
        registry.build(config)


def test_flops_match_performance_md_reference_values():
    """shared/reference/PERFORMANCE.md: T5-v1.1-small B8 512/114 = 850 GFLOP per training
    step; ELECTRA-Small discriminator alone at B32 x 128 = 254 GFLOP."""
    from modeling import electra, t5

    t5_small = t5_family.flops(t5.get_t5_config("t5_1_1_small"), 8, 512, 114)
    assert t5_small / 1e9 == pytest.approx(850, abs=0.5)
    disc = electra.PRESETS["electra_small"].discriminator
    forward = (electra_family.encoder_flops(disc, 32, 128)
               + 2 * 32 * 128 * (disc.d_model**2 + disc.d_model))  # + the discriminator head
    assert 3 * forward / 1e9 == pytest.approx(254, abs=0.5)


def test_unknown_names_and_wrong_presets_are_clear():
    config = t5_configs.get_config("tiny")
    config.objective.name = "span_corruptoin"
    with pytest.raises(ValueError, match="'span_corruptoin' is not an objective; expected one of"):
        registry.build(config)
    config = t5_configs.get_config("tiny")
    config.objective.name = "electra"
    config.model.preset = "t5_1_1_small"
    with pytest.raises(ValueError, match="not an ELECTRA preset"):
        registry.build(config)
    with pytest.raises(ValueError, match="has no denoiser"):
        registry.denoiser("electra")


def test_denoiser_settings_live_in_config_objective():
    """A noise setting reaches the examples through config.objective (None = paper default)."""
    config = t5_configs.get_config("tiny")
    assert t5_family.denoiser_params(config) == {}
    config.objective.noise_density = 0.5
    assert t5_family.denoiser_params(config) == {"noise_density": 0.5}
    config.objective.name = "deshuffle"  # takes no noise density: refused, naming it
    with pytest.raises(ValueError, match="has no parameter 'noise_density'"):
        registry.build(config)
