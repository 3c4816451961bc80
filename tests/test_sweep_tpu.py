"""The tpu_vm backend: golden gcloud scripts, and the scripts run against a recording gcloud.

No cloud is reachable here, so (1) the scripts written for the two shipped TPU sweeps must equal
tests/golden/ (read them: they are what a TPU user runs; PRETRAX_UPDATE_GOLDEN=1 rewrites
them), and (2) ``--execute`` runs them with a stand-in ``gcloud`` first on PATH that records
its arguments, as bash parsed them, and answers like gcloud: no such slice yet, queued resource
ACTIVE, ssh exit 0 (or 255 once, as when a spot slice is taken back; or another code). (3) A
sweep with a fine-tuning stage runs each fine-tune only after its pretraining run is done, and
(4) the install command, run by a shell against stand-ins for git, curl and uv, makes a Python
3.11 venv once and reuses it on a rerun.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from launch import sweep_spec, sweep_tpu
from launch.sweep_spec import Sweep, SweepError
from tests.helpers import sweep_run

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
GIT = ("--git_url=https://github.com/example/pretrax.git", "--git_ref=6d0d24e")
V5E = "configs/sweeps/t5_small_v5e_spot.py"

STAND_IN = f'''#!{sys.executable}
import json, os, sys, time

argv = sys.argv[1:]
record = os.environ["GCLOUD_RECORD"]
with open(record, "a") as f:
    f.write(json.dumps(argv) + "\\n")
if argv[3] == "describe":  # gcloud compute tpus (tpu-vm|queued-resources) describe NAME
    if any(a.startswith("--format=") for a in argv):
        print("ACTIVE")
        sys.exit(0)
    sys.exit(1)  # no such slice yet
# GCLOUD_HOLD="A|B": an ssh running A returns only once one running B has been called.
hold, _, until = os.environ.get("GCLOUD_HOLD", "").partition("|")
if hold and argv[3] == "ssh" and hold in argv[-1]:
    deadline = time.time() + 120
    while not any(until in call[-1] for call in map(json.loads, open(record))):
        if time.time() > deadline:
            with open(record, "a") as f:
                f.write(json.dumps(["TIMEOUT", hold, until]) + "\\n")
            break
        time.sleep(0.1)
fail = os.environ.get("GCLOUD_FAIL_ONCE")
if fail and argv[3] == "ssh" and fail in argv[-1]:
    marker = record + ".failed"
    if not os.path.exists(marker):
        open(marker, "w").close()
        code = int(os.environ.get("GCLOUD_FAIL_CODE", "255"))
        print("Connection to 10.0.0.7 closed by remote host." if code == 255
              else "Traceback (most recent call last): ...", file=sys.stderr)
        sys.exit(code)
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


def _stand_in(tmp_path, **env):
    """The environment that puts the recording gcloud first on PATH; its record file."""
    bin_dir, record = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(STAND_IN)
    (bin_dir / "gcloud").chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", GCLOUD_RECORD=str(record),
                **env), record


INSTALL = (
    "set -e; [ -d ~/pretrax ] || git clone -q https://github.com/example/pretrax.git ~/pretrax; "
    "cd ~/pretrax; git fetch -q origin; git checkout -q 6d0d24e; [ -x ~/.local/bin/uv ] || { curl "
    "-LsSf https://astral.sh/uv/install.sh -o /tmp/uv-install.sh && UV_UNMANAGED_INSTALL="
    "~/.local/bin sh /tmp/uv-install.sh; }; [ -x "
    "~/pretrax-py3.11/bin/python ] || ~/.local/bin/uv venv -q --python 3.11 ~/pretrax-py3.11; "
    "~/.local/bin/uv pip install -q --python ~/pretrax-py3.11/bin/python -e . "
    "'jax[tpu]>=0.10,<0.13'")


def test_scripts_run_against_a_recording_gcloud(tmp_path):
    root = tmp_path / "sweep"
    env, record = _stand_in(tmp_path, GCLOUD_FAIL_ONCE="seed=1 ")
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
    assert calls[17][8] == "--command=" + INSTALL
    assert calls[19][8] == (
        "--command=cd ~/pretrax && PRETRAX_JOB_ID=t5_small_v5e/seed=2 "
        "TFDS_DATA_DIR=gs://my-pretrax-bucket/tensorflow_datasets "
        "~/pretrax-py3.11/bin/python -m launch.train "
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


# ---------------------------------------------------------------------------------------------
# Stages: a fine-tune starts from its pretraining run's newest checkpoint, so only once that run
# is done.
# ---------------------------------------------------------------------------------------------
TWO_STAGES = """
from launch.sweep_spec import Stage, Sweep, seeds

