"""The tpu_vm backend: golden gcloud scripts, and the scripts run against a recording gcloud.

No cloud is reachable here, so (1) the scripts written for the two shipped TPU sweeps must equal
tests/golden/ (read them: they are what a TPU user runs; PRETRAX_UPDATE_GOLDEN=1 rewrites
them), and (2) ``--execute`` runs them with a stand-in ``gcloud`` first on PATH that records
its arguments, as bash parsed them, and answers like gcloud: no such slice yet, queued resource
ACTIVE, ssh exit 0 (or 255 once, as when a spot slice is taken back).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import sweep_run

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
GIT = ("--git_url=https://github.com/example/pretrax.git", "--git_ref=6d0d24e")
V5E = "configs/sweeps/t5_small_v5e_spot.py"

STAND_IN = f'''#!{sys.executable}
import json, os, sys

argv = sys.argv[1:]
with open(os.environ["GCLOUD_RECORD"], "a") as f:
    f.write(json.dumps(argv) + "\\n")
if argv[3] == "describe":  # gcloud compute tpus (tpu-vm|queued-resources) describe NAME
    if any(a.startswith("--format=") for a in argv):
        print("ACTIVE")
        sys.exit(0)
    sys.exit(1)  # no such slice yet
fail = os.environ.get("GCLOUD_FAIL_ONCE")
if fail and argv[3] == "ssh" and fail in argv[-1]:
    marker = os.environ["GCLOUD_RECORD"] + ".failed"
    if not os.path.exists(marker):
        open(marker, "w").close()
        print("Connection to 10.0.0.7 closed by remote host.", file=sys.stderr)
        sys.exit(255)
'''


def _scripts(root):
    folder = root / "tpu"
    return "".join(f"# ===== tpu/{name}\n" + (folder / name).read_text()
                   for name in sorted(os.listdir(folder)) if name.endswith(".sh"))


@pytest.mark.parametrize("sweep_file,golden", [
    ("configs/sweeps/t5_1_1_base_v4.py", "tpu_t5_1_1_base_v4_32.sh"),
    (V5E, "tpu_t5_small_v5e_spot.sh"),
])
def test_scripts_equal_the_golden_files(tmp_path, sweep_file, golden):
    root = tmp_path / "sweep"
    out = sweep_run("--sweep", sweep_file, "--root", str(root), "--backend=tpu_vm", *GIT)
    assert "run them with --execute" in out
    text = _scripts(root).replace(str(root), "/home/me/sweeps/NAME")
    path = os.path.join(GOLDEN, golden)
    if os.environ.get("PRETRAX_UPDATE_GOLDEN"):
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read(), f"{path} differs; PRETRAX_UPDATE_GOLDEN=1 rewrites it"


def _calls(record):
    with open(record) as f:
        return [json.loads(line) for line in f]


def test_scripts_run_against_a_recording_gcloud(tmp_path):
    bin_dir, root, record = tmp_path / "bin", tmp_path / "sweep", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(STAND_IN)
    (bin_dir / "gcloud").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", GCLOUD_RECORD=str(record),
               GCLOUD_FAIL_ONCE="seed=1 ")
    out = sweep_run("--sweep", V5E, "--root", str(root), "--backend=tpu_vm", "--execute", *GIT,
                    env=env)
    assert out.count("finished (exit 0)") == 3, out  # the trap's delete succeeds

    where = ["--project=my-project", "--zone=us-west4-a"]
    calls = _calls(record)
    # Per slice: exists? -> queue -> ACTIVE? -> install -> mount -> train -> delete.
    assert [c[2:4] for c in calls] == 3 * [
        ["queued-resources", "describe"], ["queued-resources", "create"],
        ["queued-resources", "describe"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"],
        ["tpu-vm", "ssh"], ["queued-resources", "delete"]]
    name = "pretrax-t5-small-v5e-2"
    assert calls[14] == ["compute", "tpus", "queued-resources", "describe", name, *where]
    assert calls[15] == ["compute", "tpus", "queued-resources", "create", name,
                         f"--node-id={name}", *where, "--accelerator-type=v5litepod-16",
                         "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]
    assert calls[16][-1] == "--format=value(state.state)"
    assert calls[17][:8] == ["compute", "tpus", "tpu-vm", "ssh", name, *where, "--worker=all"]
    assert calls[17][8] == (
        "--command=set -e; [ -d ~/pretrax ] || git clone -q https://github.com/example/"
        "pretrax.git ~/pretrax; cd ~/pretrax && git fetch -q origin && git checkout -q 6d0d24e"
        " && python3 -m pip install -q -e . 'jax[tpu]>=0.10,<0.13'")
    assert calls[19][8] == (
        "--command=cd ~/pretrax && PRETRAX_JOB_ID=t5_small_v5e/seed=2 "
        "TFDS_DATA_DIR=gs://my-pretrax-bucket/tensorflow_datasets python3 -m launch.train "
        "--config=configs/t5.py:t5_1_1_small --config.data.source=seqio "
        "--config.data.task=pretrax_c4_en_span_corruption --config.checkpoint.every=1000 "
        "--config.seed=2 --workdir=/mnt/gcs/sweeps/t5_small_v5e/seed=2")
    assert calls[20] == ["compute", "tpus", "queued-resources", "delete", name, *where,
                         "--force", "--quiet"]

    # seed=1's ssh lost its worker (exit 255): preempted; retry runs only its slice again.
    status = sweep_run("status", "--root", str(root))
    assert "3 runs: 2 done, 1 preempted" in status
    assert "ssh exit 255" in next(line for line in status.splitlines()
                                  if line.startswith("seed=1 "))
    record.unlink()
    out = sweep_run("retry", "--root", str(root), "--execute", *GIT, env=env)
    assert "pretrax-t5-small-v5e-1: finished (exit 0)" in out and "v5e-0" not in out
    assert {c[4] for c in _calls(record)} == {"pretrax-t5-small-v5e-1"}
    assert "3 runs: 3 done" in sweep_run("status", "--root", str(root))


def test_missing_gcloud_is_a_clear_error(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))
    result = sweep_run("--sweep", V5E, "--root", str(tmp_path / "root"), "--backend=tpu_vm",
                       "--execute", *GIT, env=env, check=False)
    assert result.returncode == 2
    assert "--backend=tpu_vm needs `gcloud` on PATH" in result.stderr
    assert "nothing was started" in result.stderr and not (tmp_path / "root").exists()


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not "
                    "installed; the recording stand-in above still checks the commands")
@pytest.mark.parametrize("sweep_file", ["configs/sweeps/t5_1_1_base_v4.py", V5E])
def test_the_real_gcloud_parses_the_commands(tmp_path, sweep_file):
    """Every non-ssh call for a sweep's first slice gets past the real gcloud's argument parser:
    it stops at 'no active account' (no credentials here), never at an unknown flag."""
    real = shutil.which("gcloud")
    bin_dir, root, record = tmp_path / "bin", tmp_path / "sweep", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(STAND_IN)
    (bin_dir / "gcloud").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", GCLOUD_RECORD=str(record))
    sweep_run("--sweep", sweep_file, "--root", str(root), "--backend=tpu_vm", "--execute",
              *GIT, env=env)
    calls = [c for c in _calls(record) if c[3] != "ssh"]
    calls = calls[:[c[3] for c in calls].index("delete") + 1]  # the first slice's
    assert [c[3] for c in calls if c[3] != "describe"] == ["create", "delete"]
    calls.append(calls[1] + ["--no-such-flag"])  # the control: a call gcloud must refuse
    outputs = []
    for call in calls:
        result = subprocess.run([real, *call], capture_output=True, text=True, timeout=120,
                                env=dict(os.environ, CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
                                         CLOUDSDK_CORE_DISABLE_PROMPTS="1"))
        outputs.append(result.stderr)
    for call, output in zip(calls[:-1], outputs[:-1], strict=True):
        assert "You do not currently have an active account" in output, (call, output)
    assert "unrecognized arguments: --no-such-flag" in outputs[-1]
