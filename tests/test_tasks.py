"""seqio tasks and feature conversion: parity with seqio itself and with T5.md's packed table."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from data import bundled, electra_examples, features, tasks
from data import examples as examples_lib
from objectives import registry, span_corruption

EOS = 1


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="module")
def corpus_tasks(cache_dir, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("PRETRAX_CACHE_DIR", cache_dir)
    return tasks.register_local_corpus_tasks(
        "pretrax_test_corpus", bundled.VALIDATION_FILES, bundled.VALIDATION_FILES,
        bundled.VOCAB_PATH)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _seqio_pack(examples, lengths, pack=True):
    """seqio's own EncDecFeatureConverter on the same examples."""
    def gen():
        for e in examples:
            yield {"inputs": e["inputs"], "targets": e["targets"]}

    spec = {k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")}
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    converter = seqio.EncDecFeatureConverter(pack=pack)
    out = list(converter(ds, lengths).as_numpy_iterator())
    return {k: np.stack([o[k] for o in out]) for k in out[0]}


def _random_examples(rng, n, max_inputs, max_targets):
    return [{"inputs": np.append(rng.integers(2, 50, rng.integers(0, max_inputs)), EOS),
             "targets": np.append(rng.integers(2, 50, rng.integers(0, max_targets)), EOS)}
            for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Packing.
# ---------------------------------------------------------------------------------------------


def test_packing_equals_seqio_encdec_converter():
    lengths = {"inputs": 16, "targets": 8}
    # 40 examples = two full groups of 16 plus a partial one: exercises seqio's group flushes.
    examples = _random_examples(np.random.default_rng(0), 40, 12, 7)
    ours = features.encdec_features(features.pack_examples(examples, lengths), packed=True)
    theirs = _seqio_pack(examples, lengths)
    assert set(theirs) == set(features.ENCDEC_KEYS)
    for key in features.ENCDEC_KEYS:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    assert ours["encoder_input_tokens"].shape[0] < 40  # packing actually combined examples


def test_padding_equals_seqio_encdec_converter():
    lengths = {"inputs": 10, "targets": 6}
    examples = _random_examples(np.random.default_rng(1), 9, 10, 6)
    ours = features.encdec_features(features.pad_examples(examples, lengths), packed=False)
    theirs = _seqio_pack(examples, lengths, pack=False)
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_packing_reproduces_t5_md_table():
    examples = [{"inputs": np.array([7, 8, 5, 1]), "targets": np.array([3, 9, 1])},
                {"inputs": np.array([8, 4, 9, 3, 1]), "targets": np.array([4, 1])}]
    got = features.encdec_features(
        features.pack_examples(examples, {"inputs": 10, "targets": 7}), packed=True)
    expected = {
        "encoder_input_tokens": [7, 8, 5, 1, 8, 4, 9, 3, 1, 0],
        "encoder_segment_ids": [1, 1, 1, 1, 2, 2, 2, 2, 2, 0],
        "encoder_positions": [0, 1, 2, 3, 0, 1, 2, 3, 4, 0],
        "decoder_target_tokens": [3, 9, 1, 4, 1, 0, 0],
        "decoder_input_tokens": [0, 3, 9, 0, 4, 0, 0],
        "decoder_loss_weights": [1, 1, 1, 1, 1, 0, 0],
        "decoder_segment_ids": [1, 1, 1, 2, 2, 0, 0],
        "decoder_positions": [0, 1, 2, 0, 1, 0, 0],
    }
    for key, row in expected.items():
        np.testing.assert_array_equal(got[key], [row], err_msg=key)


def test_packed_rows_never_mix_examples():
    lengths = {"inputs": 24, "targets": 12}
    examples = _random_examples(np.random.default_rng(2), 60, 10, 6)
    rows = features.pack_examples(examples, lengths)
    got = features.encdec_features(rows, packed=True)
    seen = []
    for r in range(got["encoder_input_tokens"].shape[0]):
        enc, dec = got["encoder_segment_ids"][r], got["decoder_segment_ids"][r]
        segments = sorted(set(enc[enc > 0]))
        assert segments == list(range(1, len(segments) + 1))
        assert sorted(set(dec[dec > 0])) == segments  # every example has both sides
        for s in segments:
            first = np.argmax(dec == s)
            assert got["decoder_input_tokens"][r, first] == 0  # never sees the previous EOS
            seen.append((got["encoder_input_tokens"][r][enc == s].tolist(),
                         got["decoder_target_tokens"][r][dec == s].tolist()))
    # The segments, read back, are exactly the examples in order.
    assert seen == [(e["inputs"].tolist(), e["targets"].tolist()) for e in examples]


def test_electra_token_types_follow_their_tokens_when_packed():
    examples = [{"inputs": np.array([3, 9, 9, 4, 7, 4]),
                 "token_type_ids": np.array([0] * 4 + [1] * 2)},
                {"inputs": np.array([3, 8, 4]), "token_type_ids": np.array([0, 0, 0])}]
    got = features.encoder_features(features.pack_examples(examples, {"inputs": 10}), packed=True)
    np.testing.assert_array_equal(got["encoder_input_tokens"], [[3, 9, 9, 4, 7, 4, 3, 8, 4, 0]])
    np.testing.assert_array_equal(got["encoder_token_type_ids"], [[0, 0, 0, 0, 1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(got["encoder_segment_ids"], [[1, 1, 1, 1, 1, 1, 2, 2, 2, 0]])
    np.testing.assert_array_equal(got["encoder_positions"], [[0, 1, 2, 3, 4, 5, 0, 1, 2, 0]])


# ---------------------------------------------------------------------------------------------
# The seqio tasks equal the fast path.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective,inputs_length", [("span_corruption", 64),
                                                     ("iid_replace_spans", 48),
                                                     ("prefix_lm", 40)])
def test_seqio_task_equals_fast_path(corpus_tasks, cache_dir, objective, inputs_length):
    task = seqio.get_mixture_or_task(f"pretrax_test_corpus_{objective}")
    fast = examples_lib.t5_examples(bundled.VALIDATION_FILES, bundled.VOCAB_PATH,
                                    denoiser=registry.denoiser(objective),
                                    inputs_length=inputs_length, seed=5,
                                    cache_dir=cache_dir)
    ds = task.get_dataset(dict(fast.task_lengths), split="train", shuffle=True, seed=5)
    got = list(ds.take(12).as_numpy_iterator())
    # The pipeline's path: one call for the lot (span corruption runs batched).
    together = fast.examples(range(len(got)))
    for i, example in enumerate(got):
        want = fast.example(i)
        for key in ("inputs", "targets"):
            np.testing.assert_array_equal(example[key], want[key], err_msg=f"{i} {key}")
            np.testing.assert_array_equal(example[key], together[i][key], err_msg=f"{i} {key}")
            assert example[key][-1] == EOS
    if objective == "span_corruption":
        # T5's lengths: every chunk corrupts to exactly inputs_length and its targets length.
        raw, targets = span_corruption.raw_length(inputs_length)
        assert fast.raw_length == raw
        assert {(e["inputs"].size, e["targets"].size) for e in got} == {(inputs_length, targets)}


def test_seqio_electra_task_equals_fast_path(corpus_tasks, cache_dir):
    task = seqio.get_mixture_or_task("pretrax_test_corpus_electra")
    fast = examples_lib.electra_examples_from_files(
        bundled.VALIDATION_FILES, bundled.VOCAB_PATH, max_length=64, seed=2, cache_dir=cache_dir)
    ds = task.get_dataset({"inputs": 64}, split="validation", shuffle=False, seed=2)
    for i, example in enumerate(ds.take(10).as_numpy_iterator()):
        want = fast.example(i)
        for key in ("inputs", "token_type_ids"):
            np.testing.assert_array_equal(example[key], want[key], err_msg=f"{i} {key}")


def test_task_definitions():
    for name in tasks.BUNDLED_TASKS:
        task = seqio.get_mixture_or_task(name)
        assert isinstance(task.source, tasks.ExampleIndexSource)
        assert task.source.splits == ("train", "validation")
        assert task.metric_fns == []
        vocab = task.output_features["inputs"].vocabulary
        assert isinstance(vocab, seqio.SentencePieceVocabulary)
        assert vocab.vocab_size == 8192 and vocab.extra_ids == 100
    assert "pretrax_bundled_span_corruption" in tasks.BUNDLED_TASKS
    assert "pretrax_bundled_electra" in tasks.BUNDLED_TASKS
    assert not seqio.get_mixture_or_task("pretrax_bundled_electra").output_features[
        "inputs"].add_eos
    t5_task = seqio.get_mixture_or_task("pretrax_bundled_span_corruption")
    assert t5_task.output_features["targets"].add_eos
    assert t5_task.output_features["inputs"].add_eos


def test_c4_task_is_defined_as_t5x_expects():
    task = seqio.get_mixture_or_task("pretrax_c4_en_span_corruption")
    assert isinstance(task.source, seqio.TfdsDataSource)
    assert task.source.tfds_dataset.name == "c4/en:3.0.1"
    assert task.metric_fns == []
    assert task.output_features["targets"].add_eos and task.output_features["inputs"].add_eos
    steps = [getattr(p, "func", p) for p in task.preprocessors]
    assert steps[0] is seqio.preprocessors.rekey
    assert task.preprocessors[0].keywords["key_map"] == {"inputs": None, "targets": "text"}
    assert steps[1] is seqio.preprocessors.tokenize
    assert isinstance(steps[2], seqio.CacheDatasetPlaceholder)
    assert steps[-1] is seqio.preprocessors.append_eos_after_trim


def test_streaming_recipe_on_in_memory_text():
    """The C4 task's preprocessors, run on a few documents instead of TFDS."""
    task = seqio.get_mixture_or_task("pretrax_c4_en_span_corruption")
    docs = [d for _, d in zip(range(40), _read(bundled.VALIDATION_FILES), strict=False)]
    ds = tf.data.Dataset.from_tensor_slices({"text": docs})
    lengths = {"inputs": 64, "targets": 14}
    ds = task.preprocess_precache(ds, seed=1)
    ds = task.preprocess_postcache(ds, sequence_length=lengths, seed=1)
    out = list(ds.as_numpy_iterator())
    vocab = task.output_features["targets"].vocabulary
    raw, _ = span_corruption.raw_length(64)
    full = [e for e in out if e["inputs"].size == 64]
    assert len(full) >= 0.9 * len(out) and len(out) > 20
    first_tokens = np.concatenate([np.asarray(vocab.encode(d)) for d in docs[:5]])
    e = out[0]
    assert e["inputs"][-1] == EOS and e["targets"][-1] == EOS and e["targets"].size == 14
    # Undo the corruption: put each sentinel's span back -> the first raw chunk of the corpus.
    spans = np.split(e["targets"][:-1], np.flatnonzero(e["targets"][:-1] >= 8192 - 100)[1:])
    restored = []
    for t in e["inputs"][:-1]:
        restored.extend(spans.pop(0)[1:].tolist() if t >= 8192 - 100 else [t])
    np.testing.assert_array_equal(restored, first_tokens[:raw])


def _read(files):
    from data import sources

    return sources.read_documents(files)


# ---------------------------------------------------------------------------------------------
# ELECTRA examples.
# ---------------------------------------------------------------------------------------------


def _table(docs, max_length, seed=0):
    """docs: list of documents, each a list of sentence lengths; token ids count up from 10."""
    tokens, sentence_offsets, doc_offsets = [], [0], [0]
    for doc in docs:
        for n in doc:
            tokens.extend(range(10 + len(tokens), 10 + len(tokens) + n))
            sentence_offsets.append(len(tokens))
        doc_offsets.append(len(sentence_offsets) - 1)
    return electra_examples.build_table(np.array(tokens), np.array(sentence_offsets),
                                        np.array(doc_offsets), max_length, 3, 4, seed)


def test_electra_long_sentence_is_cut_and_rest_dropped():
    table = _table([[20], [2]], max_length=8)
    # One 20-token sentence reaches the target at once: A = its first 6 tokens, nothing carried.
    first = table.example(0)
    np.testing.assert_array_equal(first["inputs"], [3, 10, 11, 12, 13, 14, 15, 4])
    np.testing.assert_array_equal(first["token_type_ids"], [0] * 8)
    # The next document starts a new example (not the 14 dropped tokens).
    np.testing.assert_array_equal(table.example(1)["inputs"], [3, 30, 31, 4])
    assert len(table) == 2


def test_electra_examples_are_consecutive_text_of_one_document():
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(1, 15, rng.integers(1, 12))) for _ in range(60)]
    table = _table(docs, max_length=32, seed=7)
    doc_of_token = np.repeat(np.arange(len(docs)), [sum(d) for d in docs])
    single = two = 0
    for r in range(len(table)):
        e = table.example(r)
        ids, types = e["inputs"], e["token_type_ids"]
        assert ids[0] == 3 and ids[-1] == 4 and ids.size <= 32
        body = ids[ids >= 10] - 10
        assert len(set(doc_of_token[body])) == 1  # a document boundary ends an example
        if types[-1] == 1:
            two += 1
            a, b = ids[1:np.argmax(types) - 1] - 10, ids[np.argmax(types):-1] - 10
            assert a.size and b.size and ids[np.argmax(types) - 1] == 4
            assert a[0] < b[0]  # A starts before B in the text
        else:
            single += 1
        # Each segment keeps corpus order.
        for segment in (0, 1):
            assert np.all(np.diff(ids[(types == segment) & (ids >= 10)]) > 0)
    assert two > 0 and single > 0


def test_electra_split_sentences():
    assert electra_examples.split_sentences("One two. Three? Four!\nFive six  \n\n") == [
        "One two.", "Three?", "Four!", "Five six"]


class _ScriptedRng:
    """Stands in for example_rng: returns scripted draws and fails on any unexpected one."""

    def __init__(self, randoms, integers=()):
        self.randoms, self.ints = list(randoms), list(integers)

    def random(self):
        return self.randoms.pop(0)

    def integers(self, low, high):
        value = self.ints.pop(0)
        assert low <= value < high
        return value


def test_electra_builder_semantics_by_hand(monkeypatch):
    scripts = {
        # two segments (0.5 >= 0.1); the 2nd sentence overflows A's target 6 -> coin 0.3 keeps it
        # in A; the 3rd goes to B without a coin; next target random (0.01 < 0.05) = 7.
        0: _ScriptedRng([0.5, 0.3, 0.01], [7]),
        # one segment (0.05 < 0.1); next target back to max_length (0.9).
        1: _ScriptedRng([0.05, 0.9]),
        # a document's end with 2 tokens still makes an example.
        2: _ScriptedRng([0.5, 0.9]),
    }
    monkeypatch.setattr(electra_examples, "example_rng", lambda seed, x: scripts[x])
    table = _table([[5, 4, 6, 3], [4, 4], [2]], max_length=16)
    assert len(table) == 3 and all(not s.randoms and not s.ints for s in scripts.values())
    e0 = table.example(0)
    # A = sentences 1-2 (9 tokens), B = sentences 3-4 trimmed to 16 - 9 - 3 = 4 tokens.
    np.testing.assert_array_equal(e0["inputs"], [3, *range(10, 19), 4, 19, 20, 21, 22, 4])
    np.testing.assert_array_equal(e0["token_type_ids"], [0] * 11 + [1] * 5)
    # Target 7: after 4 + 4 = 8 tokens the example is cut (next document, ids 28..35).
    np.testing.assert_array_equal(table.example(1)["inputs"], [3, *range(28, 36), 4])
    np.testing.assert_array_equal(table.example(2)["inputs"], [3, 36, 37, 4])


def test_c4_variant_task_applies_its_parameters_and_a_mismatch_is_refused():
    """T5 Table 7's mean span length 10 on C4: the task registered for it corrupts with mean
    span 10 (fewer, longer spans than the default 3), and a config whose objective parameters
    differ from a streaming task's is refused with the task that matches."""
    from launch import inputs, sweep_spec

    name = tasks.c4_task_name("span_corruption", {"noise_density": 0.15,
                                                  "mean_noise_span_length": 10.0})
    assert name == "pretrax_c4_en_span_corruption_mean_noise_span_length10"
    assert tasks.streaming_recipe(name) == ("span_corruption", {
        "noise_density": 0.15, "mean_noise_span_length": 10.0, "max_sentinels": 100})
    task = seqio.get_mixture_or_task(name)
    docs = [d for _, d in zip(range(40), _read(bundled.VALIDATION_FILES), strict=False)]
    raw, targets_length = span_corruption.raw_length(128, 0.15, 10.0)
    ds = task.preprocess_precache(tf.data.Dataset.from_tensor_slices({"text": docs}), seed=1)
    ds = task.preprocess_postcache(ds, sequence_length={"inputs": 128,
                                                        "targets": targets_length}, seed=1)
    full = [e for e in ds.as_numpy_iterator() if e["inputs"].size == 128]
    # 147 raw tokens at 15%: 22 noise tokens in round(22 / 10) = 2 spans (the default: 7)
    assert raw == 147 and len(full) > 10
    for e in full:
        assert np.sum(e["inputs"] >= 8192 - 100) == 2 and e["targets"].size == targets_length

    config = sweep_spec.load_config("configs/t5.py:tiny")
    with config.unlocked():
        config.data.source = "seqio"
        config.data.task = "pretrax_c4_en_span_corruption"  # the default mean span, 3
        config.objective.mean_noise_span_length = 10.0
        _, config.data.targets_length = span_corruption.raw_length(64, 0.15, 10.0)
    with pytest.raises(ValueError, match=r"applies span_corruption .*'mean_noise_span_length': "
                       r"3.0.* but the config trains .*10.0.*use config.data.task='"
                       f"{name}'"):
        inputs.make_examples(config, registry.build(config), "train")
    with config.unlocked():
        config.data.task = "pretrax_c4_en_iid_replace_spans_noise_density0.5"  # registered now
        config.objective.name = "iid_replace_spans"
        config.objective.noise_density = 0.5
        config.objective.mean_noise_span_length = None
        _, config.data.targets_length = registry.denoiser("iid_replace_spans").lengths(
            64, noise_density=0.5)
    assert inputs.make_examples(config, registry.build(config), "train") == inputs.SeqioSplit(
        config.data.task, "train")
