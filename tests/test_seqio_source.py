"""``config.data.source="seqio"``: the trainer reads registered seqio tasks.

A local-corpus task goes through the fast path and must give the very batches the bundled
source gives; any other task (here T5's streaming recipe over an in-memory source, standing in
for TFDS C4) goes through ``seqio.get_dataset`` and must resume where it stopped.
"""

import json
import logging
import shutil

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
from etils import epath

from configs import t5 as t5_configs
from data import bundled, sources, tasks
from launch import inputs as inputs_lib
from launch import mesh as mesh_lib
from launch import metrics as metrics_lib
from launch import trainer
from objectives import registry
from tests.helpers import step_losses

STREAM_TASK = "pretrax_test_stream_span_corruption"


def _config(**data):
    config = t5_configs.get_config("tiny")
    config.data.prefetch = 0
    for key, value in data.items():
        config.data[key] = value
    return config


def _host(batches):
    return [{k: np.asarray(jax.device_get(v)) for k, v in b.items()} for b in batches]


def _take(config, n, state=None, split="train"):
    sharding = mesh_lib.batch_sharding(mesh_lib.make_mesh(1, -1, 1))
    objective = registry.build(config)
    examples = inputs_lib.make_examples(config, objective, split)
    it = inputs_lib.make_inputs(config, objective, examples, sharding, state)
    batches = _host([next(it) for _ in range(n)])
    state = it.state()
    it.close()
    return batches, state


def test_local_task_reads_the_fast_path_bitwise():
    bundled_batches, _ = _take(_config(source="bundled"), 2)
    seqio_batches, _ = _take(_config(source="seqio", task="pretrax_bundled_span_corruption"), 2)
    assert len(seqio_batches) == 2
    for ours, theirs in zip(seqio_batches, bundled_batches, strict=True):
        assert ours.keys() == theirs.keys()
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


@pytest.fixture(scope="module")
def stream_task():
    docs = [d for _, d in zip(range(200), sources.read_documents(bundled.TRAIN_FILES),
                              strict=False)]

    def dataset_fn(split, shuffle_files, seed=None):
        del shuffle_files, seed
        part = docs[:150] if split == "train" else docs[150:]
        return tf.data.Dataset.from_tensor_slices({"text": part})

    source = seqio.FunctionDataSource(dataset_fn, splits=("train", "validation"))
    yield tasks.register_streaming_task(STREAM_TASK, source, bundled.VOCAB_PATH)
    seqio.TaskRegistry.remove(STREAM_TASK)


def test_streaming_task_batches_and_exact_resume(stream_task):
    config = _config(source="seqio", task=stream_task)
    batches, _ = _take(config, 3)
    assert set(batches[0]) == {"encoder_input_tokens", "encoder_segment_ids",
                               "encoder_positions", "decoder_input_tokens",
                               "decoder_target_tokens", "decoder_segment_ids",
                               "decoder_positions", "decoder_loss_weights"}
    assert batches[0]["encoder_input_tokens"].shape == (8, 64)
    assert batches[0]["decoder_target_tokens"].shape == (8, 14)
    assert not np.array_equal(batches[0]["encoder_input_tokens"],
                              batches[1]["encoder_input_tokens"])
    _, state = _take(config, 1)
    assert state == {"source": "seqio", "task": stream_task, "processes": 1, "rows": 8,
                     "lengths": {"inputs": 64, "targets": 14}, "pack": True, "seed": 0,
                     "batches": 1, "skipped": 0}
    with pytest.raises(ValueError, match="processes=2, this run processes=1"):
        _take(config, 1, state={**state, "processes": 2})
    resumed, _ = _take(config, 2, state=state)
    for ours, theirs in zip(resumed, batches[1:], strict=True):
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_streaming_task_trains(stream_task, tmp_path):
    config = _config(source="seqio", task=stream_task)
    config.train.steps = 2
    config.train.eval_every = 2
    config.train.eval_steps = 1
    config.train.peak_flops = 1e9
    config.train.tensorboard = False
    config.checkpoint.every = 0
    summary = trainer.train(config, str(tmp_path))
    assert summary["step"] == 2
    records = [r for r in metrics_lib.read_metrics(str(tmp_path)) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)
    assert summary["eval"][-1]["eval/target_tokens"] > 0


def _examples(config):
    return inputs_lib.make_examples(config, registry.build(config), "train")


def test_seqio_source_errors():
    with pytest.raises(ValueError, match="needs config.data.task"):
        _examples(_config(source="seqio"))
    with pytest.raises(ValueError, match="'no_such_task' is not a registered seqio task"):
        _examples(_config(source="seqio", task="no_such_task"))
    config = _config(source="seqio", task="pretrax_bundled_span_corruption")
    config.model.vocab_size = 512
    with pytest.raises(ValueError, match="vocab_size=512"):
        _examples(config)


def _saved_data_state(workdir, step):
    with open(workdir / "checkpoints" / str(step) / "data" / "metadata") as f:
        return json.load(f)


