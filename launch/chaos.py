"""Fault drills: train a small job, inject faults, and check what pretrax did about each.

    python -m launch.chaos [--faults=all|kill,term,...] [--kills=20] [--root=runs/chaos]
                           [--config=configs/t5.py:tiny] [--steps=N] [--every=2] [--seed=0]

Every drill drives the real command line (``python -m launch.train`` subprocesses, the bundled
corpus by default) and ends by training the job to ``--steps``; its per-step losses are then
compared with one uninterrupted run of the same command. A row per fault says what was
injected, what pretrax did (exit code and its line), the steps lost (trained again after the
restart), the checkpoints lost (a committed checkpoint that the restart did not resume from)
and whether the final metrics equal the uninterrupted run's: bitwise on the same mesh (the
2-process drills against an uninterrupted 2-process job); after a resume on another mesh,
bitwise up to the resume and within float tolerance for the next steps (later steps drift
apart as any change of summation order makes a training run drift; the drift is reported).

Faults:

- ``kill``: SIGKILL at random moments, ``--kills`` times in one run: half when a checkpoint
  save is in flight (orbax's temporary directory exists), half at a random point of a step;
  each time the same command is restarted.
- ``term``: SIGTERM (a preemption notice): saves, exits 0, resumes with nothing lost.
- ``truncate`` / ``flip`` / ``missing``: the latest checkpoint's largest file cut in half,
  bytes of its array data overwritten, or the file deleted: the restart falls back to the
  previous checkpoint and keeps the damaged one (until ``checkpoint.keep`` rotates it out).
- ``empty``: an empty checkpoint directory holding an empty step folder: a fresh start.
- ``disk_full``: the workdir on a 4 MB tmpfs (needs root to mount): one line, exit 1; after
  the disk is enlarged the run resumes.
- ``nan``: ``--config.debug.inject_nan_at_step`` makes a step's loss and gradients NaN: exit 1
  naming the last good checkpoint; the rerun without the hook resumes from it.
- ``inf_grad``: the same with Inf in the gradients only (the loss stays finite): the gradient
  norm is checked too, so no checkpoint takes the poisoned update.
- ``peer`` / ``coordinator``: SIGKILL of process 1 / process 0 of a 2-process gloo job: the
  other exits 3 with one line; both restarted resume.
- ``double_start``: a second start on a workdir that is training is refused (exit 2, naming
  the job); the first run is unaffected.
- ``remesh``: SIGTERM on ``--devices`` devices, resume on half as many.

Exit status 1 when any drill's outcome is not what pretrax promises. Writes ``ROOT/chaos.md``
and ``ROOT/chaos.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULTS = ("kill", "term", "truncate", "flip", "missing", "empty", "disk_full", "nan",
          "inf_grad", "peer", "coordinator", "double_start", "remesh")
TOLERANCE = 2e-5  # relative, for the steps right after a resume on a different mesh
DRIFT_WINDOW = 4


@dataclasses.dataclass
class Outcome:
    fault: str
    injected: str
    response: str
    steps_lost: int | None
    checkpoints_lost: int
    final: str
    ok: bool
    seconds: float = 0.0


class DrillFailed(Exception):
    """A drill could not reach its end state; the message says where it stopped."""


def _read_losses(workdir: str) -> dict[int, float]:
    from launch import metrics as metrics_lib

    return {r["step"]: r["loss"] for r in metrics_lib.read_metrics(workdir) if "loss" in r}


def _committed(workdir: str) -> list[int]:
    from launch import checkpoint as ckpt_lib

    return ckpt_lib.committed_steps(ckpt_lib.checkpoint_dir(workdir))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines()
             if line.strip() and not line.startswith("[Gloo]")]
    return lines[-1] if lines else ""


def _resumed_from(stdout: str) -> int:
    found = re.findall(r"resumed from \S+/(\d+)", stdout)
    return int(found[-1]) if found else 0


class Job:
    """A running ``launch.train`` with its output collected as it comes."""

    def __init__(self, command: list[str], env: dict[str, str]):
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, into), daemon=True)
                         for stream, into in ((self.process.stdout, self.out),
                                              (self.process.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in iter(stream.readline, ""):
            into.append(line)

    def step(self) -> int:
        """The newest step this run has logged (its progress line)."""
        for line in reversed(self.out):
            found = re.match(r"step (\d+)/", line)
            if found:
                return int(found.group(1))
        return 0

    def resumed_from(self) -> int | None:
        """The step it resumed from, 0 for a fresh start, None while not yet known."""
        if "resumed from" in self.stdout:
            return _resumed_from(self.stdout)
        return 0 if self.step() or self.process.poll() is not None else None

    def wait(self, timeout: float = 1800) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)


class Drills:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.root = os.path.abspath(args.root)
        self.rng = random.Random(args.seed)
        self._references: dict[str, dict[int, float]] = {}

    # ----- running the real command line -----
    def command(self, workdir: str, *extra: str, steps: int | None = None) -> list[str]:
        return [sys.executable, "-m", "launch.train", f"--config={self.args.config}",
                f"--workdir={workdir}", f"--config.train.steps={steps or self.args.steps}",
                f"--config.checkpoint.every={self.args.every}", "--config.checkpoint.keep=3",
                "--config.train.eval_every=0", "--config.train.log_every=1",
                "--config.train.tensorboard=false", "--config.train.showcase=false",
                *self.args.override, *extra]

    def env(self, devices: int | None = None) -> dict[str, str]:
        env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
        env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count="
                            f"{devices or self.args.devices}")
        return env

    def run(self, workdir: str, *extra: str, devices: int | None = None,
            steps: int | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(workdir, *extra, steps=steps), cwd=REPO,
                              env=self.env(devices), capture_output=True, text=True,
                              timeout=1800)

    def start(self, workdir: str, *extra: str, devices: int | None = None) -> Job:
        return Job(self.command(workdir, *extra), self.env(devices))

    def wait_for(self, job: Job, step: int, timeout: float = 900) -> int:
        """Waits until the run has logged ``step`` (or ended); returns its newest step."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if job.step() >= step or job.process.poll() is not None:
                return job.step()
            time.sleep(0.02)
        job.kill()
        raise DrillFailed(f"no step {step} after {timeout:.0f} s: {_last_line(job.stderr)}")

    def finish(self, workdir: str, *extra: str, devices: int | None = None
               ) -> subprocess.CompletedProcess:
        done = self.run(workdir, *extra, devices=devices)
        if done.returncode != 0:
            raise DrillFailed(f"the final run in {workdir} exited {done.returncode}: "
                              f"{_last_line(done.stderr)}")
        return done

    # ----- the yardstick -----
    def reference(self, two_process: bool = False) -> dict[int, float]:
        """Losses of the uninterrupted run: one process on ``--devices`` devices, or (for the
        peer/coordinator drills) the same 2-process job, whose gloo sums run in their own
        order."""
        key = "two_process" if two_process else "one_process"
        if key not in self._references:
            workdir = self.fresh(f"uninterrupted_{key}")
            if two_process:
                job = self._two_process(workdir, _free_port())
                codes = [p.wait() for p in job]
                if codes != [0, 0]:
                    raise DrillFailed(f"the uninterrupted 2-process job exited {codes}: "
                                      f"{_last_line(job[0].stderr)}")
            else:
                self.finish(workdir)
            self._references[key] = _read_losses(workdir)
        return self._references[key]

    def compare(self, workdir: str, two_process: bool = False,
                resumed_on_another_mesh: int | None = None) -> tuple[str, bool]:
        """Bitwise against the uninterrupted run. After a resume on another mesh the sums run
        in another order: the steps up to the resume must still be bitwise equal and the
        next ``DRIFT_WINDOW`` within ``TOLERANCE``; beyond that float differences grow as in
        any chaotic optimisation (reported, not judged)."""
        got, want = _read_losses(workdir), self.reference(two_process)
        if sorted(got) != sorted(want):
            missing = sorted(set(want) - set(got))[:5]
            return f"DIFFERS: steps {missing} missing", False
        if resumed_on_another_mesh is None:
            same = all(got[s] == want[s] for s in want)
            return ("bitwise equal" if same else "DIFFERS (not bitwise)"), same

        def rel(steps: list[int]) -> float:
            return max((abs(got[s] - want[s]) / max(abs(want[s]), 1e-12) for s in steps),
                       default=0.0)

        at = resumed_on_another_mesh
        before = all(got[s] == want[s] for s in want if s <= at)
        window = [s for s in want if at < s <= at + DRIFT_WINDOW]
        near, rest = rel(window), rel([s for s in want if s > at + DRIFT_WINDOW])
        ok = before and near <= TOLERANCE
        return (f"{'bitwise' if before else 'NOT bitwise'} to step {at}, max rel. diff "
                f"{near:.1e} over the next {len(window)} steps (tol {TOLERANCE:.0e}), "
                f"{rest:.1e} later"), ok

    def fresh(self, name: str) -> str:
        workdir = os.path.join(self.root, name)
        shutil.rmtree(workdir, ignore_errors=True)
        return workdir

    def term_at(self, workdir: str, step: int, devices: int | None = None) -> int:
        """Trains, sends SIGTERM once ``step`` is logged; returns the step it saved."""
        job = self.start(workdir, devices=devices)
        self.wait_for(job, step)
        job.process.send_signal(signal.SIGTERM)
        code = job.wait()
        found = re.search(r"stopped by signal at step (\d+)", job.stdout)
        if code != 0 or not found:
            raise DrillFailed(f"SIGTERM: exit {code}, {_last_line(job.stderr or job.stdout)}")
        return int(found.group(1))

    # ----- the faults -----
    def kill(self) -> Outcome:
        workdir = self.fresh("kill")
        every, kills, lost, mid_save, ckpt_lost = self.args.every, 0, [], 0, 0
        ckpts = os.path.join(workdir, "checkpoints")
        before: tuple[int, list[int]] | None = None  # (step seen, committed) at the last kill
        while True:
            job = self.start(workdir)
            while job.resumed_from() is None:
                time.sleep(0.02)
            resume_from = job.resumed_from()
            if before is not None:  # account for the previous kill
                seen, committed = before
                lost.append(max(0, seen - resume_from))
                ckpt_lost += int(bool(committed) and resume_from < committed[-1])
            if kills == self.args.kills:
                break
            target = resume_from + self.rng.randint(1, 2 * every)
            if self.wait_for(job, target) >= self.args.steps or job.process.poll() is not None:
                break
            if kills % 2 == 0:  # while a save is in flight, if one starts within 5 s
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and job.process.poll() is None:
                    if any(n.endswith("orbax-checkpoint-tmp") for n in os.listdir(ckpts)):
                        mid_save += 1
                        break
                    time.sleep(0.002)
            else:  # somewhere inside a step
                time.sleep(self.rng.random() * 0.5)
            job.kill()
            kills += 1
            before = (max(job.step(), max(_read_losses(workdir), default=0)), _committed(workdir))
        if job.wait() != 0:
            raise DrillFailed(f"the final run exited {job.process.returncode}: "
                              f"{_last_line(job.stderr)}")
        final, same = self.compare(workdir)
        worst = max(lost, default=0)
        ok = same and ckpt_lost == 0 and worst <= 2 * every + 1
        return Outcome("kill", f"SIGKILL x{kills} ({mid_save} while a save was in flight)",
                       "restarted each time; resumed from the newest committed checkpoint",
                       worst, ckpt_lost, final, ok)

    def term(self) -> Outcome:
        workdir = self.fresh("term")
        saved = self.term_at(workdir, self.rng.randint(2, self.args.steps - 2))
        done = self.finish(workdir)
        resumed = _resumed_from(done.stdout)
        final, same = self.compare(workdir)
        return Outcome("term", f"SIGTERM at step {saved}",
                       f"saved step {saved}, exit 0; resumed from {resumed}",
                       saved - resumed, int(resumed < saved), final, same and resumed == saved)

    def _damaged(self, fault: str) -> Outcome:
        workdir = self.fresh(fault)
        saved = self.term_at(workdir, self.rng.randint(2 * self.args.every + 1,
                                                       self.args.steps - 2))
        state = os.path.join(workdir, "checkpoints", str(saved), "state")
        files = [os.path.join(d, n) for d, _, names in os.walk(state) for n in names]
        data = [f for f in files if os.sep + "d" + os.sep in f] or files
        victim = max(data if fault == "flip" else files, key=os.path.getsize)
        size = os.path.getsize(victim)
        if fault == "truncate":
            os.truncate(victim, size // 2)
            what = f"truncated {os.path.relpath(victim, workdir)} to {size // 2} of {size} bytes"
        elif fault == "flip":
            with open(victim, "r+b") as f:
                f.seek(size // 2)
                chunk = bytearray(f.read(16))
                f.seek(size // 2)
                f.write(bytes(b ^ 0xFF for b in chunk))
            what = f"flipped 16 bytes of {os.path.relpath(victim, workdir)}"
        else:
            os.remove(victim)
            what = f"deleted {os.path.relpath(victim, workdir)}"
        previous = [s for s in _committed(workdir) if s < saved]
        job = self.start(workdir)
        while job.resumed_from() is None:
            time.sleep(0.01)
        # Checked once it has restored: later saves rotate old steps out (checkpoint.keep).
        kept = os.path.isdir(state)
        if job.wait() != 0:
            raise DrillFailed(f"the restarted run exited {job.process.returncode}: "
                              f"{_last_line(job.stderr)}")
        resumed = job.resumed_from()
        fell_back = "could not be restored" in job.stdout
        final, same = self.compare(workdir)
        response = (f"{'reported it and ' if fell_back else 'did NOT notice; '}resumed from "
                    f"{resumed}; damaged step {'kept' if kept else 'DELETED'}")
        ok = same and kept and fell_back and resumed == (previous[-1] if previous else 0)
        return Outcome(fault, f"{what} (latest, step {saved})", response, saved - resumed,
                       0 if not previous or resumed == previous[-1] else 1, final, ok)

    def truncate(self) -> Outcome:
        return self._damaged("truncate")

    def flip(self) -> Outcome:
        return self._damaged("flip")

    def missing(self) -> Outcome:
        return self._damaged("missing")

    def empty(self) -> Outcome:
        workdir = self.fresh("empty")
        os.makedirs(os.path.join(workdir, "checkpoints", str(self.args.every)))
        done = self.finish(workdir)
        final, same = self.compare(workdir)
        resumed = _resumed_from(done.stdout)
        return Outcome("empty", "empty checkpoints/ holding an empty step folder",
                       f"started from step {resumed}", 0, 0, final, same and resumed == 0)

    def disk_full(self) -> Outcome:
        base = self.fresh("disk_full")
        disk = os.path.join(base, "disk")
        os.makedirs(disk)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", disk],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            return Outcome("disk_full", "a 4 MB tmpfs", f"NOT RUN: mount failed "
                           f"({mounted.stderr.strip()}; needs root)", None, 0, "-", False)
        try:
            workdir = os.path.join(disk, "run")
            full = self.run(workdir)
            line = _last_line(full.stderr)
            seen = max(_read_losses(workdir), default=0)
            committed = _committed(workdir)
            subprocess.run(["mount", "-o", "remount,size=256m", disk], check=True)
            done = self.finish(workdir)
            resumed = _resumed_from(done.stdout)
            final, same = self.compare(workdir)
            ok = (same and full.returncode == 1 and line.startswith("ERROR: disk full")
                  and resumed == (committed[-1] if committed else 0))
            return Outcome("disk_full", "workdir on a 4 MB tmpfs, enlarged after the failure",
                           f"exit {full.returncode}: {line}", seen - resumed,
                           int(bool(committed) and resumed < committed[-1]), final, ok)
        finally:
            subprocess.run(["umount", disk], capture_output=True)

    def _poisoned(self, fault: str, value: str, into: str) -> Outcome:
        workdir = self.fresh(fault)
        at = self.rng.randint(self.args.every + 1, self.args.steps - 1)
        failed = self.run(workdir, f"--config.debug.inject_nan_at_step={at}",
                          f"--config.debug.inject_value={value}",
                          f"--config.debug.inject_into={into}")
        line = _last_line(failed.stderr)
        committed = _committed(workdir)
        done = self.finish(workdir)
        resumed = _resumed_from(done.stdout)
        final, same = self.compare(workdir)
        ok = (same and failed.returncode == 1 and f"step {at}" in line
              and resumed == (committed[-1] if committed else 0))
        injected = ("loss and gradients" if into == "loss" else "gradients (finite loss)")
        shown = {"nan": "NaN", "inf": "Inf"}[value]
        return Outcome(fault, f"{shown} {injected} at step {at}",
                       f"exit {failed.returncode}: {line}", at - resumed,
                       int(bool(committed) and resumed < committed[-1]), final, ok)

    def nan(self) -> Outcome:
        return self._poisoned("nan", "nan", "loss")

    def inf_grad(self) -> Outcome:
        return self._poisoned("inf_grad", "inf", "gradients")

    def _two_process(self, workdir: str, port: int, *extra: str) -> list[Job]:
        devices = max(1, self.args.devices // 2)
        return [Job(self.command(workdir, "--config.distributed.mode=on",
                                 f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                                 "--config.distributed.num_processes=2",
                                 f"--config.distributed.process_id={i}",
                                 "--config.distributed.cpu_collectives=gloo", *extra),
                    self.env(devices)) for i in range(2)]

    def _dead_process(self, victim: int) -> Outcome:
        name = "peer" if victim == 1 else "coordinator"
        workdir = self.fresh(name)
        timeout = 10
        job = self._two_process(workdir, _free_port(),
                                f"--config.distributed.heartbeat_timeout={timeout}")
        try:
            seen = self.wait_for(job[0], self.rng.randint(3, self.args.steps // 2))
            job[victim].kill()
            killed = time.monotonic()
            job[1 - victim].wait(timeout=timeout + 120)
            waited = time.monotonic() - killed
        finally:
            for process in job:
                process.kill()
        seen = max(_read_losses(workdir), default=seen)
        committed = _committed(workdir)
        survivor = job[1 - victim]
        line = _last_line(survivor.stderr)
        restart = self._two_process(workdir, _free_port())
        codes = [p.wait() for p in restart]
        if codes != [0, 0]:
            raise DrillFailed(f"{name}: the restarted job exited {codes}: "
                              f"{_last_line(restart[0].stderr)}")
        resumed = restart[0].resumed_from()
        final, same = self.compare(workdir, two_process=True)
        code = survivor.process.returncode
        ok = (same and code == 3 and line.startswith("ERROR: process ")
              and resumed == (committed[-1] if committed else 0) and waited < timeout + 30)
        return Outcome(name, f"SIGKILL of process {victim} of 2 at step ~{seen} "
                       f"(heartbeat timeout {timeout} s)",
                       f"process {1 - victim}: exit {code} after {waited:.0f} s: "
                       f"{line[:150]}...", seen - resumed,
                       int(bool(committed) and resumed < committed[-1]), final, ok)

    def peer(self) -> Outcome:
        return self._dead_process(1)

    def coordinator(self) -> Outcome:
        return self._dead_process(0)

    def double_start(self) -> Outcome:
        workdir = self.fresh("double_start")
        first = self.start(workdir)
        self.wait_for(first, 2)
        second = self.run(workdir)
        code = first.wait()
        line = _last_line(second.stderr)
        final, same = self.compare(workdir)
        ok = same and code == 0 and second.returncode == 2 and "is in use by job" in line
        return Outcome("double_start", "a second start on the workdir while it trains",
                       f"second: exit {second.returncode}: {line[:200]}; first: exit {code}",
                       0, 0, final, ok)

    def remesh(self) -> Outcome:
        workdir = self.fresh("remesh")
        fewer = max(1, self.args.devices // 2)
        saved = self.term_at(workdir, self.rng.randint(2, self.args.steps - 2))
        done = self.finish(workdir, devices=fewer)
        resumed = _resumed_from(done.stdout)
        final, same = self.compare(workdir, resumed_on_another_mesh=resumed)
        return Outcome("remesh", f"SIGTERM at step {saved} on {self.args.devices} devices, "
                       f"resumed on {fewer}", f"resumed from {resumed}", saved - resumed,
                       int(resumed < saved), final, same and resumed == saved)


def _table(outcomes: list[Outcome]) -> str:
    rows = ["| fault | injected | what pretrax did | steps lost | checkpoints lost | "
            "final metrics vs uninterrupted | verdict |", "|---|---|---|---|---|---|---|"]
    for o in outcomes:
        lost = "-" if o.steps_lost is None else str(o.steps_lost)
        response = o.response.replace("|", "/")
        rows.append(f"| {o.fault} | {o.injected} | {response} | {lost} | {o.checkpoints_lost} | "
                    f"{o.final} | {'ok' if o.ok else 'FAILED'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faults", default="all", help=f"'all' or some of {','.join(FAULTS)}")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in the kill drill")
    parser.add_argument("--root", default="runs/chaos")
    parser.add_argument("--config", default="configs/t5.py:tiny")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of every drill's job (default: enough for --kills)")
    parser.add_argument("--every", type=int, default=2, help="checkpoint period")
    parser.add_argument("--devices", type=int, default=4, help="CPU devices per job")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--override", action="append", default=[],
                        help="an extra --config.KEY=VALUE for every run (repeatable)")
    args = parser.parse_args(argv)
    faults = FAULTS if args.faults == "all" else tuple(args.faults.split(","))
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"--faults: unknown {unknown}; choose from {', '.join(FAULTS)}")
    if args.steps is None:
        args.steps = max(12, (args.kills + 2) * args.every * 2 if "kill" in faults else 12)
    os.makedirs(args.root, exist_ok=True)
    drills = Drills(args)
    started = time.monotonic()
    print(f"uninterrupted run: {args.config}, {args.steps} steps, checkpoint every "
          f"{args.every}, {args.devices} devices", flush=True)
    drills.reference()
    outcomes = []
    for fault in faults:
        t0 = time.monotonic()
        try:
            outcome = getattr(drills, fault)()
        except (DrillFailed, subprocess.TimeoutExpired) as error:
            outcome = Outcome(fault, "-", f"DRILL FAILED: {error}", None, 0, "-", False)
        outcome.seconds = time.monotonic() - t0
        outcomes.append(outcome)
        print(f"{fault}: {'ok' if outcome.ok else 'FAILED'} ({outcome.seconds:.0f} s) - "
              f"{outcome.injected}; {outcome.response}; steps lost {outcome.steps_lost}, "
              f"checkpoints lost {outcome.checkpoints_lost}; {outcome.final}", flush=True)
    table = _table(outcomes)
    with open(os.path.join(args.root, "chaos.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.root, "chaos.json"), "w") as f:
        json.dump([dataclasses.asdict(o) for o in outcomes], f, indent=2)
    print(table)
    failed = [o.fault for o in outcomes if not o.ok]
    print(f"{len(outcomes) - len(failed)}/{len(outcomes)} drills ok in "
          f"{(time.monotonic() - started) / 60:.1f} min"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
