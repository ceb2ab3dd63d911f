"""Backend selection, the report of what can run, and clear errors on bad input."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fused_attn

from .utils import SEVariant, se_sample

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import build_env  # noqa: E402


def _run_python(code, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_extension_is_built_where_required():
    """CI builds the extension and sets FUSED_ATTN_REQUIRE_EXTENSION=1, so a
    broken build cannot pass by testing the reference alone."""
    if os.environ.get("FUSED_ATTN_REQUIRE_EXTENSION") != "1":
        pytest.skip("FUSED_ATTN_REQUIRE_EXTENSION is not set")
    assert fused_attn.HAS_C, fused_attn.backends()["cpu"].detail
    assert fused_attn.backends()["cpu"].available
    if os.environ.get("FUSED_ATTN_REQUIRE_CUDA_BUILD") == "1":
        assert fused_attn._extension.CUDA_VERSION > 0, "the extension was built without its CUDA sources"
    # CI's compilers (GCC) take OpenMP: a build that lost it runs on one thread.
    if not build_env.openmp_off():
        assert fused_attn._extension.CPU_OPENMP, fused_attn.backends()["cpu"].detail


def test_cpu_status_says_when_the_kernels_run_on_one_thread(monkeypatch):
    if not fused_attn.HAS_C:
        pytest.skip("the extension is not built")
    from fused_attn import _backends, _extension

    monkeypatch.setattr(_extension, "CPU_OPENMP", False)
    assert "one thread: built without OpenMP" in _backends._cpu_status().detail
    monkeypatch.setattr(_extension, "CPU_OPENMP", True)
    assert "OpenMP" not in _backends._cpu_status().detail


def test_backends_report_every_backend_with_a_reason():
    report = fused_attn.backends()
    assert list(report) == list(fused_attn.BACKENDS)
    for name, status in report.items():
        assert status.name == name and status.detail
        assert str(status).startswith(name)
    assert report["reference"].available


def test_auto_picks_cpu_kernels_when_built():
    x, w1, b1, w2, b2 = se_sample((2, 8, 4, 4), torch.float32)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fused_attn.squeeze_excitation(x, w1, b1, w2, b2)
    called = {e.name for e in prof.events()}
    assert ("fused_attn::se_forward" in called) == fused_attn.HAS_C


@pytest.mark.skipif(not fused_attn.HAS_C, reason="needs the C++ extension")
def test_forced_cpu_runs_the_cpp_kernels_and_reference_does_not():
    x, w1, b1, w2, b2 = se_sample((2, 8, 4, 4), torch.float32)
    for backend, expect_op in (("cpu", True), ("reference", False)):
        with fused_attn.use_backend(backend), torch.profiler.profile() as prof:
            fused_attn.squeeze_excitation(x, w1, b1, w2, b2)
        assert ("fused_attn::se_forward" in {e.name for e in prof.events()}) == expect_op, backend


@pytest.mark.parametrize("backend", [n for n, s in fused_attn.backends().items() if "cpu" not in s.devices])
def test_forced_backend_that_cannot_run_raises(backend):
    x, w1, b1, w2, b2 = se_sample((1, 4, 2, 2), torch.float32)
    with fused_attn.use_backend(backend):
        with pytest.raises(RuntimeError, match=f"backend '{backend}' was requested but cannot run on cpu"):
            fused_attn.squeeze_excitation(x, w1, b1, w2, b2)


def test_triton_runs_on_cpu_only_under_the_interpreter():
    r = _run_python("""
        import torch, fused_attn
        status = fused_attn.backends()["triton"]
        print("cpu" in status.devices, status.detail)
        x = torch.randn(1, 4, 2, 2); w1 = torch.randn(4, 4)
        with fused_attn.use_backend("triton"):
            try:
                fused_attn.squeeze_excitation(x, w1, None, None, None)
            except RuntimeError as e:
                print("raised:", e)
    """, TRITON_INTERPRET="0", CUDA_VISIBLE_DEVICES="")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("False"), r.stdout
    assert "raised: fused_attn backend 'triton' was requested but cannot run on cpu" in r.stdout


def test_use_backend_nests_and_restores():
    before = fused_attn.current_choice()
    with fused_attn.use_backend("reference"):
        with fused_attn.use_backend("auto"):
            assert fused_attn.current_choice() == "auto"
        assert fused_attn.current_choice() == "reference"
    assert fused_attn.current_choice() == before
    with pytest.raises(ValueError, match="must be one of"):
        with fused_attn.use_backend("bogus"):
            pass


def test_environment_variable_forces_a_backend():
    r = _run_python("""
        import fused_attn
        from fused_attn import _backends
        print(_backends.resolve("cpu"))
    """, FUSED_ATTN_BACKEND="reference")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "reference"
    r = _run_python("import fused_attn", FUSED_ATTN_BACKEND="bogus")
    assert r.returncode != 0 and "must be one of" in r.stderr


def test_without_the_extension_the_package_imports_and_explains():
    r = _run_python("""
        import sys
        sys.modules["fused_attn._C"] = None   # as if it had never been built
        import torch, fused_attn
        assert not fused_attn.HAS_C
        print(fused_attn.backends()["cpu"].detail)
        x = torch.randn(2, 8, 3, 3); w1 = torch.randn(2, 8); w2 = torch.randn(8, 2)
        y = fused_attn.squeeze_excitation(x, w1, None, w2, None)
        ref = fused_attn.reference.squeeze_excitation(x, w1, None, w2, None)
        assert torch.equal(y, ref)
        with fused_attn.use_backend("cpu"):
            try:
                fused_attn.squeeze_excitation(x, w1, None, w2, None)
            except RuntimeError as e:
                print("raised:", e)
    """, FUSED_ATTN_BACKEND="auto")
    assert r.returncode == 0, r.stderr
    assert "pip install --no-build-isolation" in r.stdout
    assert "raised: fused_attn backend 'cpu' was requested" in r.stdout


# ---- bad input: a clear error naming the argument, on every backend ----------

def _bad_cases():
    x, w1, b1, w2, b2 = se_sample((2, 32, 3, 3), torch.float32)  # rd = 2
    return [
        ("x not 4-D", (x[0], w1, b1, w2, b2), {}, ValueError, "x must be 4-D"),
        ("C mismatch", (x, w1[:, :5], b1, w2, b2), {}, ValueError, r"fc1_weight must have shape \[rd, 32\]"),
        ("hidden mismatch", (x, w1, b1, w2[:, :1], b2), {}, ValueError, r"fc2_weight must have shape \[32, 2\]"),
        ("fc1_bias shape", (x, w1, b1[:1], w2, b2), {}, ValueError, "fc1_bias must have shape"),
        ("fc2_bias shape", (x, w1, b1, w2, b2[:3]), {}, ValueError, "fc2_bias must have shape"),
        ("weight dtype", (x, w1.double(), b1, w2, b2), {}, TypeError, "fc1_weight has dtype torch.float64"),
        ("integer x", (x.int(), w1.int(), b1, w2, b2), {}, TypeError, "x must be float32"),
        ("weight device", (x, w1.to("meta"), b1, w2, b2), {}, ValueError, "fc1_weight is on meta"),
        ("effective not square", (x, w1, b1, None, None), {}, ValueError, "effective SE"),
        ("conv weight 3x3", (x, torch.randn(2, 32, 3, 3), b1, w2, b2), {}, ValueError, r"\[out, in, 1, 1\]"),
        ("act", (x, w1, b1, w2, b2), {"act": "tanh"}, ValueError, "act must be one of"),
        ("gate", (x, w1, b1, w2, b2), {"gate": "softmax"}, ValueError, "gate must be one of"),
        ("pool", (x, w1, b1, w2, b2), {"pool": "max"}, ValueError, "pool must be one of"),
    ]


@pytest.mark.parametrize("backend", [n for n, s in fused_attn.backends().items() if "cpu" in s.devices])
@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_raises_clearly(case, backend):
    _, args, kwargs, exc, match = case
    before = [a.clone() if isinstance(a, torch.Tensor) and a.device.type != "meta" else a for a in args]
    with fused_attn.use_backend(backend), pytest.raises(exc, match=match):
        fused_attn.squeeze_excitation(*args, **kwargs)
    for a, b in zip(args, before, strict=True):
        if isinstance(a, torch.Tensor) and a.device.type != "meta":
            assert torch.equal(a, b)


@pytest.mark.skipif(not fused_attn.HAS_C, reason="needs the C++ extension")
def test_op_called_directly_checks_its_arguments():
    x, w1, b1, w2, b2 = se_sample((2, 8, 3, 3), torch.float32, variant=SEVariant())
    with pytest.raises(ValueError, match=r"fc1_weight must have shape \[rd, 8\]"):
        torch.ops.fused_attn.se_forward(x, w1[:, :3], b1, w2, b2, "relu", "sigmoid", "avg")
    with pytest.raises(ValueError, match="act must be one of"):
        torch.ops.fused_attn.se_forward(x, w1, b1, w2, b2, "tanh", "sigmoid", "avg")
    with pytest.raises(TypeError, match="fc2_weight has dtype"):
        torch.ops.fused_attn.se_forward(x, w1, b1, w2.double(), b2, "relu", "sigmoid", "avg")