def test_streaming_resume_restores_the_saved_iterator(stream_task, tmp_path, caplog):
    """A resumed streaming run continues from the tf.data iterator saved with the checkpoint
    (no re-reading: nothing skipped) and trains on the very batches of an uninterrupted run;
    a checkpoint without it falls back to skipping, with a warning, to the same batches."""
    config = _config(source="seqio", task=stream_task)
    config.train.steps = 4
    config.train.eval_every = 0
    config.train.peak_flops = 1e9
    config.train.tensorboard = False
    config.checkpoint.every = 2
    trainer.train(config, str(tmp_path / "straight"))
    expected = step_losses(tmp_path / "straight")
    assert [step for step, _ in expected] == [1, 2, 3, 4]

    restored, skipped = tmp_path / "restored", tmp_path / "skipped"
    config.train.steps = 2
    trainer.train(config, str(restored))
    assert (restored / "checkpoints" / "2" / "iterator" / "process_0-of-1.index").is_file()
    shutil.copytree(restored, skipped)
    shutil.rmtree(skipped / "checkpoints" / "2" / "iterator")

    config.train.steps = 4
    trainer.train(config, str(restored))
    assert _saved_data_state(restored, 4)["batches"] == 4
    assert _saved_data_state(restored, 4)["skipped"] == 0  # restored, not re-read
    with caplog.at_level(logging.WARNING):
        trainer.train(config, str(skipped))
    assert "no data iterator restored" in caplog.text
    assert "re-reading the 2 batches consumed" in caplog.text
    assert _saved_data_state(skipped, 4)["skipped"] == 2
    for workdir in (restored, skipped):
        assert step_losses(workdir) == expected, workdir.name


def test_iterator_with_python_function_still_checkpoints(tmp_path):
    """tf.data cannot save a py_function's state; a checkpointable dataset (as every streaming
    input is made) saves the rest rather than failing, and a pure function resumes exactly."""
    from launch import checkpoint as ckpt_lib

    def twice(x):
        return tf.py_function(lambda v: v * 2, [x], tf.int64)

    def make():
        dataset = tf.data.Dataset.range(100).map(twice).shuffle(10, seed=1).batch(4)
        return iter(inputs_lib.checkpointable(dataset).prefetch(2))

    it = make()
    next(it)
    handler = ckpt_lib.TfIteratorHandler()
    handler.save(epath.Path(tmp_path), ckpt_lib.TfIteratorSave(it))
    resumed = handler.restore(epath.Path(tmp_path), ckpt_lib.TfIteratorRestore(make()))
    for _ in range(3):
        np.testing.assert_array_equal(next(resumed).numpy(), next(it).numpy())


def test_a_resume_with_another_batch_lengths_or_seed_is_refused(stream_task):
    """A saved tf.data iterator would yield the old shapes (tf.data restores it into another
    batch size without complaint, then fails at the first batch), and a skip count would land
    elsewhere: refused, naming what changed; a checkpoint from before these were recorded is
    taken as matching."""
    config = _config(source="seqio", task=stream_task)
    _, state = _take(config, 1)
    for key, value, have, want in (("batch_size", 16, "rows=8", "rows=16"),
                                   ("inputs_length", 32, "'inputs': 64", "'inputs': 32")):
        changed = _config(source="seqio", task=stream_task)
        changed.data[key] = value
        with pytest.raises(ValueError, match=f"data state has .*{have}.*this run .*{want}"):
            _take(changed, 1, state=state)
    reseeded = _config(source="seqio", task=stream_task)
    reseeded.seed = 1
    with pytest.raises(ValueError, match="seed=0, this run seed=1"):
        _take(reseeded, 1, state=state)
    old = {k: state[k] for k in ("source", "task", "processes", "batches")}
    assert len(_take(config, 1, state=old)[0]) == 1


def test_an_iterator_that_restores_but_cannot_yield_falls_back(tmp_path):
    """tf.data restores a saved iterator into a pipeline of another batch size and fails only
    at the next batch: restore_iterator's check reads one, so that failure is reported as an
    unreadable iterator (the caller re-reads) instead of surfacing in the training loop."""
    from launch import checkpoint as ckpt_lib

    def iterator(rows):
        dataset = tf.data.Dataset.range(100).shuffle(10, seed=1)
        return iter(dataset.batch(rows, drop_remainder=True).prefetch(2))

    saved = iterator(4)
    next(saved)
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path), every=1, keep=1, log=lambda m: None)
    checkpointer.save(1, {"step": jax.numpy.asarray(1)}, {"batches": 1}, saved)
    checkpointer.wait()
    assert checkpointer.restore_iterator(1, iterator(4), check=next) is None
    why = checkpointer.restore_iterator(1, iterator(8), check=next)
    assert why is not None and "Incompatible shapes" in why
    checkpointer.close()


def test_save_iterator_off_saves_none_and_resumes_by_skipping(stream_task, caplog):
    config = _config(source="seqio", task=stream_task)
    config.checkpoint.save_iterator = False
    sharding = mesh_lib.batch_sharding(mesh_lib.make_mesh(1, -1, 1))
    objective = registry.build(config)
    split = inputs_lib.make_examples(config, objective, "train")
    it = inputs_lib.make_inputs(config, objective, split, sharding)
    assert it.tf_iterator is None  # the trainer saves no iterator item
    batches = _host([next(it) for _ in range(3)])
    restored = []
    with caplog.at_level(logging.WARNING):
        resumed = inputs_lib.make_inputs(config, objective, split, sharding,
                                         state={**it.state(), "batches": 1},
                                         restore_iterator=lambda *a: restored.append(a))
    assert not restored and "config.checkpoint.save_iterator=False" in caplog.text
    for ours, theirs in zip(_host([next(resumed), next(resumed)]), batches[1:], strict=True):
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
