"""Cloud TPU VM backend: the ``gcloud compute tpus`` commands that run a sweep, one script a slice.

``--backend=tpu_vm`` writes ``ROOT/tpu/SLICE.sh`` for every slice (one per run, or several
runs one after another on a slice when they name the same ``tpu.slice``) and prints them;
``--execute`` also runs them here, one slice at a time (``--parallel=N`` slices at once), with
the output in ``ROOT/tpu/SLICE.log``. A script:

1. creates the slice unless it exists: ``tpu-vm create --accelerator-type --version`` (``--spot``
   for ``tpu.provisioning="spot"``), or a queued resource (``"queued"``, ``"queued_spot"``) and
   waits until it is ACTIVE;
2. installs pretrax on every worker (``ssh --worker=all``) from ``--git_url`` at ``--git_ref``
   (default: this checkout's ``origin`` and ``HEAD``) into ``~/pretrax-pyVERSION``, a venv of
   CPython ``tpu.python`` (default 3.11; jax needs >= 3.11, the TPU images' ``python3`` is
   older) made by uv (installed with its standalone installer; it downloads that Python), then
   runs the sweep's ``tpu.setup`` commands (mounting the shared filesystem, ...). Each step is
   skipped when it was done before, so a rerun on an existing slice reinstalls nothing;
3. runs each run's ``launch.train`` with the venv's python on every worker, with the same
   config file and overrides as the expansion (the git ref pins the code, so they resolve to
   the same config) and its workdir under ``tpu.workdir_root``, a path every worker mounts
   (gcsfuse, Filestore); a run's exit code goes to ``ROOT/RUN/sweep/exit_code`` for
   ``status``;
4. deletes the slice when the script ends, also after a failure (a slice costs by the hour).

Dependencies (``Run.after``: a fine-tune starts from its pretraining run's newest checkpoint):
``--execute`` starts a slice's script only once every run it waits for (the parents of its runs
on other slices) is ``done`` by ``launch.sweep status``'s rules; when one failed or was
preempted the script is not started and the run is named (``retry`` starts it after retrying
the parent). A script also checks this itself before it creates its slice (the parent's exit
code 0), for scripts run by hand, and a run whose parent ran earlier on the same slice starts
only if that one exited 0.

Rerunning a script (``retry`` does) recreates the slice and resumes each run from the newest
checkpoint in its workdir. No cloud is reachable from the tests: tests/test_sweep_tpu.py checks
the scripts against golden files and runs them against a recording stand-in for ``gcloud``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import time
from collections.abc import Sequence

from launch import sweep_backends, sweep_spec, sweep_state
from launch.sweep_spec import Run, SweepError

PROVISIONING = ("on_demand", "spot", "queued", "queued_spot")
SLICE_KEYS = ("project", "zone", "accelerator_type", "version", "provisioning",
              "extra_create_flags", "setup", "python")
PIP_JAX = "jax[tpu]>=0.10,<0.13"  # setup.cfg's jax range, with libtpu


# uv (https://docs.astral.sh/uv) makes the workers' venv: the TPU images' python3 is older than
# jax needs (tpu-ubuntu2204-base: 3.10; jax >= 0.10 requires >= 3.11), so uv downloads a
# managed CPython of tpu.python. Its standalone installer puts the uv binary at UV and leaves
# the shell profiles alone (UV_UNMANAGED_INSTALL).
UV_INSTALLER = "https://astral.sh/uv/install.sh"
UV = "~/.local/bin/uv"
_PYTHON = re.compile(r"^3\.(\d+)(\.\d+)?$")


def gcsfuse_setup(bucket: str, mount: str = "/mnt/gcs") -> str:
    """A ``tpu.setup`` command mounting ``gs://bucket`` at ``mount`` on every worker, writable
    by the ssh user the runs execute as: gcsfuse run by root makes everything root-owned
    unless given the user's ``--uid/--gid`` (``$(id -u)`` is expanded by the worker's shell);
    ``--rename-dir-limit`` lets orbax commit a checkpoint by renaming its temporary folder
    (gcsfuse refuses directory renames on flat-namespace buckets by default; 200,000 is its
    checkpointing profile's value; the rename is copy-then-delete there, atomic only on a
    hierarchical-namespace bucket). The image must have gcsfuse installed."""
    return (f"mountpoint -q {mount} || (sudo mkdir -p {mount} && sudo gcsfuse --uid=$(id -u) "
            f"--gid=$(id -g) --rename-dir-limit=200000 --implicit-dirs -o allow_other "
            f"{bucket} {mount})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tpu_vm")
    group.add_argument("--execute", action="store_true",
                       help="tpu_vm: run the gcloud scripts (default: only write them)")
    group.add_argument("--git_url", help="tpu_vm: the repository the workers install "
                                         "(default: this checkout's origin)")
    group.add_argument("--git_ref", help="tpu_vm: the commit, tag or branch they install "
                                         "(default: this checkout's HEAD)")
    group.add_argument("--run_root", help="tpu_vm: where runs write on the workers "
                                          "(default: the sweep's tpu.workdir_root)")


def run_root(sweep: sweep_spec.Sweep, args: argparse.Namespace) -> str:
    root = args.run_root or sweep.fixed.get("tpu.workdir_root")
    if not root:
        raise SweepError(
            f"{args.sweep}: tpu_vm runs write their checkpoints where every worker sees them; "
            "set \"tpu.workdir_root\" in the sweep's fixed settings (a gcsfuse or Filestore "
            "mount, e.g. /mnt/gcs/pretrax) or pass --run_root")
    return os.path.join(root, sweep.name)


def _git(args: argparse.Namespace) -> tuple[str, str]:
    def ask(*command: str) -> str | None:
        result = subprocess.run(["git", "-C", sweep_spec.REPO, *command], capture_output=True,
                                text=True)
        return result.stdout.strip() if result.returncode == 0 else None

    url = args.git_url or ask("remote", "get-url", "origin")
    ref = args.git_ref or ask("rev-parse", "HEAD")
    if not url or not ref:
        raise SweepError("tpu_vm: the workers install pretrax with git; pass --git_url=URL "
                         "and --git_ref=COMMIT (this checkout has no 'origin' remote to "
                         "default to)")
    return url, ref


def _slice_name(run: Run, index: int, sweep_name: str) -> str:
    name = run.tpu()["slice"] or f"pretrax-{sweep_name}-{index}"
    name = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    if not re.match(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$", name):
        raise SweepError(f"run {run.name}: TPU name {name!r} must start with a letter and hold "
                         "at most 63 lowercase letters, digits and hyphens (set tpu.slice)")
    return name


def slices(runs: Sequence[Run], all_runs: Sequence[Run],
           sweep_name: str) -> dict[str, list[Run]]:
    """Slice name -> its runs, in sweep order; the runs of a slice agree on the slice."""
    grouped: dict[str, list[Run]] = {}
    chosen = {run.name for run in runs}
    for index, run in enumerate(all_runs):  # indices of the whole sweep: stable names
        if run.name in chosen:
            grouped.setdefault(_slice_name(run, index, sweep_name), []).append(run)
    for name, group in grouped.items():
        first = group[0].tpu()
        for key in ("zone", "accelerator_type", "version"):
            if not first[key]:
                raise SweepError(f"run {group[0].name}: tpu.{key} is not set")
        if first["provisioning"] not in PROVISIONING:
            raise SweepError(f"run {group[0].name}: tpu.provisioning="
                             f"{first['provisioning']!r}; expected one of {PROVISIONING}")
        python = first["python"]
        match = _PYTHON.match(python) if isinstance(python, str) else None
        if not match or int(match.group(1)) < 11:
            raise SweepError(f"run {group[0].name}: tpu.python={python!r}; expected a CPython "
                             "version >= 3.11 as a string, e.g. \"3.11\" (jax >= 0.10 needs it)")
        for run in group[1:]:
            differ = [k for k in SLICE_KEYS if run.tpu()[k] != first[k]]
            if differ:
                raise SweepError(f"runs {group[0].name} and {run.name} share slice {name} but "
                                 f"differ in tpu.{', tpu.'.join(differ)}")
    _check_order(grouped)
    return grouped


def waits_for(group: Sequence[Run]) -> list[str]:
    """The runs a slice's script waits for: the parents of its runs that are not on it."""
    own = {run.name for run in group}
    return list(dict.fromkeys(run.after for run in group if run.after and run.after not in own))