TPU = {{"tpu.project": "p", "tpu.zone": "us-central2-b", "tpu.accelerator_type": "v4-8",
        "tpu.version": "tpu-ubuntu2204-base", "tpu.workdir_root": {workdirs!r},
        "tpu.setup": ("mountpoint -q /mnt/gcs || (sudo mkdir -p /mnt/gcs && sudo gcsfuse "
                      "--uid=$(id -u) --gid=$(id -g) --rename-dir-limit=200000 "
                      "--implicit-dirs -o allow_other b /mnt/gcs)",),
        **{extra!r}}}


def get_sweep():
    return Sweep(name="ft", config="configs/t5.py:tiny", fixed=TPU, axes=seeds({seeds}),
                 stages=[Stage("finetune", "configs/t5.py:tiny", fixed=TPU)])
"""


def _two_stages(tmp_path, seeds=1, **extra):
    """The sweep file, and its root; the workdirs (the bucket) are not mounted here."""
    path = tmp_path / "ft.py"
    path.write_text(TWO_STAGES.format(workdirs=str(tmp_path / "bucket"), seeds=seeds,
                                      extra=extra))
    return str(path), tmp_path / "sweep"


def _span(calls, name):
    """(first, last) index of the calls about slice ``name``."""
    at = [i for i, call in enumerate(calls) if len(call) > 4 and call[4] == name]
    return at[0], at[-1]


def test_a_fine_tune_waits_until_its_pretraining_run_is_done(tmp_path):
    sweep_file, root = _two_stages(tmp_path)
    env, record = _stand_in(tmp_path, GCLOUD_FAIL_ONCE="PRETRAX_JOB_ID=ft/pretrain/seed=0 ",
                            GCLOUD_FAIL_CODE="1")
    result = sweep_run("--sweep", sweep_file, "--root", str(root), "--backend=tpu_vm",
                       "--execute", *GIT, env=env, check=False)
    # The pretraining run fails (exit 1): its fine-tune's slice is never created.
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pretrax-ft-0: finished" in result.stdout
    assert ("pretrax-ft-1: not started: it waits for run pretrain/seed=0 (failed, exit 1); "
            f"`python -m launch.sweep retry --root={root} --execute` retries it and then starts "
            "this slice") in result.stdout
    assert {c[4] for c in _calls(record)} == {"pretrax-ft-0"}
    status = sweep_run("status", "--root", str(root))
    assert "2 runs: 1 pending, 1 failed" in status

    # Run by hand, the fine-tune's script refuses too, before it creates anything.
    record.unlink()
    by_hand = subprocess.run(["bash", str(root / "tpu" / "pretrax-ft-1.sh")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert by_hand.returncode == 3
    assert "not started: run pretrain/seed=0 has not finished" in by_hand.stderr
    assert not record.exists()

    # retry: the pretraining run succeeds now, then its fine-tune runs, from its workdir.
    out = sweep_run("retry", "--root", str(root), "--execute", *GIT, env=env)
    assert "pretrax-ft-0: finished (exit 0)" in out and "pretrax-ft-1: finished (exit 0)" in out
    calls = _calls(record)
    assert _span(calls, "pretrax-ft-0")[1] < _span(calls, "pretrax-ft-1")[0]
    # The setup's $(id -u) reaches gcloud as written: the ssh user's shell on the worker
    # expands it (not bash here, not root under sudo).
    setup = [c for c in calls if c[3] == "ssh" and "gcsfuse" in c[-1]]
    assert setup[0][-1].endswith("sudo gcsfuse --uid=$(id -u) --gid=$(id -g) "
                                 "--rename-dir-limit=200000 --implicit-dirs -o allow_other b "
                                 "/mnt/gcs)")
    train = [c[-1] for c in calls if c[3] == "ssh" and "launch.train" in c[-1]]
    assert len(train) == 2 and "PRETRAX_JOB_ID=ft/finetune/seed=0 " in train[1]
    assert f"--config.train.init_from={tmp_path}/bucket/ft/pretrain/seed=0 " in train[1]
    assert "2 runs: 2 done" in sweep_run("status", "--root", str(root))


def _saved_last_step(tmp_path, root):
    """Makes the pretraining run of _two_stages look as if it saved its last step."""
    with open(root / "pretrain" / "seed=0" / "config.json") as f:
        steps = json.load(f)["train"]["steps"]
    workdir = tmp_path / "bucket" / "ft" / "pretrain" / "seed=0"
    (workdir / "checkpoints" / str(steps)).mkdir(parents=True)
    (workdir / "metrics.jsonl").write_text(json.dumps({"step": steps, "loss": 1.0}) + "\n")


def test_a_parent_that_saved_its_last_step_and_then_failed_is_done(tmp_path):
    """The scheduler's rule (final checkpoint and metrics: done, whatever the exit code) is the
    one that decides; the script's own exit-code guard does not overrule it."""
    sweep_file, root = _two_stages(tmp_path)
    env, record = _stand_in(tmp_path, GCLOUD_FAIL_ONCE="PRETRAX_JOB_ID=ft/pretrain/seed=0 ",
                            GCLOUD_FAIL_CODE="1")
    sweep_run("--sweep", sweep_file, "--root", str(root), "--backend=tpu_vm", "--execute",
              *GIT, env=env, check=False)
    _saved_last_step(tmp_path, root)  # then crashed on the way out (exit 1 recorded)
    assert "1 done" in sweep_run("status", "--root", str(root))
    record.unlink()
    out = sweep_run("launch", "--root", str(root), "--execute", *GIT, env=env)
    assert "pretrax-ft-1: finished (exit 0)" in out and "pretrax-ft-0" not in out
    train = [c[-1] for c in _calls(record) if c[3] == "ssh" and "launch.train" in c[-1]]
    assert len(train) == 1 and "PRETRAX_JOB_ID=ft/finetune/seed=0 " in train[0]


