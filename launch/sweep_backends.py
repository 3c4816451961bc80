"""Where a sweep's runs execute: ``local`` (subprocesses here) and ``slurm`` (one sbatch job per
run). The Cloud TPU backend, which writes ``gcloud`` commands, is ``launch/sweep_tpu.py``.

Every run executes ``launch.train`` with its locked config
(``--config=configs/resolved.py:RUN/config.json``) and its workdir, so it resumes from the
newest checkpoint there when it is started again, whoever starts it. Every process of a run
gets ``PRETRAX_JOB_ID=SWEEP/RUN``, the job the workdir lock (launch/lock.py) belongs to: the
same for every attempt of the run (a requeued SLURM job, a retry), so it gets through; different
for any other run, so that one is kept out. The sweep itself never starts a run that is queued
or running.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from launch import sweep_spec, sweep_state
from launch.sweep_spec import Run, SweepError

Log = Callable[[str], None]


def train_command(run: Run, python: str) -> list[str]:
    return [python, "-m", "launch.train",
            f"--config=configs/resolved.py:{os.path.join(run.local_dir, 'config.json')}",
            f"--workdir={run.workdir}"]


def run_env(run: Run, sweep_name: str) -> dict[str, str]:
    return {"PRETRAX_JOB_ID": f"{sweep_name}/{run.name}", **run.env()}


def check_binaries(backend: str, names: Sequence[str]) -> None:
    """Fails before anything is written or started when a backend's tool is missing."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise SweepError(
            f"--backend={backend} needs {', '.join(f'`{n}`' for n in missing)} on PATH and "
            f"{'it is' if len(missing) == 1 else 'they are'} not there; nothing was started. "
            + {"slurm": "Run this on a SLURM login node (tests/slurm/up.sh starts a one-node "
                        "cluster on this machine).",
               "tpu_vm": "Install the Google Cloud CLI (https://cloud.google.com/sdk), or "
                         "leave out --execute to only write the commands."}.get(backend, ""))


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _parent(run: Run, runs: Sequence[Run]) -> Run | None:
    return next((r for r in runs if r.name == run.after), None) if run.after else None


# ---------------------------------------------------------------------------------------------
# local: subprocesses on this machine, `parallel` at a time, in the sweep's order.
# ---------------------------------------------------------------------------------------------
def run_local(runs: Sequence[Run], all_runs: Sequence[Run], *, sweep_name: str, python: str,
              parallel: int = 1, log: Log = print) -> dict[str, int | None]:
    """Runs ``runs`` to the end; returns each run's exit code (None: not started)."""
    if parallel < 1:
        raise SweepError(f"--parallel={parallel}; expected >= 1")
    todo = list(runs)
    active: dict[str, tuple[subprocess.Popen, Run, float]] = {}
    codes: dict[str, int | None] = {run.name: None for run in runs}

    def start(run: Run) -> None:
        os.makedirs(sweep_state.job_dir(run), exist_ok=True)
        if os.path.exists(sweep_state.exit_code_path(run)):
            os.remove(sweep_state.exit_code_path(run))
        log_path = os.path.join(sweep_state.job_dir(run), "train.log")
        with open(log_path, "a") as log_file:
            log_file.write(f"== {time.strftime('%F %T')} {shlex.join(train_command(run, python))}"
                           "\n")
            log_file.flush()
            process = subprocess.Popen(
                train_command(run, python), cwd=sweep_spec.REPO, stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT,
                env={**os.environ, **run_env(run, sweep_name)})
        sweep_state.record_job(run, "local", str(process.pid), log=log_path)
        active[run.name] = (process, run, time.time())
        log(f"{run.name}: started (pid {process.pid}, log {log_path})")

    def finish(name: str, code: int) -> None:
        process, run, started_at = active.pop(name)
        codes[name] = code
        with open(sweep_state.exit_code_path(run), "w") as f:
            f.write(f"{code}\n")
        status = sweep_state.run_status(run, {})
        took = f"{time.time() - started_at:.0f}s"
        if status.state == "done":
            log(f"{name}: done in {took} (step {status.step}, loss {status.last.get('loss')})")
        else:
            log(f"{name}: {status.state} after {took} (exit {code}, step {status.step}); "
                f"last lines of {os.path.join(sweep_state.job_dir(run), 'train.log')}:\n"
                + _tail(os.path.join(sweep_state.job_dir(run), "train.log")))

    try:
        while todo or active:
            for run in list(todo):
                if len(active) >= parallel:
                    break
                parent = _parent(run, all_runs)
                if parent is not None and (parent.name in active
                                           or any(r.name == parent.name for r in todo)):
                    continue  # waits for its parent
                todo.remove(run)
                if parent is not None and not sweep_state.is_done(parent):
                    log(f"{run.name}: not started, its parent {parent.name} is not done")
                    continue
                start(run)
            time.sleep(0.2)
            for name, (process, _, _) in list(active.items()):
                if process.poll() is not None:
                    finish(name, process.returncode)
    except KeyboardInterrupt:
        # Ctrl-C reached the runs too (same process group): each saves a checkpoint and exits.
        log("interrupted: waiting for the running runs to save their checkpoints")
        for name, (process, _, _) in list(active.items()):
            finish(name, process.wait())
        raise
    return codes


