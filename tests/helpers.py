"""What several test files share: paths, references, small configs, subprocess plumbing."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_env(devices: int | None = None, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout importable, CPU only, and
    ``devices`` fake devices (None: whatever the caller's XLA_FLAGS say)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, **extra)
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def free_port() -> int:
    """A TCP port nothing listens on now (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(workdir) -> list[float]:
    """The training losses a run wrote to ``WORKDIR/metrics.jsonl``, in step order."""
    from launch import metrics as metrics_lib

    return [r["loss"] for r in metrics_lib.read_metrics(str(workdir)) if "loss" in r]


def step_losses(workdir) -> list[tuple[int, float]]:
    """(step, training loss) of every loss record a run wrote, in file order (a step logged
    twice, e.g. by a resume that did not truncate, shows up twice)."""
    from launch import metrics as metrics_lib

    return [(r["step"], r["loss"]) for r in metrics_lib.read_metrics(str(workdir))
            if "loss" in r]


def sweep_run(*args, env=None, check=True):
    """``python -m launch.sweep ARGS`` -> stdout (the test fails with stderr if it fails)."""
    result = subprocess.run([sys.executable, "-m", "launch.sweep", *args], cwd=REPO,
                            env=env or os.environ, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result if not check else result.stdout


def tiny(steps: int = 3, **sections):
    """configs/t5.py:tiny on synthetic data, no periodic eval/checkpoints, fixed peak;
    ``section__key=value`` overrides (e.g. ``train__nan_policy="skip"``)."""
    from configs import t5 as t5_configs

    config = t5_configs.get_config("tiny")
    config.data.source = "synthetic"
    config.train.steps = steps
    config.train.eval_every = 0
    config.train.peak_flops = 1e9
    config.train.tensorboard = False
    config.checkpoint.every = 0
    for key, value in sections.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def original_t5_preprocessors():
    """``t5/data/preprocessors.py`` of the installed ``t5`` package (the reference our T5
    objectives are held against), loaded once: gin refuses to register its configurables
    twice."""
    name = "t5_original_preprocessors"
    if name not in sys.modules:
        package_dir = pathlib.Path(importlib.util.find_spec("t5").submodule_search_locations[0])
        spec = importlib.util.spec_from_file_location(name, package_dir / "data/preprocessors.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]
