"""``python -m launch.chaos``: the fault drills run end to end (a CI-sized selection).

The peer/coordinator drills have their own test (test_multihost), the disk-full drill too
(test_faults); here: SIGKILLs (one while a save is in flight), each kind of damaged latest
checkpoint, an empty checkpoint folder, a resume on half the devices and Inf gradients under
a finite loss."""

import json
import subprocess
import sys

from tests.helpers import REPO, cli_env


def test_chaos_drills_all_pass(tmp_path):
    root = tmp_path / "chaos"
    result = subprocess.run(
        [sys.executable, "-m", "launch.chaos", f"--root={root}", "--kills=2", "--steps=12",
         "--faults=kill,truncate,flip,missing,empty,remesh,inf_grad"],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    outcomes = {o["fault"]: o for o in json.loads((root / "chaos.json").read_text())}
    assert sorted(outcomes) == ["empty", "flip", "inf_grad", "kill", "missing", "remesh",
                               "truncate"]
    assert all(o["ok"] and o["checkpoints_lost"] == 0 for o in outcomes.values())
    assert outcomes["kill"]["injected"].startswith("SIGKILL x2")
    for damaged in ("truncate", "flip", "missing"):  # fell back, kept the damaged step
        assert "reported it and resumed from" in outcomes[damaged]["response"]
        assert "damaged step kept" in outcomes[damaged]["response"]
        assert outcomes[damaged]["final"] == "bitwise equal"
    assert outcomes["remesh"]["final"].startswith("bitwise to step ")
    # Inf in the gradients with a finite loss: stopped on the gradient norm, resumed exactly.
    assert "ERROR: gradient norm is " in outcomes["inf_grad"]["response"]
    assert outcomes["inf_grad"]["final"] == "bitwise equal"
    assert "| kill | SIGKILL x2" in (root / "chaos.md").read_text()


def test_chaos_rejects_an_unknown_fault(tmp_path):
    result = subprocess.run([sys.executable, "-m", "launch.chaos", "--faults=kill,meteor",
                             f"--root={tmp_path}"], cwd=REPO, env=cli_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown ['meteor']" in result.stderr
