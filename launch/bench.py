r"""Training-step speed, side by side with Hugging Face's PyTorch models on the same CPU.

    python -m launch.bench                                  # every real case (long)
    python -m launch.bench --cases=t5_small,electra_small_pp --steps=5
    python -m launch.bench --cases=tiny_t5,tiny_electra --steps=3     # the smoke run (tests)
    python -m launch.bench --out=bench/   # JSON + markdown table (+ the data pipeline's report)

Per case, each side runs in its own fresh process (so peak RSS is that side's alone) on the
same synthetic ids: pretrax's jitted train step (``launch/step.py``, exactly what
``launch.train`` runs, Adafactor for T5, AdamW for ELECTRA) and, where installed, the peer:
``T5ForConditionalGeneration`` with ``transformers.optimization.Adafactor``, or
``ElectraForMaskedLM`` + ``ElectraForPreTraining`` (tied embeddings, the generator's logits at
every position as HF computes them, loss MLM + 50 BCE) with ``torch.optim.AdamW``. Peers are
optional: ``pip install -e ".[reference]"`` (transformers<5, torch==2.13.0 CPU).

Reported per side: step time min / median / max over ``--steps`` timed steps after
``--warmup`` untimed ones (each step waits for its result), tokens/s, the model FLOPs of a
step (``launch/metrics.py``'s convention, the same number for both sides), MFU against the
matmul peak measured in the same invocation and dtype (XLA's own 2048^2 matmul, and the best
library: numpy / PyTorch), compile time (pretrax: ``lower`` + ``compile``), peak RSS, and the
ratio pretrax / peer of median step times. pretrax's side runs as ``launch.train`` does, with
glibc's allocator tuned to keep step buffers mapped (``launch/platform.py``); the peer with
glibc's defaults unless ``--peer_host_allocator``. ``t5_compile_depth``
compiles T5 v1.1 small's step at 8 and 24 layers per stack with ``scan_layers`` (compile time
should not grow with depth).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from launch import platform as pretrax_platform


@dataclasses.dataclass(frozen=True)
class Case:
    config: str  # configs/FILE.py:VARIANT
    overrides: tuple[tuple[str, Any], ...]
    peer: str | None  # "t5" | "electra" | None
    what: str


def _t5(variant: str, batch: int, inputs: int, targets: int, dtype: str = "float32",
        **extra: Any) -> tuple[tuple[str, Any], ...]:
    return (("data.batch_size", batch), ("data.inputs_length", inputs),
            ("data.targets_length", targets), ("model.dtype", dtype), *extra.items())


CASES: dict[str, Case] = {
    "t5_small": Case("configs/t5.py:t5_1_1_small", _t5("t5_1_1_small", 8, 512, 114), "t5",
                     "T5 v1.1 small, batch 8, 512/114, float32"),
    "t5_small_bf16": Case("configs/t5.py:t5_1_1_small",
                          _t5("t5_1_1_small", 8, 512, 114, "bfloat16"), "t5",
                          "T5 v1.1 small, batch 8, 512/114, bfloat16 compute (peer float32)"),
    "electra_small_pp": Case("configs/electra.py:electra_small_pp",
                             (("data.batch_size", 32), ("data.inputs_length", 128)), "electra",
                             "ELECTRA small++ RTD (full-size generator), batch 32 x 128"),
    "t5_base": Case("configs/t5.py:t5_1_1_base", _t5("t5_1_1_base", 8, 512, 114), "t5",
                    "T5 v1.1 base, batch 8, 512/114, float32"),
    # Smoke cases (tests): seconds each.
    "tiny_t5": Case("configs/t5.py:tiny", (), "t5", "tiny T5, batch 8, 64/14"),
    "tiny_electra": Case("configs/electra.py:tiny", (), "electra", "tiny ELECTRA, batch 8 x 64"),
}
DEFAULT_CASES = ("t5_small", "t5_small_bf16", "electra_small_pp", "t5_base", "t5_compile_depth")


# ---------------------------------------------------------------------------------------------
# Children: one side of one case per process.
# ---------------------------------------------------------------------------------------------
def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _times(step: Callable[[], None], warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _config(case: Case, extra: dict[str, Any] | None = None):
    from launch import sweep_spec

    config = sweep_spec.load_config(case.config)  # locked: unknown keys fail with a hint
    for key, value in (*case.overrides, *(extra or {}).items(),
                       ("train.peak_flops", 1.0),  # not measured at build time
                       ("train.compilation_cache_dir", "")):
        sweep_spec.apply_override(config, f"config.{key}", value, f"bench case {case.config}")
    return config


def run_pretrax(case: Case, warmup: int, steps: int) -> dict[str, Any]:
    import jax

    from launch import step as step_lib

    config = _config(case)
    program = step_lib.build(config)
    objective = program.objective
    rng = np.random.default_rng(0)
    batches = [jax.device_put(objective.synthetic_batch(rng), program.batch_sharding)
               for _ in range(2)]
    state = program.init_state()
    start = time.perf_counter()
    compiled = program.train_step.lower(state, batches[0]).compile()
    compile_seconds = time.perf_counter() - start
    holder = {"state": state, "i": 0}

    def step():
        holder["state"], metrics = compiled(holder["state"], batches[holder["i"] % 2])
        holder["i"] += 1
        jax.block_until_ready(metrics)

    times = _times(step, warmup, steps)
    return {"times": times, "compile_seconds": compile_seconds,
            "flops_per_step": objective.flops_per_step,
            "tokens_per_step": objective.tokens_per_step, "peak_rss": _peak_rss_bytes(),
            "dtype": config.model.dtype}


def run_compile_depth() -> dict[str, Any]:
    import jax

    from launch import step as step_lib

    out = {}
    for layers in (8, 24):
        case = CASES["t5_small"]
        config = _config(case, {"model.num_layers": layers, "model.num_decoder_layers": layers,
                                "model.scan_layers": True})
        program = step_lib.build(config)
        start = time.perf_counter()
        program.train_step.lower(program.abstract_state, program.abstract_batch()).compile()
        out[f"compile_seconds_{layers}"] = time.perf_counter() - start
        jax.clear_caches()
    return out


def _torch_threads() -> None:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)


def run_peer(case: Case, warmup: int, steps: int) -> dict[str, Any]:
    import torch

    _torch_threads()
    torch.manual_seed(0)
    from objectives import registry

    config = _config(case)
    objective = registry.build(config)
    batch = objective.synthetic_batch(np.random.default_rng(0))
    if case.peer == "t5":
        step = _t5_peer(objective, config, batch)
    else:
        step = _electra_peer(objective, config, batch)
    times = _times(step, warmup, steps)
    return {"times": times, "peak_rss": _peak_rss_bytes(), "dtype": "float32",
            "versions": {"torch": torch.__version__,
                         "transformers": __import__("transformers").__version__}}


def _t5_peer(objective, config, batch) -> Callable[[], None]:
    import torch
    import transformers
    from transformers.optimization import Adafactor

    from modeling import hf

    cfg = objective.model.config
    model = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**hf.t5_config_to_hf(cfg)))
    model.train()
    opt = Adafactor(model.parameters(), lr=config.optimizer.learning_rate, relative_step=False,
                    scale_parameter=True, warmup_init=False, clip_threshold=1.0)
    inputs = torch.as_tensor(batch["encoder_input_tokens"], dtype=torch.long)
    labels = torch.as_tensor(batch["decoder_target_tokens"], dtype=torch.long)

    def step():
        loss = model(input_ids=inputs, attention_mask=(inputs != 0).long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _electra_peer(objective, config, batch) -> Callable[[], None]:
    import torch
    import transformers

    from modeling import hf_electra

    ecfg = objective.model.config
    disc_cfg = transformers.ElectraConfig(
        **hf_electra.config_to_hf(ecfg.discriminator, "ElectraForPreTraining"))
    gen_cfg = transformers.ElectraConfig(
        **hf_electra.config_to_hf(ecfg.generator_config(), "ElectraForMaskedLM"))
    generator = transformers.ElectraForMaskedLM(gen_cfg)
    discriminator = transformers.ElectraForPreTraining(disc_cfg)
    # Tied token/position/type embeddings, as ELECTRA trains them.
    discriminator.electra.embeddings = generator.electra.embeddings
    generator.train()
    discriminator.train()
    params = {id(p): p for p in [*generator.parameters(), *discriminator.parameters()]}
    opt = torch.optim.AdamW(list(params.values()), lr=config.optimizer.learning_rate,
                            eps=1e-6, weight_decay=0.01)
    ids = torch.as_tensor(batch["encoder_input_tokens"], dtype=torch.long)
    special = objective.special_ids
    real = ids > max(special.values())
    generator_rng = torch.Generator().manual_seed(0)

    def step():
        chosen = (torch.rand(ids.shape, generator=generator_rng) < config.objective.mask_prob)
        chosen &= real
        masked = torch.where(chosen, torch.full_like(ids, special["mask"]), ids)
        out = generator(input_ids=masked, attention_mask=(ids != 0).long(),
                        labels=torch.where(chosen, ids, torch.full_like(ids, -100)))
        with torch.no_grad():
            samples = torch.distributions.Categorical(logits=out.logits[chosen]).sample()
        corrupted = ids.clone()
        corrupted[chosen] = samples
        disc = discriminator(input_ids=corrupted, attention_mask=(ids != 0).long(),
                             labels=(corrupted != ids).long())
        loss = out.loss + config.objective.disc_weight * disc.loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run_peaks() -> dict[str, float]:
    """GFLOP/s of a 2048^2 matmul: XLA (float32, bfloat16 in / float32 out), numpy, PyTorch."""
    from launch import metrics as metrics_lib

    size = 2048
    out = {"xla_float32": metrics_lib.measure_peak_flops("float32", size),
           "xla_bfloat16": metrics_lib.measure_peak_flops("bfloat16", size)}
    a = np.random.default_rng(0).standard_normal((size, size), np.float32)
    out["numpy_float32"] = 2 * size**3 / min(_times(lambda: a @ a, 1, 3))
    try:
        import torch

        _torch_threads()
        t = torch.from_numpy(a)
        out["torch_float32"] = 2 * size**3 / min(_times(lambda: t @ t, 1, 3))
        tb = t.to(torch.bfloat16)
        out["torch_bfloat16"] = 2 * size**3 / min(_times(lambda: tb @ tb, 1, 3))
    except ImportError:
        pass
    return out


def _child(kind: str, name: str, warmup: int, steps: int) -> None:
    if kind == "peaks":
        result = run_peaks()
    elif kind == "depth":
        result = run_compile_depth()
    elif kind == "pretrax":
        result = run_pretrax(CASES[name], warmup, steps)
    else:
        result = run_peer(CASES[name], warmup, steps)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


def _spawn(kind: str, name: str, warmup: int, steps: int, timeout: float,
           host_allocator: bool = False) -> dict[str, Any]:
    command = [sys.executable, "-m", "launch.bench", f"--_child={kind}:{name}",
               f"--warmup={warmup}", f"--steps={steps}"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = _side_env(host_allocator)
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=repo)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {done.returncode}: {tail[0][:300]}"}


# ---------------------------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------------------------
def cpu_description() -> str:
    """``lscpu``'s model name and the flags that decide matmul speed."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except (OSError, subprocess.SubprocessError):
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return (f"{model}, {os.cpu_count()} CPUs, flags: "
            f"{' '.join(f for f in wanted if f in flags) or 'none of ' + '/'.join(wanted)}")


