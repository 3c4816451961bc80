"""A multi-process job whose peer dies ends with one sentence, not a C++ stack dump.

When one process of a ``jax.distributed`` job dies (killed, preempted, out of memory), the
others learn it from JAX's coordination service: process 0 hosts the service and marks a
process whose heartbeats stopped as failed after ``config.distributed.heartbeat_timeout``
seconds; every process polls the service for errors and, when the coordinator itself is gone,
fails its next poll at once. Either way jaxlib ends the process from a C++ thread with SIGABRT
and a check-failure stack trace. jaxlib does take a ``missed_heartbeat_callback``, but it calls
it with an ``absl::Status`` that has no Python type, so a Python callback dies with
``std::bad_cast`` before it runs: the abort cannot be intercepted inside the process.

So ``launch.train`` runs the trainer of a multi-process job in a child process and watches it
(:func:`run`): the child's stdout passes through untouched, its stderr is relayed line by line
until the first line of the distributed runtime's failure path; from there on stderr goes to
``WORKDIR/logs/process{K}.stderr.txt`` only. When the child dies that way the watcher prints

    ERROR: process 1 of 2 stopped responding (...) at step 37. Newest checkpoint: step 30 in
    DIR/checkpoints. Restart every process with the same command to resume from step 30; ...

and exits with code 3, within the heartbeat timeout of the death (at once when the coordinator
died). The watcher forwards SIGTERM/SIGINT to the child (which saves and exits 0 as ever) and
the child dies with the watcher (``PR_SET_PDEATHSIG``), so a killed watcher is a killed process.
The child reports its process index and step through a small file (:func:`note_step`).
``--config.distributed.supervise=false`` runs the trainer in the launching process instead.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

CHILD_ENV = "PRETRAX_SUPERVISED_PROGRESS"  # set in the child: the progress file's path
PEER_LOST_EXIT = 3

# The first stderr line of the runtime's failure path: an error-level glog line from the
# coordination service, its agent or the preemption sync manager, a failed gloo collective,
# and what the abort itself prints.
_FAILURE = re.compile(
    r"^[EFW]\d{4} .*(coordination_service|preemption_sync_manager|client\.h)"
    r"|Gloo \w+ failed|stopped sending heartbeats|Terminating process because"
    r"|terminate called after|\*\*\* Check failure|^pretrax-peer-lost:")
_UNHEALTHY = re.compile(r"unhealthy \(stopped sending heartbeats\):\s*([\d\s,]+)")


# ---------------------------------------------------------------------------------------------
# The child's side.
# ---------------------------------------------------------------------------------------------
def is_child() -> bool:
    return bool(os.environ.get(CHILD_ENV))


def die_with_parent() -> None:
    """The kernel kills this process when the watcher dies (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_progress: dict[str, Any] = {}
_progress_fd: int | None = None  # the progress file, opened once by note_start


def note_start(process: int, processes: int, coordinator: str) -> None:
    """Called once the process group exists (a no-op outside a watched child)."""
    global _progress_fd
    path = os.environ.get(CHILD_ENV)
    if not path:
        return
    _progress.update(process=process, processes=processes, coordinator=coordinator, step=None)
    _progress_fd = os.open(path, os.O_WRONLY)
    _write_progress()


def note_step(step: int) -> None:
    """Called after every step: one in-place write of a few bytes (no open/close), a no-op
    outside a watched child."""
    if _progress_fd is not None:
        _progress["step"] = step
        _write_progress()


def _write_progress() -> None:
    data = json.dumps(_progress).encode()
    os.pwrite(_progress_fd, data, 0)
    os.ftruncate(_progress_fd, len(data))


def is_collective_failure(error: BaseException) -> bool:
    """A Python error raised because a peer or the coordinator went away mid-collective."""
    text = str(error)
    return ("Gloo" in text and "failed" in text) or "coordination service" in text.lower() \
        or "Socket closed" in text


def peer_lost(error: BaseException, heartbeat_timeout: int) -> None:
    """The trainer's collective failed: mark it for the watcher, then give the coordination
    service the heartbeat timeout to say which process died (it ends this process itself)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    print(f"pretrax-peer-lost: {first}", file=sys.stderr, flush=True)
    time.sleep(heartbeat_timeout + 15)
    os._exit(PEER_LOST_EXIT)


# ---------------------------------------------------------------------------------------------
# The watcher's side.
# ---------------------------------------------------------------------------------------------
def diagnose(lines: list[str], progress: dict[str, Any], checkpoints: str, log_path: str,
             heartbeat_timeout: int) -> str:
    """The one sentence for a child that died on the distributed runtime's failure path."""
    text = "\n".join(lines)
    me = progress.get("process")
    total = progress.get("processes")
    of = f" of {total}" if total else ""
    dead = _UNHEALTHY.search(text)
    if dead:
        ids = [int(i) for i in re.findall(r"\d+", dead.group(1))]
        who = (f"process {', '.join(map(str, ids))}{of} stopped responding (no heartbeat for "
               f"{heartbeat_timeout} s; seen by process {me})")
    elif me not in (None, 0) and re.search(r"Socket closed|UNAVAILABLE|Connection refused|"
                                           r"Failed to connect", text):
        who = (f"process 0{of}, the coordinator at {progress.get('coordinator') or '?'}, "
               f"stopped responding (seen by process {me})")
    else:
        gloo = re.search(r"Gloo \w+ failed: (?:\[[^\]]*\] )?(.*)", text)
        cause = f" ({gloo.group(1).strip()})" if gloo else ""
        who = f"a peer of process {me}{of} stopped responding{cause}"
    step = progress.get("step")
    at = f" at step {step}" if step is not None else " before the first step"
    from launch import checkpoint as ckpt_lib

    newest = (ckpt_lib.committed_steps(checkpoints) or [None])[-1]
    if newest is None:
        saved = f"No checkpoint in {checkpoints} yet. Restart every process with the same " \
                "command to start again"
    else:
        saved = (f"Newest checkpoint: step {newest} in {checkpoints}. Restart every process "
                 f"with the same command to resume from step {newest}")
    return (f"ERROR: {who}{at}. {saved}; the runtime's own report is in {log_path} "
            f"(--config.distributed.heartbeat_timeout sets how long a silent process is "
            "waited for).")


def run(argv: list[str], workdir: str, heartbeat_timeout: int) -> int:
    """Runs ``python -m launch.train ARGV`` as a watched child; returns the exit code."""
    fd, progress_path = tempfile.mkstemp(prefix="pretrax-progress-", suffix=".json")
    os.close(fd)
    env = dict(os.environ, **{CHILD_ENV: progress_path})
    child = subprocess.Popen([sys.executable, "-m", "launch.train", *argv], env=env,
                             stderr=subprocess.PIPE)
    previous = {sig: signal.signal(sig, lambda signum, frame: child.send_signal(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    failure = threading.Event()
    held: collections.deque[str] = collections.deque(maxlen=20_000)

    def relay() -> None:
        assert child.stderr is not None
        for raw in iter(child.stderr.readline, b""):
            line = raw.decode("utf-8", "replace")
            if not failure.is_set() and _FAILURE.search(line):
                failure.set()
            if failure.is_set():
                held.append(line.rstrip("\n"))
            else:
                sys.stderr.write(line)
                sys.stderr.flush()

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        while child.poll() is None:
            if failure.wait(timeout=1.0):
                # The child is on its way out; if it hangs, do not hang with it.
                try:
                    child.wait(timeout=heartbeat_timeout + 30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                break
        reader.join(timeout=10)
        code = child.returncode
        peer_lost = any(line.startswith("pretrax-peer-lost:") for line in held)
        if code in (0, 1, 2) and not peer_lost:  # the trainer's own ending: pass it on
            if held:
                sys.stderr.write("\n".join(held) + "\n")
            return code
        try:
            with open(progress_path) as f:
                progress = json.load(f)
        except (OSError, ValueError):
            progress = {}
        process = progress.get("process", "X")
        log_path = os.path.join(workdir, "logs", f"process{process}.stderr.txt")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "a") as f:
            f.write("\n".join(held) + f"\n[trainer exit status {code}]\n")
        if not failure.is_set():  # killed by a signal without the runtime saying anything
            step = progress.get("step")
            print(f"ERROR: the trainer of process {process} was killed by signal {-code}"
                  f"{f' at step {step}' if step is not None else ''}; rerun the same command "
                  "to resume from the newest checkpoint.", file=sys.stderr, flush=True)
            return 128 - code
        from launch import checkpoint as ckpt_lib

        print(diagnose(list(held), progress, ckpt_lib.checkpoint_dir(workdir), log_path,
                       heartbeat_timeout), file=sys.stderr, flush=True)
        return PEER_LOST_EXIT
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:
            child.kill()
        os.unlink(progress_path)