# ---------------------------------------------------------------------------------------------
# slurm: one sbatch job per run; srun starts one task per host (or per device).
# ---------------------------------------------------------------------------------------------
SLURM_BINARIES = ("sbatch", "squeue", "scontrol")
_SBATCH_FLAGS = ("nodes", "ntasks_per_node", "cpus_per_task", "gpus_per_node", "partition",
                 "time", "account", "qos", "mem", "constraint")


def sbatch_script(run: Run, *, sweep_name: str, python: str) -> str:
    q = shlex.quote
    slurm = run.slurm()
    job_dir = sweep_state.job_dir(run)
    lines = [
        "#!/bin/bash",
        f"# pretrax sweep {sweep_name}, run {run.name} (written by launch.sweep).",
        "# Resubmitting this file (or `python -m launch.sweep retry --root=ROOT`) resumes the run",
        "# from the newest checkpoint in its workdir.",
        f"#SBATCH --job-name={q(f'{sweep_name}/{run.name}')}",
        f"#SBATCH --output={q(os.path.join(job_dir, 'slurm-%j.log'))}",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
    ]
    for key in _SBATCH_FLAGS:
        if slurm[key] is not None:
            lines.append(f"#SBATCH --{key.replace('_', '-')}={q(str(slurm[key]))}")
    lines += [f"#SBATCH {flag}" for flag in slurm["extra"]]
    exit_file = q(sweep_state.exit_code_path(run))
    lines += [
        "set -u",
        f"cd {q(sweep_spec.REPO)}",
        *[f"export {k}={q(v)}" for k, v in run_env(run, sweep_name).items()],
        f"rm -f {exit_file}",
        'echo "== $(date \'+%F %T\') job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on '
        '$SLURM_JOB_NODELIST"',
        "# scancel, requeue and preemption send SIGTERM to every task (each saves a checkpoint",
        "# and exits) and to this script: the trap keeps it alive to record how srun ended.",
        "trap 'echo \"== SIGTERM: the tasks save a checkpoint and stop\"' TERM",
        "srun --kill-on-bad-exit=1 " + shlex.join(train_command(run, python)),
        "code=$?",
        f"echo $code > {exit_file}",
        'echo "== $(date \'+%F %T\') srun exited with $code"',
        "exit $code",
    ]
    return "\n".join(lines) + "\n"


def script_path(run: Run) -> str:
    return os.path.join(sweep_state.job_dir(run), "job.sbatch")


def sbatch_command(run: Run, dependency: str | None) -> list[str]:
    deps = [f"--dependency=afterok:{dependency}", "--kill-on-invalid-dep=yes"] if dependency \
        else []
    return ["sbatch", "--parsable", *deps, script_path(run)]


def slurm_jobs(ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Job id -> (state, reason) for the jobs SLURM still knows (queued, running or recently
    finished; ``MinJobAge`` decides how long finished ones stay)."""
    if not ids or shutil.which("squeue") is None:
        return {}
    result = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%i|%T|%r", "-j",
                             ",".join(sorted(set(ids)))], capture_output=True, text=True)
    jobs = {}
    for line in result.stdout.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        jobs[job_id.strip()] = (state.strip(), reason.strip())
    return jobs


def submit_slurm(runs: Sequence[Run], all_runs: Sequence[Run], *, sweep_name: str, python: str,
                 log: Log = print) -> dict[str, str]:
    """One sbatch per run (children depend on their parent's job); returns name -> job id."""
    submitted: dict[str, str] = {}
    known = slurm_jobs([job["id"] for r in all_runs if (job := sweep_state.read_job(r))
                        and job["backend"] == "slurm"])
    for run in runs:
        dependency = None
        parent = _parent(run, all_runs)
        if parent is not None and parent.name in submitted:
            dependency = submitted[parent.name]
        elif parent is not None:
            status = sweep_state.run_status(parent, known)
            if status.state in ("pending", "running") and status.job:
                dependency = status.job["id"]
            elif status.state != "done":
                log(f"{run.name}: not submitted, its parent {parent.name} is {status.state}")
                continue
        os.makedirs(sweep_state.job_dir(run), exist_ok=True)
        with open(script_path(run), "w") as f:
            f.write(sbatch_script(run, sweep_name=sweep_name, python=python))
        if os.path.exists(sweep_state.exit_code_path(run)):
            os.remove(sweep_state.exit_code_path(run))
        command = sbatch_command(run, dependency)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SweepError(f"{shlex.join(command)} failed: {result.stderr.strip()} (submitted "
                             f"before it: {sorted(submitted) or 'none'})")
        job_id = result.stdout.strip().split(";")[0]
        submitted[run.name] = job_id
        sweep_state.record_job(run, "slurm", job_id, script=script_path(run))
        log(f"{run.name}: submitted as SLURM job {job_id}"
            + (f" (after job {dependency})" if dependency else "")
            + f", log {os.path.join(sweep_state.job_dir(run), f'slurm-{job_id}.log')}")
    return submitted


def default_python() -> str:
    return sys.executable