def _side_env(host_allocator: bool) -> dict[str, str]:
    """A side's environment: pretrax's launchers tune glibc's malloc (launch/platform.py)."""
    env = dict(os.environ)
    return (pretrax_platform.host_allocator_env(env) or env) if host_allocator else env


def _allocator(host_allocator: bool) -> str:
    tunables = _side_env(host_allocator).get("GLIBC_TUNABLES", "")
    return f"GLIBC_TUNABLES={tunables}" if tunables else "glibc defaults"


def _side_summary(result: dict[str, Any], flops: float, tokens: int,
                  peaks: dict[str, float]) -> dict[str, Any]:
    times = result["times"]
    median = statistics.median(times)
    dtype = "bfloat16" if result.get("dtype") == "bfloat16" else "float32"
    xla = peaks.get(f"xla_{dtype}", 0.0)
    library = max((v for k, v in peaks.items() if not k.startswith("xla") and
                   k.endswith(dtype)), default=0.0)
    achieved = flops / median
    return {"min_s": min(times), "median_s": median, "max_s": max(times),
            "tokens_per_s": tokens / median, "gflops_per_s": achieved / 1e9,
            "mfu_xla": achieved / xla if xla else None,
            "mfu_library": achieved / library if library else None,
            "peak_rss_gb": result["peak_rss"] / 1e9,
            "compile_s": result.get("compile_seconds")}