def _check_order(grouped: dict[str, list[Run]]) -> None:
    """Slices that wait for each other (a run on A after one on B, and one on B after one on A)
    would wait forever: refuse them before anything is written."""
    slice_of = {run.name: name for name, group in grouped.items() for run in group}
    after = {name: {slice_of[p] for p in waits_for(group) if p in slice_of}
             for name, group in grouped.items()}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = path[path.index(name):] + [name]
            raise SweepError(f"slices {' -> '.join(cycle)} wait for each other (a run on each "
                             "depends on a run on the next); give the stages different "
                             "tpu.slice names")
        state[name] = "open"
        for other in sorted(after[name]):
            visit(other, [*path, name])
        state[name] = "done"

    for name in grouped:
        visit(name, [])


def _where(tpu: dict) -> list[str]:
    return ([f"--project={tpu['project']}"] if tpu["project"] else []) + [f"--zone={tpu['zone']}"]


def _gcloud(*argv: str) -> str:
    """``gcloud ARGV`` as a shell line; ``--command=`` texts in double quotes where that is safe
    (they are then read as written), otherwise quoted by shlex."""
    words = []
    for arg in ["gcloud", *argv]:
        text = arg.removeprefix("--command=")
        if text != arg and not re.search(r'["$`\\!]', text):
            words.append(f'--command="{text}"')
        else:
            words.append(shlex.quote(arg))
    return " ".join(words)


