"""The Hugging Face reference run of ELECTRA pretraining: its own inputs, and a smoke run."""

import json
import subprocess
import sys

import numpy as np
import torch

from launch import electra_reference as ref
from tests.helpers import REPO, cli_env

CLS, SEP, MASK = 1, 2, 3


def test_token_types_by_hand():
    ids = torch.tensor([[CLS, 7, 8, SEP, 9, SEP, 0], [CLS, 7, SEP, 0, 0, 0, 0]])
    np.testing.assert_array_equal(ref.token_types(ids, SEP).numpy(),
                                  [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1]])


def test_masking_follows_the_reference_rules():
    # Per row max(1, min(N, round(real * p))) real non-special positions; 85% become [MASK].
    rng = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 100, (2000, 64))
    ids[:, 0], ids[:, 40] = CLS, SEP
    ids[:1000, 41:] = 0  # half the rows have 41 real tokens
    cfg = {"cls": CLS, "sep": SEP, "mask": MASK, "mask_prob": 0.15, "mask_replace_prob": 0.85}
    chosen, masked = ref.mask_batch(ids, cfg, rng)
    counts = chosen.sum(dim=1).numpy()
    assert np.all(counts[:1000] == round(41 * 0.15)) and np.all(counts[1000:] == 9)
    assert not chosen[(ids == 0) | (ids == CLS) | (ids == SEP)].any()
    assert torch.equal(masked[~chosen], ids[~chosen])
    share = (masked[chosen] == MASK).float().mean().item()
    assert abs(share - 0.85) < 0.01


def test_auc_by_hand():
    assert ref.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == 0.75


def test_reference_run_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "launch.electra_reference", "--config=configs/electra.py:tiny",
         f"--workdir={tmp_path}", "--steps=10", "--threads=1"],
        cwd=REPO, env=cli_env(1), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/disc_auc" in r]
    assert [r["step"] for r in evals] == [0, 10]
    assert all(0.0 <= r["eval/disc_auc"] <= 1.0 for r in evals)
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 10 and losses[-1] < losses[0]  # tiny config logs every step
    plot = subprocess.run([sys.executable, "-m", "launch.plot_rtd", f"{tmp_path}=hf",
                           f"--out={tmp_path / 'rtd.png'}"], cwd=REPO, env=cli_env(1),
                          capture_output=True, text=True, timeout=300)
    assert plot.returncode == 0, plot.stderr[-2000:]
    assert (tmp_path / "rtd.png").read_bytes()[:4] == b"\x89PNG"