def test_a_fine_tune_its_slice_skipped_runs_once_its_parent_counts_as_done(tmp_path):
    """On one slice, the script skips the fine-tune when the parent exits non-zero; if the
    parent had saved its last step (done by the scheduler's rule), retry starts the fine-tune
    alone (before, neither retry nor launch ever started it)."""
    sweep_file, root = _two_stages(tmp_path, **{"tpu.slice": "ft-both"})
    env, record = _stand_in(tmp_path, GCLOUD_FAIL_ONCE="PRETRAX_JOB_ID=ft/pretrain/seed=0 ",
                            GCLOUD_FAIL_CODE="1")
    sweep_run("--sweep", sweep_file, "--root", str(root), "--backend=tpu_vm", "--execute",
              *GIT, env=env)
    _saved_last_step(tmp_path, root)
    status = sweep_run("status", "--root", str(root))
    assert "2 runs: 1 pending, 1 done" in status
    assert "not started: run pretrain/seed=0 did not exit 0" in status
    record.unlink()
    out = sweep_run("retry", "--root", str(root), "--execute", *GIT, env=env)
    assert "finished (exit 0)" in out
    train = [c[-1] for c in _calls(record) if c[3] == "ssh" and "launch.train" in c[-1]]
    assert len(train) == 1 and "PRETRAX_JOB_ID=ft/finetune/seed=0 " in train[0]
    assert "2 runs: 2 done" in sweep_run("status", "--root", str(root))