def _wrap(line: str, *breaks: str) -> str:
    """Continues ``line`` on a new line before each of ``breaks`` (for a reader)."""
    for word in breaks:
        line = line.replace(f" {word}", f" \\\n    {word}", 1)
    return line


PARENTS_CHECKED = "PRETRAX_PARENTS_CHECKED"  # set by launch(): the script's parents are done


def _job_path(run_name: str, name: str) -> str:
    """``"$SWEEP_ROOT"/...``: job file ``name`` of run ``run_name``, as the script names it."""
    return '"$SWEEP_ROOT"/' + shlex.quote(sweep_state.job_file(run_name, name))


def _exit_file(run_name: str) -> str:
    return _job_path(run_name, sweep_state.EXIT_CODE)


def _exited_zero(run_name: str) -> str:
    """The shell test: did run ``run_name`` exit 0?"""
    return f'[ "$(cat {_exit_file(run_name)} 2>/dev/null)" = 0 ]'


def _not_started(run_name: str, why: str) -> str:
    """The shell line recording that this script skipped run ``run_name`` (and why), which
    ``launch.sweep status`` shows as pending and ``retry`` starts again."""
    path = _job_path(run_name, sweep_state.NOT_STARTED)
    return f'mkdir -p "$(dirname {path})" && echo {shlex.quote(why)} > {path}'


def venv(tpu: dict) -> str:
    """The workers' venv (one per Python version: a rerun reuses it, a new version gets its
    own), written for the remote shell to expand ``~``."""
    return f"~/pretrax-py{tpu['python']}"


def install_command(tpu: dict, git_url: str, git_ref: str) -> str:
    """The remote command that installs pretrax at ``git_ref`` into the venv; every step is
    skipped or a no-op when it was done before (a rerun on an existing slice)."""
    python = f"{venv(tpu)}/bin/python"
    return (f"set -e; [ -d ~/pretrax ] || git clone -q {shlex.quote(git_url)} ~/pretrax; "
            f"cd ~/pretrax; git fetch -q origin; git checkout -q {shlex.quote(git_ref)}; "
            f"[ -x {UV} ] || {{ curl -LsSf {UV_INSTALLER} -o /tmp/uv-install.sh && "
            f"UV_UNMANAGED_INSTALL={os.path.dirname(UV)} sh /tmp/uv-install.sh; }}; "
            f"[ -x {python} ] || {UV} venv -q --python {tpu['python']} {venv(tpu)}; "
            f"{UV} pip install -q --python {python} -e . {shlex.quote(PIP_JAX)}")


