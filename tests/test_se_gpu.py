"""SE on CUDA tensors: every GPU backend (the CUDA kernels, Triton) against the
reference over the whole matrix, plus what only a GPU has: vectorized and
unaligned accesses, CUDA graph capture and replay, streams, 64-bit indexing.
Skipped without a GPU (conftest.py); bench/gpu_check.sh runs it on one."""
import os

import pytest
import torch

import fused_attn

from .test_se import check_outputs_round_as_torch
from .test_se_ops import OPCHECK_CASES, check_compile_fullgraph
from .utils import (DTYPES, FORMATS, SHAPES, VARIANTS, SEVariant, assert_close, check_se_against_reference, ids,
                    cuda_kernels_launched, cuda_path_fixture, gpu_backend_fixture, misaligned_copy,
                    require_cuda_backend, reference64, se_kwargs, se_sample)

pytestmark = pytest.mark.gpu


# Beyond the odd shapes: rows that take the 16-byte path in one layout or both
# (H·W and C multiples of 8), several blocks of channels in channels_last, and
# a ResNet-50 site.
GPU_SHAPES = SHAPES + [(4, 256, 14, 14), (2, 96, 8, 8), (3, 520, 9, 9), (2, 64, 56, 56)]


backend = gpu_backend_fixture()


def run_se(inputs, variant):
    return fused_attn.squeeze_excitation(*inputs, **se_kwargs(variant))


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ids(DTYPES))
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=ids(GPU_SHAPES))
def test_forward_backward_match_reference(backend, shape, dtype, memory_format, variant):
    check_se_against_reference(shape, dtype, memory_format, variant, device="cuda", seed=hash(shape) % 1000)


# The CUDA backend's two SE paths (csrc/cuda/se_cuda.cpp), each forced: the
# single launch (one cluster per group of samples, the slices in shared
# memory) and the two-phase passes. The shapes: N = 1 at the largest
# ResNet-50 site (one group: the weight gradients written in place; the
# effective SE's [C, C] weights too big to stage, read from global memory),
# clusters of 16 blocks, several small samples per group and more than one
# group (the weight-gradient partials), channels that do not divide evenly
# between the blocks (a cluster of 15), H·W = 1, odd sizes. Every one of
# them has a single-launch plan on an H100/H200 in every dtype and variant.
PATH_SHAPES = [(1, 2048, 7, 7), (2, 256, 28, 28), (12, 64, 2, 2), (3, 96, 8, 8), (1, 130, 13, 17),
               (2, 1001, 1, 1), (5, 3, 7, 7)]


se_cuda_path = cuda_path_fixture()


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", PATH_SHAPES, ids=ids(PATH_SHAPES))
def test_cuda_paths_match_reference(se_cuda_path, shape, dtype, memory_format, variant):
    check_se_against_reference(shape, dtype, memory_format, variant, device="cuda", seed=sum(shape))


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_outputs_round_to_the_dtype_as_torch_does(backend, dtype, memory_format):
    """Each GPU backend's rescale rounds x·g (float32) once to x's dtype, bit
    for bit as torch does (test_se.py's check; the interpreter cannot show
    the Triton kernels' bfloat16 rounding)."""
    check_outputs_round_as_torch(backend, dtype, memory_format, device="cuda")


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cuda_paths_round_as_torch(se_cuda_path, dtype, memory_format):
    check_outputs_round_as_torch("cuda", dtype, memory_format, device="cuda")


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[5]], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_cuda_paths_resnet_site(se_cuda_path, memory_format, variant):
    """The first ResNet-50 SE site in bf16: a sample is 1.6 MB, so the single
    launch holds it in a cluster of 8-16 blocks of about 100-200 KB each."""
    check_se_against_reference((2, 256, 56, 56), torch.bfloat16, memory_format, variant, device="cuda", seed=12)


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_cuda_paths_unaligned_x(se_cuda_path, memory_format):
    """The scalar copies of the single launch (x one element past a 16-byte
    boundary) and a sliced x."""
    variant = SEVariant(act="silu", pool="avgmax")
    x, w1, b1, w2, b2 = se_sample((3, 64, 8, 8), torch.bfloat16, memory_format, variant, seed=4, device="cuda")
    for xin in (misaligned_copy(x), x[:, 1:, 1:, :]):
        xin = xin.detach().requires_grad_()
        C = xin.shape[1]
        ws = (w1[:, :C].contiguous(), b1, w2[:C].contiguous(), b2[:C].contiguous())
        y = run_se((xin, *ws), variant)
        y_ref, leaves = reference64(xin, *ws, variant)
        assert_close(y, y_ref, torch.bfloat16)
        dy = torch.randn(y.shape, device="cuda").to(torch.bfloat16)
        grads = torch.autograd.grad(y, [xin, ws[0], ws[2]], dy)
        grads_ref = torch.autograd.grad(y_ref, [leaves[0], leaves[1], leaves[3]], dy.double())
        for a, b in zip(grads, grads_ref, strict=True):
            assert_close(a, b, torch.bfloat16, grad=True)