def _fmt(value: Any, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def markdown(report: dict[str, Any]) -> str:
    peaks = report["peaks"]
    lines = [f"Measured {report['date']} on {report['cpu']}; {report['steps']} timed steps "
             f"after {report['warmup']} warm-up (each side in its own process). Host "
             f"allocator: pretrax {report['allocator']['pretrax']}, peer "
             f"{report['allocator']['peer']}.", "",
             "Matmul peak (2048^2), GFLOP/s: " + ", ".join(
                 f"{k.replace('_', ' ')} {v / 1e9:.0f}" for k, v in peaks.items()), "",
             "| case | side | step s (min / median / max) | tokens/s | GFLOP/s | MFU vs XLA / "
             "best library | compile s | peak RSS GB | pretrax / peer |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, case in report["cases"].items():
        if "compile_seconds_8" in case:
            lines.append(f"| {name} | pretrax, scan_layers | compile 8 layers "
                         f"{case['compile_seconds_8']:.1f} s, 24 layers "
                         f"{case['compile_seconds_24']:.1f} s "
                         f"({case['compile_seconds_24'] / case['compile_seconds_8']:.2f}x) "
                         "| | | | | | |")
            continue
        for side in ("pretrax", "peer"):
            s = case.get(side)
            if s is None:
                continue
            if "error" in s:
                lines.append(f"| {name} | {side} | {s['error']} | | | | | | |")
                continue
            ratio = f"**{case['ratio']:.2f}x**" if side == "pretrax" and case.get("ratio") else ""
            lines.append(
                f"| {name} | {side} | {s['min_s']:.3f} / {s['median_s']:.3f} / {s['max_s']:.3f}"
                f" | {s['tokens_per_s']:,.0f} | {s['gflops_per_s']:.1f} | "
                f"{_fmt(s['mfu_xla'], '.1%')} / {_fmt(s['mfu_library'], '.1%')} | "
                f"{_fmt(s['compile_s'], '.1f')} | {s['peak_rss_gb']:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help=f"comma-separated; known: {', '.join([*CASES, 't5_compile_depth'])}"
                             ", data (the input pipeline's data.benchmark)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no_peer", action="store_true", help="pretrax only")
    parser.add_argument("--peer_host_allocator", action="store_true",
                        help="run the peer under pretrax's host allocator setting too "
                             "(launch/platform.py)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per side")
    parser.add_argument("--out", default="", help="folder for bench.json and bench.md")
    parser.add_argument("--_child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        kind, _, name = args._child.partition(":")
        _child(kind, name, args.warmup, args.steps)
        return {}
    names = [n for n in args.cases.split(",") if n]
    unknown = [n for n in names if n not in CASES and n not in ("t5_compile_depth", "data")]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {[*CASES, 't5_compile_depth', 'data']}")
    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(), "cpu": cpu_description(),
        "steps": args.steps, "warmup": args.warmup, "cases": {},
        "allocator": {"pretrax": _allocator(True), "peer": _allocator(args.peer_host_allocator)}}
    print(f"CPU: {report['cpu']}", flush=True)
    report["peaks"] = peaks = _spawn("peaks", "", 0, 0, args.timeout)
    print("matmul peaks GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()
                                               if isinstance(v, float)), flush=True)
    for name in names:
        if name == "data":
            continue
        if name == "t5_compile_depth":
            report["cases"][name] = _spawn("depth", "", 0, 0, args.timeout, host_allocator=True)
            print(f"{name}: {report['cases'][name]}", flush=True)
            continue
        case, entry = CASES[name], {}
        ours = _spawn("pretrax", name, args.warmup, args.steps, args.timeout, host_allocator=True)
        if "error" in ours:
            entry["pretrax"] = ours
        else:
            flops, tokens = ours["flops_per_step"], ours["tokens_per_step"]
            entry["pretrax"] = _side_summary(ours, flops, tokens, peaks)
        if case.peer and not args.no_peer and "error" not in ours:
            theirs = _spawn("peer", name, args.warmup, args.steps, args.timeout,
                            host_allocator=args.peer_host_allocator)
            if "error" in theirs:
                entry["peer"] = theirs
            else:
                entry["peer"] = _side_summary(theirs, flops, tokens, peaks)
                entry["peer_versions"] = theirs["versions"]
                entry["ratio"] = entry["peer"]["median_s"] / entry["pretrax"]["median_s"]
        report["cases"][name] = entry
        summary = entry["pretrax"].get("error") or (
            f"{entry['pretrax']['median_s']:.3f} s/step, "
            f"{entry['pretrax']['tokens_per_s']:,.0f} tokens/s")
        if "ratio" in entry:
            summary += f"; peer {entry['peer']['median_s']:.3f} s/step; {entry['ratio']:.2f}x"
        print(f"{name} ({case.what}): {summary}", flush=True)
    text = markdown(report)
    if "data" in names:
        data = subprocess.run([sys.executable, "-m", "data.benchmark", "--examples=1000",
                               "--repeats=3"], capture_output=True, text=True)
        report["data"] = data.stdout
        text += "\nInput pipeline (`python -m data.benchmark`):\n\n```\n" + data.stdout + "```\n"
    print("\n" + text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench.json"), "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(args.out, "bench.md"), "w") as f:
            f.write(text)
    return report


if __name__ == "__main__":
    main()