def script(name: str, runs: Sequence[Run], sweep_name: str, git_url: str, git_ref: str,
           local_root: str) -> str:
    """The bash script of one slice (see the module docstring)."""
    tpu = runs[0].tpu()
    where = _where(tpu)
    queued = tpu["provisioning"].startswith("queued")
    spot = ["--spot"] if tpu["provisioning"] in ("spot", "queued_spot") else []
    shape = [f"--accelerator-type={tpu['accelerator_type']}",
             f"--{'runtime-version' if queued else 'version'}={tpu['version']}", *spot,
             *tpu["extra_create_flags"]]
    ssh = ["compute", "tpus", "tpu-vm", "ssh", name, *where, "--worker=all"]
    lines = [
        "#!/bin/bash",
        f"# pretrax sweep {sweep_name}: slice {name}, {tpu['accelerator_type']} "
        f"({tpu['provisioning'].replace('_', ' ')}), "
        + (f"{len(runs)} runs one after another." if len(runs) > 1 else f"run {runs[0].name}."),
        "# Written by `python -m launch.sweep --backend=tpu_vm`. Rerunning it resumes every run",
        "# from the newest checkpoint in its workdir.",
        "set -u -o pipefail",
        f"SWEEP_ROOT={shlex.quote(local_root)}  # run states for `launch.sweep status`",
        "",
    ]
    for parent in waits_for(runs):
        lines += [
            f"# Runs here start from run {parent}'s checkpoints: only once it has exited 0 (or",
            f"# once `launch.sweep` found it done, which it then says in {PARENTS_CHECKED}).",
            f'if [ "${{{PARENTS_CHECKED}:-}}" != 1 ] && ! {_exited_zero(parent)}; then',
            f'  echo "not started: run {parent} has not finished (no exit code 0 in '
            f'{_exit_file(parent)}); run its script first" >&2',
            *[f"  {_not_started(run.name, f'its slice waits for run {parent}, not finished')}"
              for run in runs],
            "  exit 3",
            "fi",
            "",
        ]
    if queued:
        describe = ["compute", "tpus", "queued-resources", "describe", name, *where]
        create = ["compute", "tpus", "queued-resources", "create", name, f"--node-id={name}",
                  *where, *shape]
        delete = ["compute", "tpus", "queued-resources", "delete", name, *where, "--force",
                  "--quiet"]
        lines += [
            "# Queue for the slice unless it is queued already; delete it when this script "
            "ends (also",
            "# on failure); wait until it is ACTIVE.",
            _wrap(f"{_gcloud(*describe)} >/dev/null 2>&1 || {_gcloud(*create)} || exit 1",
                  "|| gcloud", "--accelerator-type", "|| exit"),
            f"trap {shlex.quote(_gcloud(*delete))} EXIT",
            "while true; do",
            f"  state=$({_gcloud(*describe, '--format=value(state.state)')})",
            '  case "$state" in',
            "    ACTIVE) break ;;",
            f'    FAILED|SUSPENDED) echo "queued resource {name} is $state" >&2; exit 1 ;;',
            "  esac",
            "  sleep 60",
            "done",
        ]
    else:
        describe = ["compute", "tpus", "tpu-vm", "describe", name, *where]
        create = ["compute", "tpus", "tpu-vm", "create", name, *where, *shape]
        delete = ["compute", "tpus", "tpu-vm", "delete", name, *where, "--quiet"]
        lines += [
            "# Create the slice unless it exists; delete it when this script ends (also on "
            "failure).",
            _wrap(f"{_gcloud(*describe)} >/dev/null 2>&1 || {_gcloud(*create)} || exit 1",
                  "|| gcloud", "--accelerator-type", "|| exit"),
            f"trap {shlex.quote(_gcloud(*delete))} EXIT",
        ]
    install = install_command(tpu, git_url, git_ref)
    lines += ["", f"# Install pretrax at the sweep's commit on every worker, in a Python "
                  f"{tpu['python']} venv made by uv",
              "# (the image's python3 may be older than jax needs), then set the workers up.",
              _wrap(_gcloud(*ssh, f"--command={install}") + " || exit 1", "--command", "|| exit")]
    for command in tpu["setup"]:
        lines.append(_wrap(_gcloud(*ssh, f"--command={command}") + " || exit 1", "--command",
                           "|| exit"))
    earlier: set[str] = set()
    for run in runs:
        env = sweep_backends.run_env(run, sweep_name)
        remote = ("cd ~/pretrax && " + shlex.join([f"{k}={v}" for k, v in env.items()])
                  + f" {venv(tpu)}/bin/python "
                  + shlex.join(["-m", "launch.train", f"--config={run.config}",
                                *sweep_spec.override_flags(run), f"--workdir={run.workdir}"]))
        train = [f"rm -f {_job_path(run.name, sweep_state.NOT_STARTED)}",
                 _wrap(_gcloud(*ssh, f"--command={remote}"), "--command"),
                 f"echo $? > {_exit_file(run.name)}"]
        if run.after in earlier:  # its parent ran above: only if that exited 0
            lines += ["", f"# Run {run.name}, once run {run.after} above has exited 0.",
                      f"if {_exited_zero(run.after)}; then",
                      *["  " + line.replace("\n", "\n  ") for line in train],
                      "else",
                      f'  echo "{run.name}: not started, run {run.after} did not exit 0" >&2',
                      f"  {_not_started(run.name, f'run {run.after} did not exit 0')}",
                      "fi"]
        else:
            lines += ["", f"# Run {run.name}.", *train]
        earlier.add(run.name)
    return "\n".join(lines) + "\n"