def test_a_fine_tune_on_its_pretraining_runs_slice_runs_only_after_it_succeeded(tmp_path):
    sweep_file, root = _two_stages(tmp_path, **{"tpu.slice": "ft-both"})
    env, record = _stand_in(tmp_path, GCLOUD_FAIL_ONCE="PRETRAX_JOB_ID=ft/pretrain/seed=0 ",
                            GCLOUD_FAIL_CODE="1")
    out = sweep_run("--sweep", sweep_file, "--root", str(root), "--backend=tpu_vm",
                    "--execute", *GIT, env=env)
    assert "ft-both: finished (exit 0)" in out
    train = [c[-1] for c in _calls(record) if c[3] == "ssh" and "launch.train" in c[-1]]
    assert len(train) == 1 and "PRETRAX_JOB_ID=ft/pretrain/seed=0 " in train[0]
    assert ("finetune/seed=0: not started, run pretrain/seed=0 did not exit 0"
            in (root / "tpu" / "ft-both.log").read_text())
    status = sweep_run("status", "--root", str(root))
    assert "2 runs: 1 pending, 1 failed" in status
    assert "not started: run pretrain/seed=0 did not exit 0" in status

    record.unlink()
    sweep_run("retry", "--root", str(root), "--execute", *GIT, env=env)
    train = [c[-1] for c in _calls(record) if c[3] == "ssh" and "launch.train" in c[-1]]
    assert [t.split("PRETRAX_JOB_ID=")[1].split()[0] for t in train] == [
        "ft/pretrain/seed=0", "ft/finetune/seed=0"]
    assert "2 runs: 2 done" in sweep_run("status", "--root", str(root))


def test_parallel_slices_start_when_the_runs_they_wait_for_are_done(tmp_path):
    """--parallel=2, two pretraining runs, each with a fine-tune. pretrain/seed=0 trains until
    finetune/seed=1 has started: that one must not wait for it (only for pretrain/seed=1),
    and finetune/seed=0 must wait for it."""
    sweep_file, root = _two_stages(tmp_path, seeds=2)
    env, record = _stand_in(tmp_path, GCLOUD_HOLD="PRETRAX_JOB_ID=ft/pretrain/seed=0 |"
                                                  "PRETRAX_JOB_ID=ft/finetune/seed=1 ")
    out = sweep_run("--sweep", sweep_file, "--root", str(root), "--backend=tpu_vm",
                    "--execute", "--parallel=2", *GIT, env=env)
    assert out.count("finished (exit 0)") == 4, out
    calls = _calls(record)
    assert not [c for c in calls if c[0] == "TIMEOUT"]
    # Slices 0, 1: pretrain/seed=0, =1; 2, 3: finetune/seed=0, =1.
    spans = [_span(calls, f"pretrax-ft-{i}") for i in range(4)]
    assert spans[0][1] < spans[2][0] and spans[1][1] < spans[3][0]
    assert spans[1][0] < spans[0][1] and spans[3][0] < spans[0][1]  # 2 at a time, as asked
    assert max(sum(first <= i <= last for first, last in spans)
               for i in range(len(calls))) == 2
    assert "4 runs: 4 done" in sweep_run("status", "--root", str(root))


def test_slices_that_wait_for_each_other_are_refused():
    def run(name, slice_, after=None):
        return sweep_spec.Run(name, "c", {}, {"tpu.zone": "z", "tpu.accelerator_type": "v4-8",
                                               "tpu.version": "v", "tpu.slice": slice_},
                              f"/w/{name}", f"/l/{name}", after)

    runs = [run("p/a", "one"), run("p/b", "two"), run("f/a", "two", "p/a"),
            run("f/b", "one", "p/b")]
    with pytest.raises(SweepError, match="slices one -> two -> one wait for each other"):
        sweep_tpu.slices(runs, runs, "s")
    runs[3] = run("f/b", "three", "p/b")  # one -> nothing; two -> one; three -> two: fine
    assert list(sweep_tpu.slices(runs, runs, "s")) == ["one", "two", "three"]


