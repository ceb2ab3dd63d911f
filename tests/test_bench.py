"""The benchmark code runs and writes valid results (a tiny grid, briefly
timed). Benchmarks are not tests: nothing here asserts a time."""
import json
import os
import math

import pytest
import torch

import fused_attn
from bench import ops as bench_ops
from bench import readme_table


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One --smoke run of every op on the CPU (one torch.compile in all)."""
    out = tmp_path_factory.mktemp("bench")
    rows = bench_ops.main(["--smoke", "--device", "cpu", "--out", str(out)])
    return out, rows


def test_json_has_every_number_and_the_environment(smoke):
    out, rows = smoke
    data = json.loads((out / "ops_smoke.json").read_text())
    assert data["mode"] == "smoke" and len(data["rows"]) == len(rows) == 2 * len(bench_ops.OPS)
    env = data["environment"]
    for key in ("date", "device", "device_name", "cpu", "threads", "torch", "cuda", "triton", "timm",
                "fused_attn_backends", "fused_backends", "compile_modes", "timing"):
        assert key in env, key
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    assert set(env["fused_attn_backends"]) == set(fused_attn.backends())
    assert "triton" not in env["fused_backends"]  # never the interpreter in a benchmark
    assert {r["op"] for r in data["rows"]} == set(bench_ops.OPS)
    assert {r["pass"] for r in data["rows"]} == {"fwd", "fwd+bwd"}
    compiled = 0
    for row in data["rows"]:
        providers = row["providers"]
        assert {"copy", "eager"} | set(env["fused_backends"]) <= set(providers)
        compiled += "compile" in providers
        for name, t in providers.items():
            assert 0 < t["q1_ms"] <= t["median_ms"] <= t["q3_ms"], name
            assert t["reps"] >= 2 and t["gbps"] > 0 and t["pct_copy_bw"] > 0
        assert set(row["errors"]) == set(providers) - {"copy"}
        for name, err in row["errors"].items():
            assert err and all(math.isfinite(e) and 0 <= e < 1e-4 for e in err.values()), (name, err)
        if row["pass"] == "fwd+bwd":
            assert {"out", "dx", "dweight_rel"} <= set(row["errors"][row["best_fused"]])
        assert row["best_fused"] in env["fused_backends"]
        assert row["speedup_vs_eager"] > 0 and row["fused_pct_copy_bw"] > 0
        assert row["floor_bytes"] == (5 if row["pass"] == "fwd+bwd" else 2) * row["x_bytes"]
    assert compiled == 1  # --smoke compiles one row: it checks the path, compiling is slow


def test_markdown_and_png(smoke):
    out, rows = smoke
    md = (out / "ops_smoke.md").read_text()
    assert md.count("\n## ") == 2 * len(bench_ops.OPS)  # a table per op and pass
    assert md.count("| smoke |") == len(rows)
    png = (out / "ops_smoke.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and b"Matplotlib" in png[:4096]


def test_readme_table_from_ops_quick(smoke, tmp_path):
    out, rows = smoke
    folder = tmp_path / "bench" / "results" / "cpu-test"
    folder.mkdir(parents=True)
    (folder / "ops_quick.json").write_text((out / "ops_smoke.json").read_text())
    text = readme_table.section(str(tmp_path))
    for op in bench_ops.OPS:
        assert f"`--op {op}`" in text
    assert text.count("\n| fwd") == len(rows)
    assert "No results" in readme_table.section(str(tmp_path / "empty"))


def test_grids():
    ops = list(bench_ops.OPS.values())
    quick = bench_ops.cases(ops, "quick", "cpu")
    assert {(c.N, c.dtype) for c in quick} == {(8, "float32")}
    assert {c.site.net for c in quick} == {"resnet50"} and {c.layout for c in quick} == set(bench_ops.LAYOUTS)
    full = bench_ops.cases(ops, "full", "cuda")
    assert {c.N for c in full} == {1, 32, 128} and {c.dtype for c in full} == set(bench_ops.DTYPES)
    assert {(c.site.C, c.site.H, c.site.W) for c in full} >= {(256, 200, 304), (1001, 14, 14), (64, 112, 112)}
    assert {c.dtype for c in bench_ops.cases(ops, "quick", "cpu", ["bfloat16"])} == {"bfloat16"}
    gpu_quick = bench_ops.cases(ops, "quick", "cuda")
    assert any(c.N == 1 and c.site.C == 2048 for c in gpu_quick) and {c.N for c in gpu_quick} == {1, 128}
    for op in ops:  # every op has the ResNet-50 sites --quick runs, and a smoke site
        assert any(s.net in bench_ops.QUICK_NETS for s in op.sites) and op.smoke.C * op.smoke.H < 1000


def test_op_selection_and_stem(tmp_path):
    rows = bench_ops.main(["--smoke", "--device", "cpu", "--op", "eca", "--compile", "none", "--no-plot",
                           "--out", str(tmp_path)])
    assert {r["op"] for r in rows} == {"eca"} and all("compile" not in r["providers"] for r in rows)
    assert (tmp_path / "ops_smoke_eca_nocompile.json").is_file()
    assert not (tmp_path / "ops_smoke.json").exists() and not (tmp_path / "ops_smoke_eca.json").exists()
    rows = bench_ops.main(["--smoke", "--device", "cpu", "--op", "se", "--compile", "none", "--no-plot",
                           "--dtype", "bfloat16", "--out", str(tmp_path)])
    assert {r["dtype"] for r in rows} == {"bfloat16"}
    assert (tmp_path / "ops_smoke_se_bfloat16_nocompile.json").is_file()
    with pytest.raises(SystemExit):
        bench_ops.main(["--smoke", "--op", "nope", "--no-save"])
    with pytest.raises(SystemExit):
        bench_ops.main(["--smoke", "--dtype", "float8", "--no-save"])


def test_overhead_benchmark_writes_every_layer(tmp_path):
    from bench import overhead

    overhead.main(["--smoke", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "overhead.json").read_text())
    assert data["mode"] == "smoke" and data["environment"]["torch"]
    rows = data["rows"]["per_call"]
    assert [(r["op"], r["grad"]) for r in rows] == [(op, g) for op in ("se", "eca", "cbam") for g in (False, True)]
    for r in rows:
        assert set(r["times"]) == {"eager", "module", "functional", "op"}
        for t in r["times"].values():
            assert 0 < t["q1_us"] <= t["median_us"] <= t["q3_us"] and t["calls"] > 0
    md = (tmp_path / "overhead.md").read_text()
    assert "| cbam | no_grad |" in md and "| se | on |" in md


def test_stream_ab_runs_every_threshold_and_restores_the_knob(tmp_path, monkeypatch):
    from bench import ab_cpu_stream

    monkeypatch.setenv(ab_cpu_stream.ENV, "12345")
    out = tmp_path / "ab.md"
    ab_cpu_stream.main(["--models", "seresnet18", "--image-size", "32", "--batch", "2", "--rounds", "1",
                        "--min-seconds", "0.01", "--thresholds", "8388608,off", "--out", str(out)])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| seresnet18 |")]
    assert [r.split("|")[2].strip() for r in rows] == ["eager", "fused@8388608", "fused@off"]
    assert os.environ[ab_cpu_stream.ENV] == "12345"


def test_cbam_order_ab_writes_every_row_and_restores_the_knob(tmp_path, monkeypatch):
    """bench.ab_cbam_order's plumbing on the CPU (the orders only differ on CUDA): every
    dtype × layout row with a time in each column, the order's variable as it was."""
    from bench import ab_cbam_order

    monkeypatch.setenv(ab_cbam_order.KEY, "forward")
    ab_cbam_order.main(["--device", "cpu", "--out", str(tmp_path)])
    lines = (tmp_path / "ab_cbam_order.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| N×C×H×W"))
    assert header.split("|")[5:10] == [" copy ", " fwd forward ", " fwd alternate ", " bwd forward ",
                                        " bwd alternate "]
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| 2×32×7×7 |")]
    assert sorted((r[1].strip(), r[2].strip()) for r in rows) == sorted(
        (d, f) for d in ("bfloat16", "float32") for f in ("cl", "nchw"))
    for r in rows:
        assert all(float(v) > 0 for v in r[4:])
    assert os.environ[ab_cbam_order.KEY] == "forward"