@pytest.mark.parametrize("shape", [(1, 2048, 7, 7), (12, 64, 2, 2), (8, 256, 28, 28)], ids=str)
def test_cuda_paths_deterministic(se_cuda_path, shape):
    variant = SEVariant(act="silu", pool="avgmax")
    inputs = se_sample(shape, torch.bfloat16, torch.channels_last, variant, seed=5, requires_grad=True,
                       device="cuda")
    dy = torch.randn(inputs[0].shape, device="cuda").to(torch.bfloat16).to(memory_format=torch.channels_last)
    first = _forward_backward(inputs, variant, dy)
    for _ in range(3):
        for a, b in zip(first, _forward_backward(inputs, variant, dy), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_one_launch_per_direction_at_n1(monkeypatch, dtype, memory_format):
    """Issue 3's N = 1 target at the last ResNet-50 site: se_forward and
    se_backward each launch one kernel (auto path, outputs not poisoned)."""
    require_cuda_backend(single_launch=True)
    monkeypatch.delenv("FUSED_ATTN_DEBUG_POISON", raising=False)
    monkeypatch.delenv("FUSED_ATTN_CUDA_PATH", raising=False)
    variant = SEVariant()
    x, w1, b1, w2, b2 = se_sample((1, 2048, 7, 7), dtype, memory_format, variant, seed=3, device="cuda")
    args = (x, w1, b1, w2, b2, variant.act, variant.gate, variant.pool)
    outs = {}
    fwd = cuda_kernels_launched(lambda: outs.update(f=torch.ops.fused_attn.se_forward(*args)))
    assert len(fwd) == 1, fwd
    _, pooled, maxv, hidden, logits = outs["f"]
    dy = torch.randn_like(x)
    bwd = cuda_kernels_launched(lambda: torch.ops.fused_attn.se_backward(
        dy, x, w1, w2, pooled, maxv, hidden, logits, variant.act, variant.gate, variant.pool, True, True))
    assert len(bwd) == 1, bwd


# The two-phase forward's excitation (csrc/cuda/se_forward.cu): one
# cooperative launch by default, a launch per phase with
# FUSED_ATTN_CUDA_EXCITE=launches. The shapes: the last ResNet-50 site at
# N = 32 (channels_last pools it in two segments: the combine is a phase) and
# 128 (more tiles than resident blocks), NCHW with segments, effective SE.
COOP_CASES = [((32, 2048, 7, 7), torch.bfloat16, torch.channels_last, SEVariant()),
              ((128, 2048, 7, 7), torch.bfloat16, torch.contiguous_format, SEVariant(act="silu")),
              ((2, 64, 40, 40), torch.float32, torch.contiguous_format, SEVariant(pool="avgmax")),
              ((6, 96, 17, 17), torch.float16, torch.channels_last, SEVariant(effective=True, pool="avgmax"))]


@pytest.mark.parametrize("case", COOP_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{'cl' if c[2] is torch.channels_last else 'nchw'}")
def test_two_phase_forward_cooperative_excitation(monkeypatch, case):
    """Three launches (pool, the cooperative excitation, rescale; effective SE
    without segments: its one layer), with the bits of the launch per phase,
    which takes four or five."""
    require_cuda_backend()
    shape, dtype, memory_format, variant = case
    monkeypatch.delenv("FUSED_ATTN_DEBUG_POISON", raising=False)
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "two_phase")
    args = (*se_sample(shape, dtype, memory_format, variant, seed=11, device="cuda"), variant.act, variant.gate,
            variant.pool)
    runs = {}
    for mode in ("launches", "cooperative"):
        monkeypatch.setenv("FUSED_ATTN_CUDA_EXCITE", mode)
        torch.ops.fused_attn.se_forward(*args)  # first call: the occupancy query
        names = cuda_kernels_launched(lambda: runs.update({mode: torch.ops.fused_attn.se_forward(*args)}))
        runs[mode + " launches"] = names
    assert len(runs["cooperative launches"]) == 3, runs["cooperative launches"]
    assert len(runs["launches launches"]) >= 3, runs["launches launches"]
    for a, b in zip(runs["launches"], runs["cooperative"], strict=True):
        assert torch.equal(a, b)
    with fused_attn.use_backend("cuda"):  # cooperative (the default), forward and backward
        check_se_against_reference(shape, dtype, memory_format, variant, device="cuda", seed=12)


def test_two_phase_cooperative_excitation_in_a_cuda_graph(monkeypatch):
    """The cooperative launch captured in a CUDA graph (its occupancy asked
    first inside the capture, in a fresh process's first call for the dtype
    when this test runs alone) and replayed on new inputs: eager's bits."""
    require_cuda_backend()
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "two_phase")
    monkeypatch.setenv("FUSED_ATTN_CUDA_EXCITE", "cooperative")
    variant = SEVariant(pool="avgmax")
    shape = (32, 2048, 7, 7)  # channels_last pools it in segments: the combine is a phase
    static = list(se_sample(shape, torch.float16, torch.channels_last, variant, seed=21, device="cuda"))
    args = (variant.act, variant.gate, variant.pool)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        static_out = torch.ops.fused_attn.se_forward(*static, *args)
    for seed in (22, 23):
        fresh = se_sample(shape, torch.float16, torch.channels_last, variant, seed=seed, device="cuda")
        for s_, f_ in zip(static, fresh, strict=True):
            s_.copy_(f_)
        graph.replay()
        torch.cuda.synchronize()
        for a, b in zip(static_out, torch.ops.fused_attn.se_forward(*static, *args), strict=True):
            assert torch.equal(a, b)