def script_dir(args: argparse.Namespace) -> str:
    return os.path.join(os.path.abspath(args.root), "tpu")


def scripts(runs: Sequence[Run], sweep_name: str, args: argparse.Namespace,
            all_runs: Sequence[Run] | None = None) -> dict[str, str]:
    """Script path -> text for the slices of ``runs``."""
    git_url, git_ref = _git(args)
    return {os.path.join(script_dir(args), f"{name}.sh"): script(
        name, group, sweep_name, git_url, git_ref, os.path.abspath(args.root))
            for name, group in slices(runs, all_runs or runs, sweep_name).items()}


def launch(runs: Sequence[Run], all_runs: Sequence[Run], sweep_name: str,
           args: argparse.Namespace) -> int:
    """Writes the slices' scripts; with ``--execute`` runs them, ``--parallel`` at a time, each
    once the runs it waits for are done (see the module docstring)."""
    if args.execute and args.parallel < 1:
        raise SweepError(f"--parallel={args.parallel}; expected >= 1")
    written = scripts(runs, sweep_name, args, all_runs)
    os.makedirs(script_dir(args), exist_ok=True)
    for path, text in written.items():
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
        print(f"wrote {path}")
    if not args.execute:
        print("run them with --execute (or by hand); each resumes its runs when rerun")
        return 0
    groups = slices(runs, all_runs, sweep_name)
    by_name = {run.name: run for run in all_runs}
    slice_of = {run.name: name for name, group in groups.items() for run in group}
    todo = list(groups)
    active: dict[str, subprocess.Popen] = {}
    failed = blocked = 0

    def start(name: str) -> None:
        path = os.path.join(script_dir(args), f"{name}.sh")
        for run in groups[name]:
            if os.path.exists(sweep_state.exit_code_path(run)):
                os.remove(sweep_state.exit_code_path(run))
        with open(path[:-3] + ".log", "a") as log:
            # Its parents are done by sweep_state's rule (checked below), which the script's
            # own exit-code test must not overrule (a run that saved its last step, then
            # exited non-zero, is done).
            process = subprocess.Popen(["bash", path], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL,
                                       env={**os.environ, PARENTS_CHECKED: "1"})
        for run in groups[name]:
            sweep_state.record_job(run, "tpu_vm", name, pid=process.pid, script=path)
        active[name] = process
        print(f"{name}: started {path} (log {path[:-3]}.log)")

    while todo or active:
        for name in list(todo):
            if len(active) >= args.parallel:
                break
            parents = waits_for(groups[name])
            if any(slice_of.get(p) in active or slice_of.get(p) in todo for p in parents):
                continue  # its parents' slices have not finished yet
            todo.remove(name)
            states = {p: sweep_state.run_status(by_name[p], {}) if p in by_name else None
                      for p in parents}
            undone = {p: s for p, s in states.items() if s is None or s.state != "done"}
            if undone:
                blocked += 1
                # retry brings back a chain: failed runs, then the ones their jobs skipped
                again = all(s and (s.state in ("failed", "preempted")
                                   or sweep_state.skipped_by_job(s)) for s in undone.values())
                them = "it" if len(undone) == 1 else "them"
                print(f"{name}: not started: it waits for "
                      + ", ".join(f"run {p} ({s.state}{f', {s.detail}' if s.detail else ''})"
                                  if s else f"run {p} (not in this sweep)"
                                  for p, s in undone.items())
                      + f"; `python -m launch.sweep {'retry' if again else 'launch'} "
                      f"--root={args.root} --execute` "
                      + (f"retries {them} and then starts this slice" if again else
                         f"starts this slice once {them} {'is' if them == 'it' else 'are'} "
                         "done"))
                continue
            start(name)
        time.sleep(0.2)
        for name, process in list(active.items()):
            if process.poll() is not None:
                del active[name]
                failed += process.returncode != 0
                print(f"{name}: finished (exit {process.returncode})")
    return 1 if failed or blocked else 0
