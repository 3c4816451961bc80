"""What a sweep has written and what its runs are doing: the manifest, job records, run states.

Files (``ROOT`` is ``--root``; ``RUN`` a run's directory under it)::

    ROOT/sweep.json          the expanded runs (names, overrides, settings, workdirs, order)
    RUN/config.json          the run's resolved config, written before anything starts
    RUN/sweep/job.json       the latest submission: backend, job id (pid or SLURM id), host
    RUN/sweep/jobs.jsonl     every submission, oldest first
    RUN/sweep/exit_code      how the latest attempt ended (absent while running or if killed)
    RUN/sweep/*.log          the run's output (train.log locally, slurm-JOBID.log on SLURM)

A run's state comes from these and from the run's own files (no accounting database):

- ``done``: ``metrics.jsonl`` reached ``config.train.steps`` and that step's checkpoint exists;
- ``pending`` / ``running``: its job is queued / running (``squeue``, or a live local pid);
  a run never submitted is ``pending`` too;
- ``failed``: the last attempt exited with an error (divergence, an exception);
- ``preempted``: the last attempt stopped before the end without an error of its own: SIGTERM
  (the trainer saves and exits 0), SIGKILL, a cancelled, timed-out or requeued job, a node
  failure. ``retry`` resubmits ``failed`` and ``preempted`` runs; both resume from their
  checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from launch import metrics as metrics_lib
from launch import sweep_spec

MANIFEST = "sweep.json"
JOB_DIR = "sweep"
EXIT_CODE = "exit_code"  # in the job dir: the run's exit code, written by its job
NOT_STARTED = "not_started"  # in the job dir: why its job did not start it (a parent failed)
STATES = ("pending", "running", "done", "failed", "preempted")
# SLURM job states (squeue -t all) -> ours. Finished states only matter when no exit_code file
# says more (the batch script was killed before it could write one).
SLURM_STATES = {
    **dict.fromkeys(("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                     "RESV_DEL_HOLD", "SPECIAL_EXIT"), "pending"),
    **dict.fromkeys(("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING",
                     "SUSPENDED", "STOPPED"), "running"),
    **dict.fromkeys(("CANCELLED", "PREEMPTED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL",
                     "DEADLINE", "COMPLETED"), "preempted"),
    **dict.fromkeys(("FAILED", "OUT_OF_MEMORY"), "failed"),
}
SIGNAL_EXITS = (0, 128 + 9, 128 + 15)  # stopped by the trainer's SIGTERM handler, SIGKILL, SIGTERM


# ---------------------------------------------------------------------------------------------
# The manifest.
# ---------------------------------------------------------------------------------------------
def write_manifest(root: str, sweep_file: str, name: str, backend: str,
                   runs: list[sweep_spec.Run]) -> str:
    path = os.path.join(root, MANIFEST)
    os.makedirs(root, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"sweep_file": os.path.abspath(sweep_file), "name": name, "backend": backend,
                   "runs": [run.to_json() for run in runs]}, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_manifest(root: str) -> tuple[dict[str, Any], list[sweep_spec.Run]]:
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        raise sweep_spec.SweepError(f"{path} not found: --root is not an expanded sweep "
                                    "(expand one with --sweep=FILE --root=DIR)")
    with open(path) as f:
        manifest = json.load(f)
    return manifest, [sweep_spec.Run(**fields) for fields in manifest["runs"]]


def check_unchanged(run: sweep_spec.Run, config_json: str) -> None:
    """A started run keeps the config it started with; re-expanding must not change it."""
    path = os.path.join(run.local_dir, "config.json")
    if not os.path.isfile(path) or not started(run):
        return
    with open(path) as f:
        old = f.read()
    if old != config_json:
        old_flat, new_flat = _flatten(json.loads(old)), _flatten(json.loads(config_json))
        changed = sorted(k for k in old_flat.keys() | new_flat.keys()
                         if old_flat.get(k) != new_flat.get(k))
        raise sweep_spec.SweepError(
            f"run {run.name} was started with a different config ({', '.join(changed[:5])}: "
            f"{path} has {[old_flat.get(k) for k in changed[:5]]}, the sweep now gives "
            f"{[new_flat.get(k) for k in changed[:5]]}); use a new --root, or delete "
            f"{run.local_dir} to start it again")


def _flatten(tree: Mapping[str, Any], prefix: str = "config.") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ---------------------------------------------------------------------------------------------
# Job records.
# ---------------------------------------------------------------------------------------------
def job_dir(run: sweep_spec.Run) -> str:
    return os.path.join(run.local_dir, JOB_DIR)


def record_job(run: sweep_spec.Run, backend: str, job_id: str, **extra: Any) -> None:
    os.makedirs(job_dir(run), exist_ok=True)
    attempt = len(_read_jsonl(os.path.join(job_dir(run), "jobs.jsonl"))) + 1
    record = {"backend": backend, "id": str(job_id), "host": socket.gethostname(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "attempt": attempt, **extra}
    with open(os.path.join(job_dir(run), "jobs.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    with open(os.path.join(job_dir(run), "job.json"), "w") as f:
        json.dump(record, f)


def read_job(run: sweep_spec.Run) -> dict[str, Any] | None:
    path = os.path.join(job_dir(run), "job.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def job_file(run_name: str, name: str) -> str:
    """Job file ``name`` of run ``run_name``, relative to the sweep root (a run's local_dir
    is ROOT/NAME): for scripts that address it from the root."""
    return os.path.join(run_name, JOB_DIR, name)


def exit_code_path(run: sweep_spec.Run) -> str:
    return os.path.join(job_dir(run), EXIT_CODE)


def not_started(run: sweep_spec.Run) -> str | None:
    """Why the run's job skipped it (its parent had not succeeded), if it did."""
    try:
        with open(os.path.join(job_dir(run), NOT_STARTED)) as f:
            return f.read().strip() or "its job did not start it"
    except OSError:
        return None


