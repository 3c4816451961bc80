"""Every config file and variant loads, builds its model abstractly, and rejects typos."""


import flax.linen as nn
import jax
import pytest

from configs import common
from configs import electra as electra_configs
from configs import finetune as finetune_configs
from configs import t5 as t5_configs
from launch import mesh as mesh_lib
from launch import optim
from modeling import electra, t5
from objectives import registry

ALL = [("t5", v) for v in t5_configs.VARIANTS] + [("electra", v)
                                                  for v in electra_configs.VARIANTS]


def _get(family, variant):
    module = t5_configs if family == "t5" else electra_configs
    return module.get_config(variant)


@pytest.mark.parametrize("family,variant", ALL)
def test_variant_builds_its_model_abstractly(family, variant):
    config = _get(family, variant)
    # Every key of the base config exists with the same type (files change values only).
    base = common.base_config()
    assert set(config.to_dict()) == set(base.to_dict())
    for section in base.keys():
        if hasattr(base[section], "keys"):
            assert set(config[section].keys()) == set(base[section].keys()), section
    objective = registry.build(config)
    abstract = jax.eval_shape(objective.init_fn, jax.random.key(0))["params"]
    count = sum(x.value.size if isinstance(x, nn.Partitioned) else x.size
                for x in jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(
                    x, nn.Partitioned)))
    if variant in t5.PRESETS and family == "t5":
        # The abstract model is the preset (vocab overridden only for the bundled corpus).
        cfg = t5.PRESETS[variant]
        assert objective.model.config.d_model == cfg.d_model
        assert objective.model.config.num_layers == cfg.num_layers
    if family == "electra" and variant in electra.PRESETS and variant != "tiny":
        want = electra.PRESETS[variant]
        got = objective.model.config
        assert got.discriminator.d_model == want.discriminator.d_model
        assert got.generator_config().d_model == want.generator_config().d_model
    assert count > 0
    # Every rule preset resolves for the params on a (2, 2, 2) mesh and the optimizer builds.
    mesh = mesh_lib.make_mesh(2, 2, 2)
    shardings = mesh_lib.params_shardings(abstract, mesh, mesh_lib.RULES[config.sharding])
    assert len(jax.tree.leaves(shardings)) == len(jax.tree.leaves(
        abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned)))
    optim.make_optimizer(config.optimizer, param_axes=mesh_lib.logical_specs(abstract))


def test_published_recipes():
    """The full-size variants carry the reference recipes (T5.md / ELECTRA.md)."""
    c = t5_configs.get_config("t5_1_1_base")
    assert (c.data.batch_size, c.data.inputs_length, c.data.targets_length) == (128, 512, 114)
    assert (c.optimizer.name, c.optimizer.decay_rate, c.optimizer.schedule,
            c.optimizer.warmup_steps) == ("adafactor", 0.8, "rsqrt", 10_000)
    assert (c.objective.z_loss, c.objective.normalize, c.train.steps) == (1e-4, "sum", 2**19)
    e = electra_configs.get_config("electra_small")
    assert (e.data.batch_size, e.data.inputs_length, e.optimizer.learning_rate) == (128, 128, 5e-4)
    assert (e.optimizer.eps, e.optimizer.bias_correction, e.optimizer.weight_decay,
            e.optimizer.clip_norm) == (1e-6, False, 0.01, 1.0)
    assert (e.objective.gen_weight, e.objective.disc_weight) == (1.0, 50.0)
    assert electra_configs.get_config("electra_large").objective.mask_prob == 0.25
    # ELECTRA's fine-tuning reuses its pretraining optimizer: no bias correction either.
    f = finetune_configs.get_config("electra_base")
    assert (f.optimizer.eps, f.optimizer.bias_correction, f.optimizer.weight_decay,
            f.optimizer.learning_rate, f.data.batch_size) == (1e-6, False, 0.01, 1e-4, 32)


def test_tiny_t5_targets_length_matches_span_corruption():
    for variant in ("tiny", "quickstart"):
        c = t5_configs.get_config(variant)
        raw, targets = registry.denoiser("span_corruption").lengths(c.data.inputs_length)
        assert targets == c.data.targets_length, variant


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown variant 'smal'"):
        t5_configs.get_config("smal")


def test_objective_of_the_other_family_names_the_preset():
    c = t5_configs.get_config("tiny")
    c.objective.name = "electra"
    c.model.preset = "t5_1_1_small"
    with pytest.raises(ValueError, match="'t5_1_1_small' is not an ELECTRA preset"):
        registry.build(c)


def test_renamed_keys_fail_with_their_new_name():
    common.check_renamed(["--config.objective.noise_density=0.3"])  # the new key is fine
    with pytest.raises(ValueError, match="it is --config.objective.noise_density now"):
        common.check_renamed(["--config.data.noise_density=0.3"])
    with pytest.raises(ValueError, match="the objective decides the model family"):
        common.check_renamed(["--config.model.family=t5"])


