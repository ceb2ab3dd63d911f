"""The benchmark code runs and writes valid results (a tiny grid, briefly
timed). Benchmarks are not tests: nothing here asserts a time."""
import json
import math

import pytest

import fused_attn
from bench import eca as bench_eca
from bench import se as bench_se


@pytest.fixture(autouse=True)
def _restore_timing(monkeypatch):
    monkeypatch.setattr(bench_se, "ROTATE_BYTES", bench_se.ROTATE_BYTES)
    monkeypatch.setattr(bench_se, "TIMING", dict(bench_se.TIMING))


@pytest.mark.parametrize("module, prefix", [(bench_se, "se"), (bench_eca, "eca")], ids=["se", "eca"])
def test_benchmark_runs_and_writes_json_and_markdown(tmp_path, module, prefix):
    rows = module.main(["--smoke", "--out", str(tmp_path)])
    data = json.loads((tmp_path / f"{prefix}_smoke.json").read_text())
    assert data["mode"] == "smoke" and data["rows"] and len(data["rows"]) == len(rows) == 4
    env = data["environment"]
    assert env["torch"] and env["backend"] == fused_attn._backends.resolve("cpu")
    for row in data["rows"]:
        for provider in ("copy", "eager", "fused"):
            t = row[provider]
            assert 0 < t["q1_ms"] <= t["median_ms"] <= t["q3_ms"] and t["reps"] >= 2
        assert math.isfinite(row["max_abs_err"]) and row["max_abs_err"] < 1e-4
        assert {row["pass"] for row in data["rows"]} == {"fwd", "fwd+bwd"}
    md = (tmp_path / f"{prefix}_smoke.md").read_text()
    assert md.count("\n| fwd") == 4