def test_forced_single_launch_refuses_what_it_cannot_run(monkeypatch):
    """FUSED_ATTN_CUDA_PATH=fused raises, naming the shape, where the single
    launch has no plan (float64 stays two-phase); an unknown path is a
    ValueError."""
    if "cuda" not in fused_attn.backends()["cuda"].devices:
        pytest.skip(fused_attn.backends()["cuda"].detail)
    inputs = se_sample((2, 16, 4, 4), torch.float64, torch.contiguous_format, SEVariant(), device="cuda")
    with fused_attn.use_backend("cuda"):
        monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "fused")
        with pytest.raises(RuntimeError, match=r"FUSED_ATTN_CUDA_PATH=fused.*\[2, 16, 4, 4\]"):
            run_se(inputs, SEVariant())
        monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "fastest")
        with pytest.raises(ValueError, match="FUSED_ATTN_CUDA_PATH must be auto, fused or two_phase"):
            run_se(inputs, SEVariant())


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_unaligned_and_strided_inputs(backend, dtype, memory_format):
    """x starting one element past a 16-byte boundary (the scalar path), a
    sliced x, and dy in the other layout."""
    variant = SEVariant(act="silu", pool="avgmax")
    x, w1, b1, w2, b2 = se_sample((3, 32, 8, 8), dtype, memory_format, variant, seed=3, device="cuda")
    shifted = misaligned_copy(x)
    for xin in (shifted, x[:, ::2, 1:, :-1]):
        xin = xin.detach().requires_grad_()
        C = xin.shape[1]
        ws = (w1[:, :C].contiguous(), b1, w2[:C].contiguous(), b2[:C].contiguous())
        y = run_se((xin, *ws), variant)
        y_ref, leaves = reference64(xin, *ws, variant)
        assert_close(y, y_ref, dtype)
        other = torch.channels_last if memory_format == torch.contiguous_format else torch.contiguous_format
        dy = torch.randn(y.shape, device="cuda").to(dtype).to(memory_format=other)
        (gx,) = torch.autograd.grad(y, [xin], dy)
        (gx_ref,) = torch.autograd.grad(y_ref, [leaves[0]], dy.double())
        assert_close(gx, gx_ref, dtype, grad=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_max_ties_split_gradient_like_amax(backend, dtype, memory_format):
    variant = SEVariant(pool="avgmax")
    x, w1, b1, w2, b2 = se_sample((2, 16, 8, 8), dtype, memory_format, variant, seed=11, device="cuda")
    x = (x.float() * 2).round().clamp(-3, 3).to(dtype).to(memory_format=memory_format).requires_grad_()
    y = run_se((x, w1, b1, w2, b2), variant)
    y_ref, leaves = reference64(x, w1, b1, w2, b2, variant)
    assert_close(y, y_ref, dtype)
    dy = torch.randn(y.shape, device="cuda").to(dtype)
    (gx,) = torch.autograd.grad(y, [x], dy)
    (gx_ref,) = torch.autograd.grad(y_ref, [leaves[0]], dy.double())
    assert_close(gx, gx_ref, dtype, grad=True)


@pytest.mark.parametrize("variant", [VARIANTS[1], VARIANTS[3], VARIANTS[6]], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_gradcheck_float64(backend, variant, memory_format):
    inputs = se_sample((2, 6, 3, 5), torch.float64, memory_format, variant, seed=2, requires_grad=True,
                       device="cuda")
    wrt = [t for t in inputs if t is not None]

    def f(*args):
        it = iter(args)
        return run_se([None if t is None else next(it) for t in inputs], variant)

    assert torch.autograd.gradcheck(f, wrt, eps=1e-6, atol=1e-7)


def _forward_backward(inputs, variant, dy):
    y = run_se(inputs, variant)
    wrt = [t for t in inputs if t is not None]
    return [y] + list(torch.autograd.grad(y, wrt, dy))


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_deterministic(backend, memory_format):
    variant = SEVariant(act="silu", pool="avgmax")
    inputs = se_sample((8, 256, 28, 28), torch.float32, memory_format, variant, seed=5, requires_grad=True,
                       device="cuda")
    dy = torch.randn(inputs[0].shape, device="cuda").to(memory_format=memory_format)
    first = _forward_backward(inputs, variant, dy)
    for _ in range(3):
        for a, b in zip(first, _forward_backward(inputs, variant, dy), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_cuda_graph_capture_and_replay(backend, memory_format):
    """Forward and forward+backward captured in a CUDA graph, replayed on new
    inputs copied into the static ones, match eager (no host sync, no
    allocation outside the caching allocator: capture would fail)."""
    variant = SEVariant(act="silu", pool="avgmax")
    static = se_sample((4, 64, 14, 14), torch.float32, memory_format, variant, seed=6, requires_grad=True,
                       device="cuda")
    static_dy = torch.randn(static[0].shape, device="cuda").to(memory_format=memory_format)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (Triton compiles, cuBLAS handles) outside the capture
        for _ in range(2):
            _forward_backward(static, variant, static_dy)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = _forward_backward(static, variant, static_dy)
    for seed in (7, 8):
        fresh = se_sample((4, 64, 14, 14), torch.float32, memory_format, variant, seed=seed, device="cuda")
        with torch.no_grad():
            for s, f in zip(static, fresh, strict=True):
                s.copy_(f)
            static_dy.copy_(torch.randn_like(static_dy))
        graph.replay()
        torch.cuda.synchronize()
        eager = _forward_backward(static, variant, static_dy)
        for a, b in zip(static_out, eager, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_single_launch_planned_first_inside_a_capture():
    """The single launch's first call for a plan asks the runtime whether the
    device can run it (function attributes, cluster occupancy) and keeps the
    answer. Here that first call happens during CUDA graph capture, in a fresh
    process (no earlier call has answered it): the capture must succeed, on
    the forced single-launch path, and its replay match eager."""
    import subprocess
    import sys

    require_cuda_backend(single_launch=True)
    code = (
        "import torch, fused_attn\n"
        "x = torch.randn(3, 192, 9, 9, device='cuda')\n"
        "w1, w2 = torch.randn(12, 192, device='cuda') * 0.1, torch.randn(192, 12, device='cuda') * 0.3\n"
        "graph = torch.cuda.CUDAGraph()\n"
        "with fused_attn.use_backend('cuda'):\n"
        "    with torch.cuda.graph(graph):\n"
        "        y = fused_attn.squeeze_excitation(x, w1, None, w2, None)\n"
        "    x.copy_(torch.randn_like(x))\n"
        "    graph.replay()\n"
        "    torch.cuda.synchronize()\n"
        "    torch.testing.assert_close(y, fused_attn.squeeze_excitation(x, w1, None, w2, None), atol=0, rtol=0)\n"
        "print('ok')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, FUSED_ATTN_CUDA_PATH="fused")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-4000:]


def test_runs_on_the_current_stream_and_device(backend):
    """Work queued on a side stream sees the op's results after a sync of
    that stream only (the kernels went to the current stream)."""
    variant = SEVariant()
    inputs = se_sample((8, 128, 28, 28), torch.float32, torch.contiguous_format, variant, seed=9, device="cuda")
    expected = run_se(inputs, variant)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = run_se(inputs, variant)
    side.synchronize()
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
def test_opcheck_cuda(case):
    if "cuda" not in fused_attn.backends()["cuda"].devices:
        pytest.skip(fused_attn.backends()["cuda"].detail)
    shape, dtype, fmt, variant = case
    inputs = se_sample(shape, dtype, fmt, variant, seed=1, requires_grad=True, device="cuda")
    args = (*inputs, variant.act, variant.gate, variant.pool)
    torch.library.opcheck(torch.ops.fused_attn.se_forward.default, args)
    with torch.no_grad():
        _, pooled, maxv, hidden, logits = torch.ops.fused_attn.se_forward(*args)
    x, w1, b1, w2, b2 = [None if t is None else t.detach() for t in inputs]
    torch.library.opcheck(torch.ops.fused_attn.se_backward.default,
                          (torch.randn_like(x), x, w1, w2, pooled, maxv, hidden, logits, variant.act, variant.gate,
                           variant.pool, b1 is not None, b2 is not None))


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_compile_fullgraph_cuda(memory_format):
    if "cuda" not in fused_attn.backends()["cuda"].devices:
        pytest.skip(fused_attn.backends()["cuda"].detail)
    check_compile_fullgraph("cuda", "cuda", memory_format)


@pytest.mark.xdist_group("gpu-memory")      # one at a time: with --dist loadgroup, in one worker
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_64bit_indexing(backend, memory_format):
    """x with more than 2**31 elements (bf16, 4.3 GB): offsets past int32 are
    right. Checked on the last samples' channels, where they are largest.
    Triton's case is opt-in until it has been timed on a GPU: its pool passes
    ran 8 programs over the 4.3 GB before they split rows (se.hw_split)."""
    if backend == "triton" and os.environ.get("FUSED_ATTN_SLOW_TESTS") != "1":
        pytest.skip("not yet timed on Triton: set FUSED_ATTN_SLOW_TESTS=1")
    N, C, H, W = 2, 64, 4100, 4100     # 2.15e9 elements
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip(f"needs 24 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn((N, C, H, W), generator=g, device="cuda", dtype=torch.bfloat16)
    x = x.to(memory_format=memory_format)
    w1 = torch.randn(16, C, device="cuda", dtype=torch.bfloat16) * C ** -0.5
    w2 = torch.randn(C, 16, device="cuda", dtype=torch.bfloat16) * 0.25
    x.requires_grad_()
    y = fused_attn.squeeze_excitation(x, w1, None, w2, None)
    dy = torch.ones_like(y)
    (gx,) = torch.autograd.grad(y, [x], dy)
    # The gate per (n, c), from an independent float64 pool, then spot checks
    # of y = x·g and of dx in the last sample.
    p = x.detach().mean((2, 3), dtype=torch.float64)
    z = torch.relu(p @ w1.double().t()) @ w2.double().t()
    gate = torch.sigmoid(z)
    xs, ys, gxs = x.detach()[-1, :, -8:, -8:].double(), y[-1, :, -8:, -8:].double(), gx[-1, :, -8:, -8:].double()
    torch.testing.assert_close(ys, xs * gate[-1, :, None, None], atol=2e-2, rtol=2e-2)
    # dL/dp = Σ_hw x (dy = 1), through the gate and the MLP, spread over H·W.
    s = x.detach().sum((2, 3), dtype=torch.float64)
    dz = s * gate * (1 - gate)
    hid = p @ w1.double().t()
    dp = ((dz @ w2.double()) * (hid > 0)) @ w1.double()
    expected = gate[-1, :, None, None] + dp[-1, :, None, None] / (H * W)
    torch.testing.assert_close(gxs, expected.expand_as(gxs), atol=2e-2, rtol=2e-2)
