"""Bad input on the training command line: one line naming the thing and the fix, exit 2,
nothing trained. (Mistyped keys and a busy workdir: test_lock; fine-tuning: test_finetune.)"""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from tests.helpers import REPO, cli_env

BASE = ("--config=configs/t5.py:tiny", "--config.train.steps=1", "--config.train.eval_every=0",
        "--config.train.tensorboard=false", "--config.train.showcase=false")


def _train(workdir, *flags):
    return subprocess.run([sys.executable, "-m", "launch.train", *BASE, f"--workdir={workdir}",
                           *flags], cwd=REPO, env=cli_env(1), capture_output=True, text=True,
                          timeout=600)


def _one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def other_shape_run(tmp_path_factory):
    """A one-step tiny T5 run: a checkpoint of another shape than d_model=64's."""
    workdir = tmp_path_factory.mktemp("bad_inputs") / "narrow"
    result = _train(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def _bert_dir(path):
    """An HF directory of an architecture pretrax does not convert (real safetensors file)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "bert",
                                                  "architectures": ["BertForMaskedLM"]}))
    header = json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    return path


def test_a_wrong_value_type_names_the_flag(tmp_path):
    line = _one_line_error(_train(tmp_path / "w", "--config.train.steps=ten"))
    assert line.startswith("ERROR: flag --config.train.steps=ten: invalid literal for int()")


def test_a_checkpoint_of_another_shape_names_the_first_mismatching_tensor(
        tmp_path, other_shape_run):
    line = _one_line_error(_train(tmp_path / "w", "--config.model.d_model=64",
                                  f"--config.train.init_from={other_shape_run}"))
    assert f"init_from {other_shape_run}/checkpoints/1: params do not match" in line
    assert "first mismatch: ['decoder']['final_norm']['scale'] is (32,) there, (64,) here" in line
    assert not any(p.name.isdigit() for p in (tmp_path / "w").glob("checkpoints/*"))


def test_an_hf_directory_of_another_architecture_is_named(tmp_path):
    bert = _bert_dir(tmp_path / "bert")
    line = _one_line_error(_train(tmp_path / "w", f"--config.train.init_from={bert}"))
    assert line == (f"ERROR: {bert}: unsupported architecture ['BertForMaskedLM'] "
                    "(model_type 'bert'); supported: T5ForConditionalGeneration, Electra*")


@pytest.mark.parametrize("flags, expected", [
    (("--config.train.init_from=/nonexistent/run",),
     "ERROR: init_from='/nonexistent/run' holds no checkpoint (expected a workdir, its "
     "'checkpoints' dir, a step dir or a Hugging Face dir)"),
    (("--config.data.source=files", "--config.data.train_files=/nonexistent/corpus.txt"),
     "ERROR: input file '/nonexistent/corpus.txt' does not exist"),
], ids=["init_from", "corpus"])
def test_unreadable_paths_are_named(tmp_path, flags, expected):
    assert _one_line_error(_train(tmp_path / "w", *flags)) == expected


def test_convert_names_a_missing_run(tmp_path):
    result = subprocess.run([sys.executable, "-m", "launch.convert", "to_hf",
                             str(tmp_path / "nothing"), str(tmp_path / "out")], cwd=REPO,
                            env=cli_env(1), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "nothing") in lines[0], result.stderr[-2000:]