def read_exit_code(run: sweep_spec.Run) -> int | None:
    try:
        with open(exit_code_path(run)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def started(run: sweep_spec.Run) -> bool:
    return read_job(run) is not None or os.path.isfile(
        os.path.join(run.workdir, metrics_lib.METRICS_FILE))


# ---------------------------------------------------------------------------------------------
# States.
# ---------------------------------------------------------------------------------------------
def total_steps(run: sweep_spec.Run) -> int | None:
    path = os.path.join(run.local_dir, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)["train"]["steps"]


def is_done(run: sweep_spec.Run, records: list[dict[str, Any]] | None = None) -> bool:
    steps = total_steps(run)
    if records is None:
        records = metrics_lib.read_metrics(run.workdir)
    reached = any(r.get("step") == steps and "loss" in r for r in records)
    return reached and os.path.isdir(os.path.join(run.workdir, "checkpoints", str(steps)))


def pid_alive(job: Mapping[str, Any], pid: Any, needle: str) -> bool:
    """A process started here still runs (same host, and its command line holds ``needle``)."""
    if job.get("host") != socket.gethostname():
        return False
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            return needle.encode() in f.read()
    except (OSError, ValueError, TypeError):
        return False


@dataclasses.dataclass
class RunStatus:
    run: sweep_spec.Run
    state: str
    step: int | None
    total: int | None
    last: dict[str, Any]  # the newest training record
    last_eval: dict[str, Any]  # the newest evaluation record
    records: list[dict[str, Any]]
    job: dict[str, Any] | None
    detail: str = ""  # why: the SLURM state and reason, the exit code


def skipped_by_job(status: RunStatus) -> bool:
    """Pending because its job skipped it (a parent had not succeeded): retry starts it."""
    return status.state == "pending" and not_started(status.run) is not None


def never_started(status: RunStatus) -> bool:
    """Pending and never started: not submitted, or skipped by its job."""
    return status.state == "pending" and (status.job is None or skipped_by_job(status))


def run_status(run: sweep_spec.Run, slurm_jobs: Mapping[str, tuple[str, str]]) -> RunStatus:
    """``slurm_jobs``: job id -> (SLURM state, reason) from ``squeue -t all``."""
    records = metrics_lib.read_metrics(run.workdir)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    job = read_job(run)
    status = RunStatus(run, "pending", train[-1]["step"] if train else None, total_steps(run),
                       train[-1] if train else {}, evals[-1] if evals else {}, records, job)
    if is_done(run, records):
        status.state = "done"
        return status
    if job is None:
        status.detail = "not submitted"
        return status
    code = read_exit_code(run)
    if job["backend"] == "slurm" and job["id"] in slurm_jobs:
        slurm_state, reason = slurm_jobs[job["id"]]
        status.detail = f"slurm {slurm_state}" + (f" ({reason})" if reason not in (
            "None", "") else "")
        state = SLURM_STATES.get(slurm_state.split()[0].rstrip("+"), "failed")
        if state in ("pending", "running") or code is None:
            status.state = state
            return status
    elif job["backend"] == "local" and pid_alive(job, job["id"], run.workdir):
        status.state, status.detail = "running", f"pid {job['id']}"
        return status
    elif job["backend"] == "tpu_vm":
        if pid_alive(job, job.get("pid"), job.get("script", "")):
            status.state, status.detail = "running", f"slice {job['id']}"
            return status
        if code == 255:  # ssh lost the worker: a spot slice taken back, a maintenance event
            status.state, status.detail = "preempted", f"slice {job['id']}: ssh exit 255"
            return status
        if code == 0 and not os.path.isdir(run.workdir):
            status.state = "done"
            status.detail = f"slice {job['id']}: exit 0 (the workdir is not mounted here)"
            return status
    skipped = not_started(run) if code is None else None
    if skipped:
        status.state, status.detail = "pending", f"not started: {skipped}"
    elif code is None:
        status.state, status.detail = "preempted", status.detail or "killed (no exit code)"
    else:
        status.state = "preempted" if code in SIGNAL_EXITS else "failed"
        status.detail = status.detail or f"exit {code}"
    return status