# ---------------------------------------------------------------------------------------------
# The workers' Python: a uv venv of tpu.python (jax >= 0.10 needs >= 3.11).
# ---------------------------------------------------------------------------------------------
def _expand(tmp_path, **settings):
    tpu = {"tpu.zone": "z", "tpu.accelerator_type": "v4-8", "tpu.version": "v",
           "tpu.workdir_root": "/mnt/gcs", **settings}
    return sweep_spec.expand(Sweep("s", "configs/t5.py:tiny", fixed=tpu), tmp_path)


def test_the_workers_python_is_a_setting(tmp_path):
    runs = _expand(tmp_path, **{"tpu.python": "3.12"})
    text = sweep_tpu.script("s-0", runs, "s", "https://example.org/p.git", "abc", str(tmp_path))
    assert ("uv venv -q --python 3.12 ~/pretrax-py3.12; ~/.local/bin/uv pip install -q "
            "--python ~/pretrax-py3.12/bin/python -e ." in text)
    assert " ~/pretrax-py3.12/bin/python -m launch.train " in text and "python3 -m" not in text
    for bad in ("3.10", 3.11, "python3"):
        with pytest.raises(SweepError, match=r"tpu.python=.*expected a CPython version >= "
                                             r"3.11 as a string"):
            runs = _expand(tmp_path / str(bad), **{"tpu.python": bad})
            sweep_tpu.slices(runs, runs, "s")


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_the_install_makes_a_python_3_11_venv_once(tmp_path, shell):
    """The install command, run twice by the worker's shell (a rerun on the same slice) with
    stand-ins for git, curl (serving uv's installer) and uv: uv is installed and the venv made
    once; every later command runs with the venv's python."""
    home, bin_dir, log = tmp_path / "home", tmp_path / "bin", tmp_path / "log"
    home.mkdir()
    bin_dir.mkdir()
    uv = textwrap.dedent(f"""\
        #!{sys.executable}
        import os, sys
        open({str(log)!r}, "a").write("uv " + " ".join(sys.argv[1:]) + "\\n")
        if sys.argv[1] == "venv":
            os.makedirs(os.path.join(sys.argv[-1], "bin"))
            python = os.path.join(sys.argv[-1], "bin", "python")
            open(python, "w").close()
            os.chmod(python, 0o755)
        """)
    stubs = {  # uv's installer, as curl serves it, puts uv where UV_UNMANAGED_INSTALL says
        "git": f'echo "git $*" >> {log}; [ "$1" != clone ] || mkdir -p "$4"',
        "curl": f'echo "curl $*" >> {log}; while [ "$1" != -o ]; do shift; done; '
                f'cat {bin_dir}/installer.sh > "$2"',
        "installer.sh": f'mkdir -p "$UV_UNMANAGED_INSTALL"; cp {bin_dir}/uv.real '
                        '"$UV_UNMANAGED_INSTALL/uv"',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (bin_dir / "uv.real").write_text(uv)
    (bin_dir / "uv.real").chmod(0o755)
    runs = _expand(tmp_path)
    command = sweep_tpu.install_command(runs[0].tpu(), "https://github.com/example/pretrax.git",
                                        "6d0d24e")
    assert command == INSTALL
    env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    for _ in range(2):
        result = subprocess.run([shell, "-c", command], env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
    venv = f"{home}/pretrax-py3.11"
    pip = (f"uv pip install -q --python {venv}/bin/python -e . jax[tpu]>=0.10,<0.13")
    assert log.read_text().splitlines() == [
        f"git clone -q https://github.com/example/pretrax.git {home}/pretrax",
        "git fetch -q origin", "git checkout -q 6d0d24e",
        "curl -LsSf https://astral.sh/uv/install.sh -o /tmp/uv-install.sh",
        f"uv venv -q --python 3.11 {venv}", pip,
        # the rerun: the same commit, nothing reinstalled but pretrax itself
        "git fetch -q origin", "git checkout -q 6d0d24e", pip]
    assert os.access(home / ".local" / "bin" / "uv", os.X_OK)


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
