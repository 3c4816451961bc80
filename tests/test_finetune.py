"""Fine-tuning: parity with Hugging Face's PyTorch models, warm starts, task metrics, resumes.

Parity: three plain-SGD steps of the ``classify`` objective (an HF-imported
``ElectraForSequenceClassification``, classification and regression) and of the
``text_to_text`` objective (T5 exported to ``T5ForConditionalGeneration``) give the losses and
gradients PyTorch computes on the same batches (float32, dropout off).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from configs import finetune as finetune_configs
from data import finetune
from launch import checkpoint as ckpt_lib
from launch import optim, trainer
from modeling import hf
from objectives import finetune as finetune_objectives
from objectives import registry
from tests.helpers import REPO

TOL = 1e-4

LABELS = ("animal", "food", "tool")
WORDS = {"animal": ["cat", "dog", "horse"], "food": ["bread", "rice", "soup"],
         "tool": ["hammer", "saw", "drill"]}


def _write(path: str, records: list[dict]) -> str:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


TOY_MODULE = """
from data import finetune

FILES = {files!r}
finetune.register(finetune.FinetuneTask(
    name="toy_cls", kind="classification", files=FILES, labels={labels!r},
    metric_fns=(finetune.accuracy,)))
finetune.register(finetune.FinetuneTask(
    name="toy_reg", kind="regression", files=FILES, target_field="score",
    text_fields=("sentence1", "sentence2"), metric_fns=(finetune.pearson_spearman,)))
finetune.register(finetune.FinetuneTask(
    name="toy_t2t", kind="text_to_text", files=FILES, metric_fns=(finetune.exact_match,)))
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Any]:
    """Three tiny tasks (classification, regression, text-to-text) over the same sentences,
    registered by a user module (``toy_tasks``) as ``config.data.task_module`` would."""
    d = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 48), ("validation", 12), ("test", 12)):
        records = []
        for i in range(n):
            label = LABELS[i % 3]
            word = WORDS[label][rng.integers(3)]
            records.append({"sentence1": f"a {word} is on the table", "sentence2": "yes",
                            "target": label, "score": f"{i % 3}.5"})
        files[split] = _write(str(d / f"{split}.jsonl"), records)
    (d / "toy_tasks.py").write_text(TOY_MODULE.format(files=files, labels=LABELS))
    sys.path.insert(0, str(d))
    try:
        yield {kind: finetune.get(name, "toy_tasks") for kind, name in (
            ("classification", "toy_cls"), ("regression", "toy_reg"),
            ("text_to_text", "toy_t2t"))} | {"dir": str(d)}
    finally:
        sys.path.remove(str(d))


def _config(variant: str, task: str, **overrides):
    config = finetune_configs.get_config(variant)
    config.data.task = task
    config.data.task_module = "toy_tasks"
    config.train.tensorboard = False
    config.train.console = False
    config.train.peak_flops = 1e9
    config.train.compilation_cache_dir = ""
    config.mesh.fsdp = 1  # parity runs on one device
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


