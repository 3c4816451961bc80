"""launch.bench's smoke run: both sides of the tiny cases, the report's numbers and files."""

import json
import subprocess
import sys

from tests.helpers import REPO, cli_env


def test_bench_smoke_writes_both_sides_and_the_ratio(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "launch.bench", "--cases=tiny_t5,tiny_electra", "--steps=2",
         "--warmup=1", f"--out={tmp_path}"],
        cwd=REPO, env=cli_env(1), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["cpu"] and report["peaks"]["xla_float32"] > 1e8
    for name in ("tiny_t5", "tiny_electra"):
        case = report["cases"][name]
        ours, peer = case["pretrax"], case["peer"]
        assert "error" not in ours and "error" not in peer, case
        assert 0 < ours["min_s"] <= ours["median_s"] <= ours["max_s"]
        assert ours["compile_s"] > 0 and ours["peak_rss_gb"] > 0.1 and peer["peak_rss_gb"] > 0.1
        # The ratio is the peer's median step time over ours; MFU = FLOPs / time / peak.
        assert abs(case["ratio"] - peer["median_s"] / ours["median_s"]) < 1e-9
        assert abs(ours["mfu_xla"] - ours["gflops_per_s"] * 1e9
                   / report["peaks"]["xla_float32"]) < 1e-9
    table = (tmp_path / "bench.md").read_text()
    assert "| tiny_t5 | pretrax |" in table and "| tiny_electra | peer |" in table


def test_data_benchmark_runs_both_pipelines():
    """`python -m data.benchmark` (the README's input-speed numbers) on a short budget."""
    result = subprocess.run(
        [sys.executable, "-m", "data.benchmark", "--examples=200", "--repeats=1",
         "--skip_reference"],
        cwd=REPO, env=cli_env(1), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rates = [float(line.split("median")[1].split("ex/s")[0]) for line in
             result.stdout.splitlines() if "pretrax fast path" in line]
    assert len(rates) == 4 and min(rates) > 100, result.stdout
