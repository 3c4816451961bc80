"""One job per workdir: a lock owned by the JOB, kept alive by a heartbeat.

All processes of a multi-host job open the same workdir, and a requeued SLURM job may restart
on another host where the old pid means nothing, so the lock names a job, not a process:

- the job id is ``PRETRAX_JOB_ID`` if set (sweeps set it per run), else ``SLURM_JOB_ID``
  (unchanged when SLURM requeues the job), else ``host:pid`` of process 0;
- process 0 writes ``WORKDIR/lock.json`` ({job, host, pid, since, heartbeat}) and refreshes
  ``heartbeat`` every ``heartbeat_seconds`` from a daemon thread;
- a start finds the lock free when there is no lock file, when the file names the same job
  (a requeued or retried job of this run gets through), when its heartbeat is older than
  ``stale_seconds`` (taken over with a warning), or when it was written on this host by a pid
  that no longer exists (a killed run); otherwise it refuses with a sentence naming the
  running job;
- the lock file is removed when the run ends (normally or by an exception).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

LOCK_FILE = "lock.json"


class WorkdirBusy(RuntimeError):
    """Another job holds the workdir."""


def job_id() -> str:
    return (os.environ.get("PRETRAX_JOB_ID") or os.environ.get("SLURM_JOB_ID")
            or f"{socket.gethostname()}:{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, OSError):
        return {}  # unreadable (e.g. a torn write): treated as stale


class WorkdirLock:
    """``with WorkdirLock(workdir): ...`` (process 0 only; see the module docstring)."""

    def __init__(self, workdir: str, heartbeat_seconds: float = 30.0,
                 stale_seconds: float = 300.0, log=print):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.heartbeat_seconds, self.stale_seconds = heartbeat_seconds, stale_seconds
        self.log = log
        self.record = {"job": job_id(), "host": socket.gethostname(), "pid": os.getpid(),
                       "since": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({**self.record, "heartbeat": time.time()}, f)
        os.replace(tmp, self.path)

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        held = _read(self.path)
        if held:
            age = time.time() - float(held.get("heartbeat", 0))
            same_job = held.get("job") == self.record["job"]
            dead_here = (held.get("host") == self.record["host"]
                         and not _pid_alive(int(held.get("pid", -1))))
            if same_job:
                pass  # a requeued / retried job of this run
            elif dead_here or age > self.stale_seconds:
                why = ("its process is gone" if dead_here
                       else f"no heartbeat for {age:.0f} s > {self.stale_seconds:.0f} s")
                self.log(f"WARNING: taking over the lock of job {held.get('job')} on "
                         f"{self.path} ({why})")
            else:
                since = time.strftime("%Y-%m-%d %H:%M:%S",
                                      time.localtime(float(held.get("since", 0))))
                raise WorkdirBusy(
                    f"{os.path.dirname(self.path)} is in use by job {held.get('job')} on host "
                    f"{held.get('host')} (pid {held.get('pid')}) since {since}, heartbeat "
                    f"{age:.0f} s ago. Wait for it or stop it; a lock whose heartbeat stops for "
                    f"{self.stale_seconds:.0f} s is taken over automatically.")
        self._write()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="workdir-lock")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self._write()
            except OSError:
                pass  # a full disk must not kill the run; the next beat retries

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = _read(self.path)
        if held and held.get("job") == self.record["job"] and held.get("pid") == os.getpid():
            os.remove(self.path)

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