# ---------------------------------------------------------------------------------------------
# Parity with Hugging Face.
# ---------------------------------------------------------------------------------------------
def _electra_batch(rng: np.random.Generator, batch: int, length: int, num_labels: int) -> dict:
    tokens = rng.integers(6, 8192, (batch, length))
    tokens[:, 0] = 3  # [CLS]
    tokens[1, 9:] = 0  # padding
    tokens[2, 5:] = 0
    types = np.zeros_like(tokens)
    types[:, length // 2:] = 1
    types[tokens == 0] = 0
    labels = (rng.normal(size=batch).astype(np.float32) if num_labels == 1
              else rng.integers(0, num_labels, batch).astype(np.int32))
    return {"encoder_input_tokens": tokens.astype(np.int32),
            "encoder_token_type_ids": types.astype(np.int32), "labels": labels}


def _sgd_parity(loss_fn, params, torch_model, torch_loss, batches, lr, pairs):
    """Three SGD steps on both sides; losses and the gradients named in ``pairs`` agree."""
    named = dict(torch_model.named_parameters())
    for batch in batches:
        loss, grads = jax.value_and_grad(lambda p, b=batch: loss_fn(p, b))(params)
        torch_model.zero_grad()
        hf_loss = torch_loss(torch_model, batch)
        hf_loss.backward()
        assert abs(float(loss) - hf_loss.item()) <= TOL, (float(loss), hf_loss.item())
        for ours, theirs, to_ours in pairs:
            got = np.asarray(ours(grads))
            want = to_ours(named[theirs].grad.numpy())
            assert got.shape == want.shape, (theirs, got.shape, want.shape)
            assert np.max(np.abs(got - want)) <= TOL, theirs
        params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
        with torch.no_grad():
            for p in torch_model.parameters():
                if p.grad is not None:
                    p -= lr * p.grad


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_classify_matches_hf_electra_for_sequence_classification(toy, tmp_path, kind):
    task = toy[kind]
    num_labels = task.num_classes
    config = _config("electra_tiny", task.name, **{"objective.classifier_head": "hf",
                                                   "data.batch_size": 4,
                                                   "data.inputs_length": 16})
    objective = registry.build(config)
    hf_config = transformers.ElectraConfig(
        vocab_size=8192, embedding_size=16, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=128, max_position_embeddings=64,
        type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        num_labels=num_labels, architectures=["ElectraForSequenceClassification"])
    torch.manual_seed(0)
    hf_model = transformers.ElectraForSequenceClassification(hf_config).eval()
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    model, params = hf.from_hf(str(tmp_path))
    # The HF directory's params fit the objective's model exactly.
    ckpt_lib.check_shapes(params, jax.eval_shape(lambda: nn_unbox(objective)), str(tmp_path))
    rng = np.random.default_rng(1)
    batches = [_electra_batch(rng, 4, 16, num_labels) for _ in range(3)]

    def torch_loss(m, b):
        labels = torch.tensor(b["labels"])
        return m(input_ids=torch.tensor(b["encoder_input_tokens"]).long(),
                 attention_mask=torch.tensor(b["encoder_input_tokens"] != 0).long(),
                 token_type_ids=torch.tensor(b["encoder_token_type_ids"]).long(),
                 labels=labels if num_labels == 1 else labels.long()).loss

    pairs = [
        (lambda g: g["embeddings"]["word"]["embedding"],
         "electra.embeddings.word_embeddings.weight", lambda w: w),
        (lambda g: g["head"]["out_proj"]["kernel"], "classifier.out_proj.weight", lambda w: w.T),
        (lambda g: g["network"]["stack"]["layers_0"]["mlp"]["wi"]["kernel"],
         "electra.encoder.layer.0.intermediate.dense.weight", lambda w: w.T),
    ]
    _sgd_parity(lambda p, b: objective.loss_fn(p, b, jax.random.key(0), True)[0],
                jax.tree.map(jnp.asarray, params), hf_model, torch_loss, batches, 0.05, pairs)


def nn_unbox(objective):
    from flax import linen as nn

    return nn.unbox(objective.init_fn(jax.random.key(0))["params"])


def test_text_to_text_matches_hf_t5(toy, tmp_path):
    config = _config("t5_tiny", "toy_t2t", **{"objective.z_loss": 0.0,
                                              "objective.normalize": "token",
                                              "data.batch_size": 4})
    objective = registry.build(config)
    params = nn_unbox(objective)
    hf.to_hf(objective.model, params, str(tmp_path))
    hf_model = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    examples = objective.task_examples("train", finetune_objectives.vocab_lib.path_of(config), 0)
    batches = [{k: jnp.asarray(v) for k, v in examples.features(examples.rows[4 * i:4 * i + 4],
                                                                 False).items()}
               for i in range(3)]

    def torch_loss(m, b):
        labels = torch.tensor(np.asarray(b["decoder_target_tokens"])).long()
        labels[labels == 0] = -100
        return m(input_ids=torch.tensor(np.asarray(b["encoder_input_tokens"])).long(),
                 attention_mask=torch.tensor(np.asarray(b["encoder_input_tokens"]) != 0).long(),
                 labels=labels).loss

    pairs = [(lambda g: g["token_embedder"]["embedding"], "shared.weight", lambda w: w)]
    _sgd_parity(lambda p, b: objective.loss_fn(p, b, jax.random.key(0), True)[0],
                params, hf_model, torch_loss, batches, 0.5, pairs)


# ---------------------------------------------------------------------------------------------
# Layer-wise LR decay: depths from the real parameter tree, multipliers in closed form.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scan", [False, True])
def test_layerwise_decay_depths_and_multipliers(toy, scan):
    config = _config("electra_tiny", "toy_cls", **{"model.scan_layers": scan})
    objective = registry.build(config)
    params = nn_unbox(objective)
    depths = objective.param_depths(params)
    scales = optim.layerwise_lr_scales(depths, 2, 0.8)
    assert float(scales["head"]["dense"]["kernel"]) == 1.0
    assert np.allclose(scales["embeddings"]["word"]["embedding"], 0.8 ** 3)
    if scan:
        layer = scales["network"]["stack"]["layers"]["block"]["mlp"]["wi"]["kernel"]
        np.testing.assert_allclose(np.ravel(layer), [0.8 ** 2, 0.8])
    else:
        np.testing.assert_allclose(
            scales["network"]["stack"]["layers_0"]["mlp"]["wi"]["kernel"], 0.8 ** 2)
        np.testing.assert_allclose(
            scales["network"]["stack"]["layers_1"]["mlp"]["wi"]["kernel"], 0.8)
    legacy = optim.layerwise_lr_scales(depths, 2, 0.8, True)  # the reference's off-by-one
    if not scan:
        np.testing.assert_allclose(
            legacy["network"]["stack"]["layers_1"]["mlp"]["wi"]["kernel"], 0.8 ** 2)


# ---------------------------------------------------------------------------------------------
# The trainer: pretraining run -> classifier, task metrics, predictions, best, resume.
# ---------------------------------------------------------------------------------------------
def _read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_finetune_from_a_pretraining_run(toy, tmp_path):
    from configs import electra as electra_configs

    pre = str(tmp_path / "pre")
    pre_config = electra_configs.get_config("tiny")
    pre_config.train.steps, pre_config.train.eval_every = 2, 0
    pre_config.train.tensorboard, pre_config.train.console = False, False
    pre_config.train.peak_flops, pre_config.train.compilation_cache_dir = 1e9, ""
    trainer.train(pre_config, pre)
    source = ckpt_lib.read_params(pre)

    run = str(tmp_path / "ft")
    config = _config("electra_tiny", "toy_cls", **{"train.init_from": pre, "train.steps": 0})
    summary = trainer.train(config, run)
    assert summary["step"] == 0
    # The classifier's encoder is the pretraining run's discriminator, leaf for leaf.
    adapted = finetune_objectives._adapt_encoder(source, nn_unbox(registry.build(config)))
    for a, b in zip(jax.tree.leaves(adapted["network"]), jax.tree.leaves(source["discriminator"]),
                    strict=True):
        np.testing.assert_array_equal(a, b)

    config = _config("electra_tiny", "toy_cls", **{"train.init_from": pre})
    summary = trainer.train(config, run)
    last = summary["eval"][-1]
    assert 0.0 <= last["eval/accuracy"] <= 100.0
    with open(os.path.join(run, "predictions", f"validation-{summary['step']}.jsonl")) as f:
        predictions = [json.loads(line) for line in f]
    assert len(predictions) == 12 and {p["prediction"] for p in predictions} <= set(LABELS)
    recomputed = 100.0 * np.mean([p["prediction"] == p["target"] for p in predictions])
    assert recomputed == pytest.approx(last["eval/accuracy"])
    best = ckpt_lib.best_record(run)
    assert best["metric"] == "accuracy"
    assert best["value"] == max(e["eval/accuracy"] for e in summary["eval"] if e["step"] > 0)


def test_finetune_resume_ends_with_the_same_metrics(toy, tmp_path):
    straight = _config("electra_tiny", "toy_cls")
    trainer.train(straight, str(tmp_path / "a"))
    first = _config("electra_tiny", "toy_cls", **{"train.steps": 10})
    trainer.train(first, str(tmp_path / "b"))
    trainer.train(_config("electra_tiny", "toy_cls"), str(tmp_path / "b"))
    a, b = _read_metrics(str(tmp_path / "a")), _read_metrics(str(tmp_path / "b"))
    last_a = [r for r in a if "eval/accuracy" in r][-1]
    last_b = [r for r in b if "eval/accuracy" in r][-1]
    assert last_a["step"] == last_b["step"] == 20
    assert last_a["eval/accuracy"] == last_b["eval/accuracy"]
    assert last_a["eval/loss"] == last_b["eval/loss"]


# ---------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------
def test_bad_tasks_are_named(toy, tmp_path):
    with pytest.raises(ValueError, match="not a registered fine-tuning task"):
        finetune.get("no_such_task")
    with pytest.raises(ValueError, match="task_module='no.such.module' cannot be imported"):
        finetune.get("toy_cls", "no.such.module")
    bad = _write(str(tmp_path / "bad.jsonl"), [{"sentence1": "x", "target": "plant"}])
    task = finetune.FinetuneTask(name="bad", kind="classification", files={"train": bad},
                                 labels=LABELS, metric_fns=(finetune.accuracy,))
    with pytest.raises(ValueError, match=r"bad.jsonl:1: target 'plant' is not one of"):
        task.rows("train")
    with pytest.raises(ValueError, match="text-to-text: it has no classifier head"):
        _ = toy["text_to_text"].num_classes


def test_long_inputs_are_truncated_and_counted(toy):
    config = _config("electra_tiny", "toy_cls", **{"data.inputs_length": 6})
    objective = registry.build(config)
    examples = objective.task_examples("train", finetune_objectives.vocab_lib.path_of(config), 0)
    assert examples.truncated == len(examples.rows)
    assert all(len(r["inputs"]) == 6 and r["inputs"][-1] == 4 for r in examples.rows)  # [SEP]


def test_a_t5_run_does_not_warm_start_a_classifier(toy, tmp_path):
    from configs import t5 as t5_configs

    pre = str(tmp_path / "t5")
    pre_config = t5_configs.get_config("tiny")
    pre_config.train.steps, pre_config.train.eval_every = 1, 0
    pre_config.train.tensorboard, pre_config.train.console = False, False
    pre_config.train.peak_flops, pre_config.train.compilation_cache_dir = 1e9, ""
    trainer.train(pre_config, pre)
    config = _config("electra_tiny", "toy_cls", **{"train.init_from": pre})
    with pytest.raises(ValueError, match="an ELECTRA classifier starts from"):
        trainer.train(config, str(tmp_path / "ft"))


def test_evaluate_and_predict_clis_agree_with_the_trainer(toy, tmp_path):
    run = str(tmp_path / "run")
    config = _config("electra_tiny", "toy_cls", **{"train.steps": 10})
    config.train.console = True
    summary = trainer.train(config, run)
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump(config.to_dict(), f)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([toy["dir"], REPO]), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--workdir={run}",
                          "--step=10", "--split=validation"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    with open(os.path.join(run, "eval", "validation-10.json")) as f:
        record = json.load(f)
    assert record["accuracy"] == summary["eval"][-1]["eval/accuracy"]
    # predict on the validation records: the same predictions the trainer wrote.
    with open(os.path.join(run, "predictions", "validation-10.jsonl")) as f:
        trained = [json.loads(line) for line in f]
    inputs = _write(str(tmp_path / "in.jsonl"), [{"sentence1": r["sentence1"]} for r in trained])
    out = subprocess.run([sys.executable, "-m", "launch.predict", f"--workdir={run}",
                          f"--input={inputs}", f"--output={tmp_path / 'out.jsonl'}"], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "out.jsonl") as f:
        predicted = [json.loads(line) for line in f]
    assert [p["prediction"] for p in predicted] == [t["prediction"] for t in trained]
    for p in predicted:
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert max(p["probabilities"], key=p["probabilities"].get) == p["prediction"]
    # Bad input: exit 2 with the reason.
    out = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--workdir={run}",
                          "--step=7"], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 2 and "checkpoints/7 does not exist" in out.stderr
