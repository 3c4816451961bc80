"""Sweeps: ``python -m launch.sweep [COMMAND] --sweep=configs/sweeps/NAME.py --root=DIR ...``.

Commands:

- ``launch`` (the default): expand the sweep file into runs under ``--root`` (each run's
  workdir with its resolved, locked ``config.json``, all written before anything starts), then
  start every run that is neither done nor queued/running on ``--backend``: ``local``
  (``--parallel=N`` at a time, default 1), ``slurm`` (one sbatch job per run) or ``tpu_vm``
  (writes the ``gcloud`` commands; ``--execute`` runs them). Without ``--sweep`` it starts the
  runs of an already expanded ``--root``. Runs resume from the checkpoints in their workdirs.
- ``expand``: write the runs and start nothing.
- ``status``: one line per run: state (pending, running, done, failed, preempted), step, latest
  loss and evaluation, tokens/s, workdir.
- ``collect``: ``results.csv``, ``results.md`` and ``curves.png`` under ``--root``.
- ``retry``: start the failed and preempted runs again (they resume from their checkpoints),
  and the runs never started because one of those was not done (a stage's runs wait for the
  run they start from).

``--backend`` defaults to the one the sweep last ran on (``local`` for a new sweep).

``--dry_run`` prints the runs, their overrides and the exact commands, and writes nothing.
Sweep files are described in ``launch/sweep_spec.py``; run states in ``launch/sweep_state.py``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from configs import common
from launch import sweep_backends, sweep_report, sweep_spec, sweep_state, sweep_tpu
from launch.sweep_spec import Run, SweepError

COMMANDS = ("launch", "expand", "status", "collect", "retry")
BACKENDS = ("local", "slurm", "tpu_vm")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m launch.sweep", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="launch", choices=COMMANDS)
    parser.add_argument("--sweep", help="a sweep file, configs/sweeps/NAME.py")
    parser.add_argument("--root", required=True, help="the sweep's directory")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="where runs execute (default: where the sweep ran last, or local)")
    parser.add_argument("--dry_run", action="store_true",
                        help="print runs, overrides and commands; write and start nothing")
    parser.add_argument("--parallel", type=int, default=1, help="local: runs at a time")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter runs use (local, slurm)")
    sweep_tpu.add_arguments(parser)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Which runs, and their files.
# ---------------------------------------------------------------------------------------------
def _runs(args: argparse.Namespace) -> tuple[str, str, list[Run], bool]:
    """(sweep name, sweep file, runs, freshly expanded?) from --sweep or the manifest."""
    if args.sweep:
        sweep = sweep_spec.load_sweep(args.sweep)
        run_root = sweep_tpu.run_root(sweep, args) if args.backend == "tpu_vm" else None
        return sweep.name, args.sweep, sweep_spec.expand(sweep, args.root, args.sweep,
                                                         run_root), True
    if args.command in ("launch", "expand") and not os.path.isfile(
            os.path.join(args.root, sweep_state.MANIFEST)):
        raise SweepError(f"{args.command}: --sweep=FILE is needed to expand a new sweep "
                         f"({args.root} holds none)")
    manifest, runs = sweep_state.read_manifest(args.root)
    return manifest["name"], manifest["sweep_file"], runs, False


def _write(args: argparse.Namespace, name: str, sweep_file: str, runs: list[Run],
           backend: str) -> None:
    """Each run's config.json (refusing to change a started run's), then the manifest."""
    texts = {run.name: common.config_json(run.resolved) for run in runs}
    for run in runs:
        sweep_state.check_unchanged(run, texts[run.name])
    for run in runs:
        common.write_config(run.resolved, run.local_dir)
    path = sweep_state.write_manifest(args.root, sweep_file, name, backend, runs)
    print(f"expanded {len(runs)} runs of {name} into {args.root} ({path})")


def _print_plan(name: str, runs: list[Run], backend: str, args: argparse.Namespace,
                chosen: list[Run]) -> None:
    print(f"sweep {name}: {len(runs)} runs under {os.path.abspath(args.root)}, backend "
          f"{backend}; would start {len(chosen)}")
    for run in runs:
        print(f"\n{run.name}" + ("" if run in chosen else "  (not started: done or active)"))
        print(f"  config:    {run.config} {shlex.join(sweep_spec.override_flags(run))}")
        if run.settings:
            print(f"  settings:  {run.settings}")
        print(f"  workdir:   {run.workdir}")
        if run.after:
            print(f"  after:     {run.after}")
        env = sweep_backends.run_env(run, name)
        if backend == "local":
            print(f"  command:   cd {sweep_spec.REPO} && "
                  + shlex.join([f"{k}={v}" for k, v in env.items()]
                               + sweep_backends.train_command(run, args.python)))
        elif backend == "slurm":
            script = sweep_backends.sbatch_script(run, sweep_name=name, python=args.python)
            print(f"  command:   {shlex.join(sweep_backends.sbatch_command(run, None))}"
                  + ("  (--dependency=afterok:<its parent's job>)" if run.after else ""))
            for line in script.splitlines():
                if line.startswith(("#SBATCH", "srun", "export")):
                    print(f"             {line}")
    if backend == "tpu_vm":
        print()
        for path, text in sweep_tpu.scripts(runs, name, args).items():
            print(f"# {path}\n{text}")


# ---------------------------------------------------------------------------------------------
# Commands.
# ---------------------------------------------------------------------------------------------
def _statuses(runs: list[Run]) -> list[sweep_state.RunStatus]:
    ids = [job["id"] for run in runs if (job := sweep_state.read_job(run))
           and job["backend"] == "slurm"]
    jobs = sweep_backends.slurm_jobs(ids)
    return [sweep_state.run_status(run, jobs) for run in runs]


def _start(args: argparse.Namespace, name: str, runs: list[Run], chosen: list[Run],
           backend: str) -> int:
    if backend == "local":
        codes = sweep_backends.run_local(chosen, runs, sweep_name=name, python=args.python,
                                         parallel=args.parallel)
        states = _statuses(runs)
        print(sweep_report.status_table(states))
        return 0 if all(s.state == "done" for s in states if s.run.name in codes) else 1
    if backend == "slurm":
        sweep_backends.submit_slurm(chosen, runs, sweep_name=name, python=args.python)
        print(f"watch with: python -m launch.sweep status --root={args.root}")
        return 0
    return sweep_tpu.launch(chosen, runs, name, args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command in ("status", "collect"):
        _, runs = sweep_state.read_manifest(args.root)
        statuses = _statuses(runs)
        if args.command == "status":
            print(sweep_report.status_table(statuses))
        else:
            paths = sweep_report.collect(args.root, statuses)
            with open(paths[1]) as f:
                print(f.read())
            print("\n".join(f"wrote {p}" for p in paths))
        return 0

    name, sweep_file, runs, fresh = _runs(args)
    manifest = (sweep_state.read_manifest(args.root)[0]
                if os.path.isfile(os.path.join(args.root, sweep_state.MANIFEST)) else None)
    last_backend = manifest["backend"] if manifest else None
    backend = args.backend or last_backend or "local"  # where the sweep ran last, by default
    if not args.dry_run:
        if backend == "slurm":
            sweep_backends.check_binaries("slurm", sweep_backends.SLURM_BINARIES)
        if backend == "tpu_vm" and args.execute:
            sweep_backends.check_binaries("tpu_vm", ("gcloud",))
    statuses = _statuses(runs) if not (fresh and args.dry_run) else []
    if args.command == "retry":
        again = {s.run.name for s in statuses if s.state in ("failed", "preempted")}
        # ... and the runs never started because one of those was not done, or that their job
        # skipped although their parent counts as done (it saved its last step, then failed)
        never = {s.run.name for s in statuses if sweep_state.never_started(s)}
        done = {s.run.name for s in statuses if s.state == "done"}
        for run in runs:  # parents come before their children
            if run.name in never and (run.after in again or run.after in done):
                again.add(run.name)
        chosen = [run for run in runs if run.name in again]
    elif args.command == "launch":
        active = {s.run.name for s in statuses if s.state in ("running", "done") or (
            s.state == "pending" and s.job is not None and not sweep_state.skipped_by_job(s))}
        chosen = [run for run in runs if run.name not in active]
    else:
        chosen = []
    if args.dry_run:
        _print_plan(name, runs, backend, args, chosen)
        return 0
    if fresh:
        _write(args, name, sweep_file, runs, backend)
    if args.command == "expand":
        _print_plan(name, runs, backend, args, [])
        return 0
    if not chosen:
        print("nothing to retry: no run failed or was preempted" if args.command == "retry"
              else "nothing to launch: every run is done or queued or running")
        print(sweep_report.status_table(_statuses(runs)))
        return 0
    if manifest and backend != last_backend:  # status and retry use the backend last used
        sweep_state.write_manifest(args.root, sweep_file, name, backend, runs)
    return _start(args, name, runs, chosen, backend)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SweepError as error:
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
