"""objectives/denoising.py against the original T5 preprocessors and the paper's gin configs.

Each objective's recipe (noise mask, inputs transform, targets transform, density) is read from
the gin file the ``t5`` package ships for that paper row, and the original ``denoise`` is run
with exactly those TF transforms on OUR noise mask (replayed from the same example rng) and,
where a transform draws its own randomness, with the original's draws fed to our transform.
"""

import importlib.util
import itertools
import pathlib
import re

import numpy as np
import pytest
import seqio
import tensorflow as tf

from objectives import denoising as dn
from objectives import registry
from objectives import span_corruption as sc
from tests.helpers import original_t5_preprocessors

T5 = original_t5_preprocessors()
GIN_DIR = pathlib.Path(
    importlib.util.find_spec("t5").submodule_search_locations[0]) / "models/gin/objectives"
VOCAB_SIZE = 512  # a tiny seqio vocabulary: 412 pieces + 100 extra ids


def read_gin(name, resolve=True):
    """The single-line bindings of an objective gin file, includes and %macros resolved."""
    bindings = {}
    for line in (GIN_DIR / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("include"):
            bindings.update(read_gin(line.split("'")[1].split("/")[-1], resolve=False))
        elif "=" in line and not line.endswith("["):
            key, value = (part.strip() for part in line.split("=", 1))
            bindings[key] = value
    if resolve:  # only once every include and override is in: gin macros bind late
        for key, value in bindings.items():
            if value.startswith("%"):
                bindings[key] = bindings[value[1:]]
    return bindings


def recipe(gin_name):
    """(noise_density, noise mask fn name, inputs fn name, targets fn name or None, params)."""
    b = read_gin(gin_name)
    name = lambda v: None if v == "None" else re.sub(r"^@(preprocessors\.)?", "", v)  # noqa: E731
    params = {"noise_density": float(b["preprocessors.denoise.noise_density"])}
    if "preprocessors.random_spans_noise_mask.mean_noise_span_length" in b:
        params["mean_noise_span_length"] = float(
            b["preprocessors.random_spans_noise_mask.mean_noise_span_length"])
    if "preprocessors.noise_token_to_random_token_or_sentinel.random_prob" in b:
        params["random_prob"] = float(
            b["preprocessors.noise_token_to_random_token_or_sentinel.random_prob"])
    return (name(b["preprocessors.denoise.noise_mask_fn"]),
            name(b["preprocessors.denoise.inputs_fn"]),
            name(b["preprocessors.denoise.targets_fn"]), params)


# objective name, gin file of the paper row, our params for it (checked against the gin's).
PAPER_ROWS = [
    ("prefix_lm", "prefix_lm.gin", {"noise_density": 0.5}),
    ("bert", "iid_15_r10s90_f.gin", {"noise_density": 0.15, "random_prob": 0.1}),
    ("mass", "iid_15_m_f.gin", {"noise_density": 0.15}),
    ("deshuffle", "all_permute.gin", {}),
    ("iid_drop_tokens", "iid_15_d_d.gin", {"noise_density": 0.15}),
    *[("iid_replace_spans", f"iid_{round(d * 100)}_u_u.gin", {"noise_density": d})
      for d in (0.1, 0.15, 0.25, 0.5)],
    *[("span_corruption", f"span_{m}_15_u_u.gin",
       {"noise_density": 0.15, "mean_noise_span_length": float(m)}) for m in (2, 3, 5, 10)],
]


def our_mask(mask_fn_name, length, params, rng):
    """Replays the mask an objective drew first from ``rng``, picked by the gin's mask fn."""
    if mask_fn_name == "iid_noise_mask":
        return dn.iid_noise_mask(length, params.get("noise_density", 1.0), rng)
    if mask_fn_name == "random_prefix_noise_mask":
        return dn.random_prefix_noise_mask(length, params["noise_density"], rng)
    assert mask_fn_name == "random_spans_noise_mask"
    return sc.random_spans_noise_mask(length, params["noise_density"],
                                      params["mean_noise_span_length"], rng)


def tf_draws(seed, length, vocab_size):
    """The draws the original's denoise hands its inputs_fn (seeds 2 and 3 of a 6-way split)."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))
    uniform = tf.random.stateless_uniform([length], seed=seeds[2])
    random_tokens = tf.random.stateless_uniform(
        [length], minval=sc.NUM_RESERVED_IDS, maxval=vocab_size, dtype=tf.int32, seed=seeds[3])
    return uniform.numpy(), random_tokens.numpy()


@pytest.mark.parametrize("objective, gin_name, params", PAPER_ROWS)
def test_objective_equals_original_recipe(objective, gin_name, params):
    mask_fn, inputs_fn, targets_fn, gin_params = recipe(gin_name)
    spec = registry.denoiser(objective)
    if objective == "deshuffle":
        assert gin_params == {"noise_density": 1.0}  # every token is noise
    else:
        assert gin_params == params
    vocabulary = seqio.PassThroughVocabulary(size=VOCAB_SIZE)
    features = {"inputs": seqio.Feature(vocabulary), "targets": seqio.Feature(vocabulary)}
    data_rng = np.random.default_rng(len(gin_name))
    for index in range(6):
        length = int(data_rng.integers(40, 200))
        tokens = data_rng.integers(3, VOCAB_SIZE - 100, length).astype(np.int32)
        ours = spec(tokens, sc.example_rng(21, index), VOCAB_SIZE, **params)
        mask = our_mask(mask_fn, length, gin_params, sc.example_rng(21, index))
        seed = tf.constant([index, 99])
        original = T5.single_example_denoise(
            {"targets": tf.constant(tokens)}, seed, output_features=features,
            noise_density=gin_params["noise_density"],
            noise_mask_fn=lambda *args, m=mask, **kwargs: tf.constant(m),
            inputs_fn=getattr(T5, inputs_fn),
            targets_fn=getattr(T5, targets_fn) if targets_fn else None)
        expected_inputs = original["inputs"].numpy()
        if objective == "bert":  # the original draws its own 10% / random tokens: feed them to ours
            uniform, random_tokens = tf_draws(seed, length, VOCAB_SIZE)
            np.testing.assert_array_equal(
                expected_inputs, dn.noise_token_to_random_token_or_sentinel(
                    tokens, mask, VOCAB_SIZE, uniform < np.float32(0.1), random_tokens))
            rng = sc.example_rng(21, index)  # ours: the same wiring with our own draws
            dn.iid_noise_mask(length, 0.15, rng)
            expected_inputs = dn.noise_token_to_random_token_or_sentinel(
                tokens, mask, VOCAB_SIZE, rng.random(length) < 0.1,
                rng.integers(sc.NUM_RESERVED_IDS, VOCAB_SIZE, length))
        elif objective == "deshuffle":  # likewise for the permutation
            uniform, _ = tf_draws(seed, length, VOCAB_SIZE)
            np.testing.assert_array_equal(expected_inputs, dn.permute_noise_tokens(
                tokens, mask, np.argsort(uniform, kind="stable")))
            rng = sc.example_rng(21, index)
            expected_inputs = dn.permute_noise_tokens(tokens, mask, rng.permutation(length))
        np.testing.assert_array_equal(ours["inputs"][:-1], expected_inputs)
        np.testing.assert_array_equal(ours["targets"][:-1], original["targets"].numpy())
        assert ours["inputs"][-1] == sc.EOS_ID and ours["targets"][-1] == sc.EOS_ID
        assert ours["inputs"].dtype == np.int32 and ours["targets"].dtype == np.int32


def test_transforms_equal_original_on_identical_masks():
    data_rng = np.random.default_rng(8)
    for case in range(30):
        length = int(data_rng.integers(1, 120))
        vocab_size = int(data_rng.choice([128, 512, 32100]))
        vocabulary = seqio.PassThroughVocabulary(size=vocab_size)
        tokens = data_rng.integers(3, 100, length).astype(np.int32)
        mask = data_rng.random(length) < data_rng.uniform(0.0, 1.0)
        seeds = tf.constant([[case, 1], [case, 2]])
        args = (tf.constant(tokens), tf.constant(mask), vocabulary)
        simple = {
            "noise_token_to_sentinel": dn.noise_token_to_sentinel(tokens, mask, vocab_size),
            "drop_noise_tokens": dn.drop_noise_tokens(tokens, mask),
            "drop_nonnoise_tokens": dn.drop_nonnoise_tokens(tokens, mask),
        }
        for name, ours in simple.items():
            np.testing.assert_array_equal(ours, getattr(T5, name)(*args, seeds=seeds).numpy())
        # Randomised transforms: replicate the original's draws, then compare bitwise.
        use_random = tf.random.stateless_uniform([length], seed=seeds[0]).numpy() < np.float32(0.3)
        random_tokens = tf.random.stateless_uniform(
            [length], minval=3, maxval=vocab_size, dtype=tf.int32, seed=seeds[1]).numpy()
        np.testing.assert_array_equal(
            dn.noise_token_to_random_token_or_sentinel(tokens, mask, vocab_size, use_random,
                                                       random_tokens),
            T5.noise_token_to_random_token_or_sentinel(*args, seeds=seeds, random_prob=0.3).numpy())
        permutation = seqio.stateless_shuffle(tf.range(int(mask.sum())), seeds[0]).numpy()
        np.testing.assert_array_equal(
            dn.permute_noise_tokens(tokens, mask, permutation),
            T5.permute_noise_tokens(*args, seeds=seeds).numpy())


@pytest.mark.parametrize("noise_density", [0.5, 0.3, 0.1])
def test_prefix_split_points_equal_original(noise_density):
    # The split point is uniform on [k_min, length - 1]; k_min is float32 arithmetic. Both
    # supports are found exactly by enough draws (<= 30 values, 400 draws each).
    @tf.function
    def original_prefix_lengths(length, seeds):  # [draws, 2] seeds -> [draws] prefix lengths
        return tf.map_fn(lambda seed: tf.reduce_sum(tf.cast(T5.random_prefix_noise_mask(
            length, noise_density, seed[None]), tf.int32)), seeds, fn_output_signature=tf.int32)

    seeds = tf.stack([tf.range(400), tf.fill([400], 3)], axis=1)
    for length in (2, 3, 7, 10, 31):
        theirs = set(original_prefix_lengths(tf.constant(length), seeds).numpy().tolist())
        rng = sc.example_rng(4, length)
        ours = {int(dn.random_prefix_noise_mask(length, noise_density, rng).sum())
                for _ in range(400)}
        assert ours == theirs, (length, noise_density)


def test_iid_mask_density_and_deshuffle_all_noise():
    rng = sc.example_rng(0, 0)
    for density in (0.1, 0.15, 0.25, 0.5):
        fraction = np.mean([dn.iid_noise_mask(511, density, rng).mean() for _ in range(200)])
        assert abs(fraction - density) < 5 * np.sqrt(density * (1 - density) / (511 * 200))
    assert dn.iid_noise_mask(50, 1.0, rng).all()
    assert T5.iid_noise_mask(50, 1.0, tf.constant([[1, 2]])).numpy().all()


# ---------------------------------------------------------------------------------------------
# Lengths
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sentinel_per_run", [True, False])
def test_iid_targets_length_equals_brute_force(sentinel_per_run):
    n = 12
    masks = np.array(list(itertools.product([False, True], repeat=n)))
    runs = (masks & ~np.pad(masks, ((0, 0), (1, 0)))[:, :-1]).sum(1)
    lengths = masks.sum(1) + (runs if sentinel_per_run else 0) + 1  # + EOS
    for density, tail_prob in itertools.product((0.1, 0.15, 0.5), (0.2, 1e-2, 1e-3)):
        weights = density ** masks.sum(1) * (1 - density) ** (n - masks.sum(1))
        cdf = np.array([weights[lengths <= t].sum() for t in range(3 * n)])
        expected = int(np.argmax(cdf >= 1 - tail_prob - 1e-12))
        assert dn.iid_targets_length(n, density, sentinel_per_run, tail_prob) == expected


def test_registry_lengths():
    objectives = {d.name: d for d in dn.DENOISERS}
    assert objectives["span_corruption"].lengths(512) == (568, 114)
    assert objectives["span_corruption"].lengths(512, mean_noise_span_length=10.0) == \
        sc.raw_length(512, 0.15, 10.0)
    # iid_15_d_d.gin configures targets 104 for 512 inputs; our 1e-3 tail bound agrees.
    assert objectives["iid_drop_tokens"].lengths(512) == (511, 104)
    assert objectives["prefix_lm"].lengths(512) == (511, 511)
    tokens = np.arange(511, dtype=np.int32) + 3
    for name in ("bert", "mass", "deshuffle"):
        spec = objectives[name]
        assert spec.fixed_length and spec.lengths(512) == (511, 512)
        out = spec(tokens, sc.example_rng(0, 1), 32100)
        assert out["inputs"].shape == (512,) and out["targets"].shape == (512,)
        np.testing.assert_array_equal(out["targets"][:-1], tokens)
    for index in range(50):  # prefix LM: lengths always within the reported maximum
        out = objectives["prefix_lm"](tokens, sc.example_rng(0, index), 32100)
        assert out["inputs"].size + out["targets"].size == 513
        assert 2 <= out["targets"].size <= 511 and out["inputs"].size >= 2


def test_invalid_parameters_raise():
    spec = registry.denoiser("iid_replace_spans")
    tokens = np.arange(100, dtype=np.int32) + 3
    with pytest.raises(ValueError, match="'t5_magic' is not an objective"):
        registry.denoiser("t5_magic")
    with pytest.raises(ValueError, match="no parameter 'mean_noise_span_length'"):
        spec(tokens, sc.example_rng(0, 0), 512, mean_noise_span_length=3.0)
    for spec in dn.DENOISERS:
        if "noise_density" in spec.defaults:
            for density in (0.0, 1.0, -0.5, 1.5):
                with pytest.raises(ValueError, match=f"noise_density={density}"):
                    spec(tokens, sc.example_rng(0, 0), 512, noise_density=density)
                with pytest.raises(ValueError, match=f"noise_density={density}"):
                    spec.lengths(512, noise_density=density)
        with pytest.raises(ValueError, match="inputs_length=1 "):
            spec.lengths(1)
    with pytest.raises(ValueError, match="noise_density=0.6 must be in \\(0, 0.5\\]"):
        registry.denoiser("prefix_lm")(tokens, sc.example_rng(0, 0), 512, noise_density=0.6)
    with pytest.raises(ValueError, match="mean_noise_span_length=0"):
        registry.denoiser("span_corruption").lengths(512, mean_noise_span_length=0)
    with pytest.raises(ValueError, match="random_prob=1.5"):
        registry.denoiser("bert")(tokens, sc.example_rng(0, 0), 512, random_prob=1.5)
    with pytest.raises(ValueError, match="needs >= 2"):
        registry.denoiser("prefix_lm")(tokens[:1], sc.example_rng(0, 0), 512)
