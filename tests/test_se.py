"""fused_attn.squeeze_excitation against the reference, on every CPU backend."""
import pytest
import torch

import fused_attn

from .utils import (DTYPES, FORMATS, SHAPES, VARIANTS, SEVariant, assert_close, check_se_against_reference,
                    cpu_backends, ids, reference64, se_kwargs, se_sample)


def run_se(x, w1, b1, w2, b2, variant):
    return fused_attn.squeeze_excitation(x, w1, b1, w2, b2, **se_kwargs(variant))


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ids(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=ids(SHAPES))
def test_forward_backward_match_reference(backend, shape, dtype, memory_format, variant):
    check_se_against_reference(shape, dtype, memory_format, variant, seed=hash(shape) % 1000)


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_non_contiguous_inputs(backend, memory_format):
    """A sliced x and a dy in the other memory format give the same results."""
    variant = SEVariant(act="silu", pool="avgmax")
    x, w1, b1, w2, b2 = se_sample((3, 24, 11, 10), torch.float32, memory_format, variant, seed=3)
    x = x[:, ::2, 1:, :-1].detach().requires_grad_()   # C=12, strided
    C = x.shape[1]
    w1, w2, b2 = w1[:, :C].contiguous(), w2[:C].contiguous(), b2[:C].contiguous()
    y = run_se(x, w1, b1, w2, b2, variant)
    y_ref, leaves = reference64(x, w1, b1, w2, b2, variant)
    assert_close(y, y_ref, torch.float32)
    other = torch.channels_last if memory_format == torch.contiguous_format else torch.contiguous_format
    dy = torch.randn(y.shape).to(memory_format=other)
    (gx,) = torch.autograd.grad(y, [x], dy)
    (gx_ref,) = torch.autograd.grad(y_ref, [leaves[0]], dy.double())
    assert_close(gx, gx_ref, torch.float32, grad=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_max_ties_split_gradient_like_amax(backend, dtype, memory_format):
    """Tied maxima share the max-pool gradient evenly, as torch.amax does."""
    variant = SEVariant(pool="avgmax")
    x, w1, b1, w2, b2 = se_sample((2, 5, 6, 6), dtype, memory_format, variant, seed=11)
    x = (x.detach().float() * 2).round().clamp(-3, 3).to(dtype).to(memory_format=memory_format)
    x.requires_grad_()  # values in {-3..3}: every channel has several tied maxima
    y = run_se(x, w1, b1, w2, b2, variant)
    y_ref, leaves = reference64(x, w1, b1, w2, b2, variant)
    assert_close(y, y_ref, dtype)
    dy = torch.randn(y.shape).to(dtype)
    (gx,) = torch.autograd.grad(y, [x], dy)
    (gx_ref,) = torch.autograd.grad(y_ref, [leaves[0]], dy.double())
    assert_close(gx, gx_ref, dtype, grad=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant", [VARIANTS[1], VARIANTS[3], VARIANTS[5], VARIANTS[6]], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_gradcheck_float64(backend, variant, memory_format, seed):
    # Triton's interpreter launches slowly; gradcheck launches ~2 per input element.
    shape = (1, 5, 2, 3) if backend == "triton" else (2, 6, 3, 5)
    inputs = se_sample(shape, torch.float64, memory_format, variant, seed=seed, requires_grad=True)
    wrt = [t for t in inputs if t is not None]

    def f(*args):
        it = iter(args)
        full = [None if t is None else next(it) for t in inputs]
        return run_se(*full, variant)

    assert torch.autograd.gradcheck(f, wrt, eps=1e-6, atol=1e-7)


def test_deterministic(backend):
    variant = SEVariant(act="silu", pool="avgmax")
    for memory_format in FORMATS:
        inputs = se_sample((4, 96, 20, 20), torch.float32, memory_format, variant, seed=5, requires_grad=True)
        wrt = [t for t in inputs if t is not None]
        dy = torch.randn(inputs[0].shape)
        runs = []
        for _ in range(2):
            y = run_se(*inputs, variant)
            runs.append([y] + list(torch.autograd.grad(y, wrt, dy)))
        for a, b in zip(*runs, strict=True):
            assert torch.equal(a, b)


def test_cpu_chunking_does_not_change_results(monkeypatch):
    """The CPU backend walks the batch in chunks of samples (pipeline_chunk):
    one sample per chunk, uneven chunks (6 as 4 + 2), the whole batch at once,
    the size its model picks, and the size the cache budget alone allows must
    all agree."""
    if "cpu" not in cpu_backends():
        pytest.skip("C++ extension not built")
    variant = SEVariant(pool="avgmax")
    inputs = se_sample((6, 40, 9, 9), torch.float32, torch.channels_last, variant, seed=8, requires_grad=True)
    wrt = [t for t in inputs if t is not None]
    dy = torch.randn(inputs[0].shape)
    results = []
    settings = [("FUSED_ATTN_CPU_CHUNK_SAMPLES", "1"), ("FUSED_ATTN_CPU_CHUNK_SAMPLES", "4"),
                ("FUSED_ATTN_CPU_CHUNK_SAMPLES", "6"), (None, None), ("FUSED_ATTN_CPU_CHUNK_BYTES", "1")]
    for name, value in settings:
        monkeypatch.delenv("FUSED_ATTN_CPU_CHUNK_SAMPLES", raising=False)
        monkeypatch.delenv("FUSED_ATTN_CPU_CHUNK_BYTES", raising=False)
        if name:
            monkeypatch.setenv(name, value)
        with fused_attn.use_backend("cpu"):
            y = run_se(*inputs, variant)
            results.append([y] + list(torch.autograd.grad(y, wrt, dy)))
    # Per-sample passes are the same; the chunk's matmuls (and the order the
    # weight gradients are summed in) change, so agreement is to fp32 rounding.
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert_close(a, b, torch.float32, grad=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_cpu_streaming_stores(monkeypatch, dtype, memory_format):
    """Large outputs whose rows are whole cache lines are written with
    non-temporal stores; force that path on small shapes (rows of 64 and 128
    bytes, and a row length that is not a multiple of the vector width)."""
    if "cpu" not in cpu_backends():
        pytest.skip("C++ extension not built")
    monkeypatch.setenv("FUSED_ATTN_CPU_STREAM_BYTES", "0")
    variant = SEVariant(act="silu", pool="avgmax")
    for shape in [(3, 32, 8, 8), (2, 96, 4, 16), (2, 64, 12, 12)]:
        inputs = se_sample(shape, dtype, memory_format, variant, seed=9, requires_grad=True)
        with fused_attn.use_backend("cpu"):
            y = run_se(*inputs, variant)
        y_ref, leaves = reference64(*inputs, variant)
        assert_close(y, y_ref, dtype)
        dy = torch.randn(y.shape).to(dtype).to(memory_format=memory_format)
        wrt = [t for t in inputs if t is not None]
        grads = torch.autograd.grad(y, wrt, dy)
        grads_ref = torch.autograd.grad(y_ref, [t for t in leaves if t is not None], dy.double())
        for g, g_ref in zip(grads, grads_ref, strict=True):
            assert_close(g, g_ref, dtype, grad=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("hw", [(7, 7), (13, 17), (17, 19)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_cpu_row_reductions_do_not_depend_on_the_batch(dtype, memory_format, hw):
    """The CPU passes reduce short NCHW rows in groups (one row's adds alone
    wait on their latency): a sample's pooled mean and max (SE forward) and
    its Σ dy·x (through ECA's per-sample dx) must be bitwise what the sample
    gives alone, where its rows fall into other groups or into none (fewer
    rows than a group). 7×7 is grouped; 13×17 and 17×19 (16 and 64 lanes)
    are not."""
    if "cpu" not in cpu_backends():
        pytest.skip("C++ extension not built")
    variant = SEVariant(pool="avgmax")
    x, w1, b1, w2, b2 = se_sample((5, 3, *hw), dtype, memory_format, variant, seed=12)
    x = x.detach()
    dy = torch.randn(x.shape).to(dtype).to(memory_format=memory_format)
    w = torch.randn(3).to(dtype)
    se = torch.ops.fused_attn.se_forward
    eca_fwd, eca_bwd = torch.ops.fused_attn.eca_forward, torch.ops.fused_attn.eca_backward
    with torch.no_grad():
        _, pooled, maxv, _, _ = se(x, w1, b1, w2, b2, "relu", "sigmoid", "avgmax")
        _, p, z = eca_fwd(x, w, None, "zeros", "sigmoid")
        dx = eca_bwd(dy, x, w, p, z, "zeros", "sigmoid", False)[0]
        for n in range(x.shape[0]):
            xn, dyn = x[n:n + 1], dy[n:n + 1]
            _, pooled_n, maxv_n, _, _ = se(xn, w1, b1, w2, b2, "relu", "sigmoid", "avgmax")
            assert torch.equal(pooled[n:n + 1], pooled_n) and torch.equal(maxv[n:n + 1], maxv_n), n
            _, p_n, z_n = eca_fwd(xn, w, None, "zeros", "sigmoid")
            assert torch.equal(dx[n:n + 1], eca_bwd(dyn, xn, w, p_n, z_n, "zeros", "sigmoid", False)[0]), n


@pytest.mark.parametrize("isa", ["native", "baseline"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cpu_16bit_weights_read_as_their_float_values(monkeypatch, dtype, isa):
    """The CPU forward's MLP reads float16 / bfloat16 weights as they are
    (rows_dot widens them as it loads: no float copy per call) where every
    chunk has at most 16 samples, through BLAS on a float copy beyond. The
    pooled vectors, hidden and logits (float32) must be bitwise those of the
    float32 op given the same values widened, including the dot products'
    last K % 8 terms (C = 1000 and 37, rd = 62 and 5: both products have
    them) and CBAM's two MLP products; the outputs in the dtype are then the
    same rescale. N = 17 checks the BLAS side keeps working."""
    if "cpu" not in cpu_backends():
        pytest.skip("C++ extension not built")
    if isa == "baseline":
        monkeypatch.setenv("FUSED_ATTN_CPU_ISA", "baseline")
    g = torch.Generator().manual_seed(3)
    for N, C, rd, fmt in [(1, 1000, 62, torch.channels_last), (5, 37, 5, torch.contiguous_format),
                          (16, 96, 16, torch.contiguous_format), (17, 37, 5, torch.channels_last)]:
        x = torch.randn(N, C, 5, 7, generator=g).to(dtype).contiguous(memory_format=fmt)
        w1, b1 = (torch.randn(rd, C, generator=g) * 0.2).to(dtype), torch.randn(rd, generator=g).to(dtype)
        w2, b2 = (torch.randn(C, rd, generator=g) * 0.3).to(dtype), torch.randn(C, generator=g).to(dtype)
        ws = (torch.randn(2, 7, 7, generator=g) * 0.1).to(dtype)
        args16, args32 = (x, w1, b1, w2, b2), tuple(t.float() for t in (x, w1, b1, w2, b2))
        se = torch.ops.fused_attn.se_forward
        out16, out32 = se(*args16, "silu", "sigmoid", "avg"), se(*args32, "silu", "sigmoid", "avg")
        if N <= 16:
            for name, a, b in zip(["pooled", "maxv", "hidden", "logits"], out16[1:], out32[1:], strict=True):
                assert torch.equal(a, b), (N, C, name)
        else:
            assert_close(out16[4], out32[4], torch.float32)
        cbam = torch.ops.fused_attn.cbam_forward
        c16 = cbam(*args16, ws, None, None, None, None, 1e-5, "relu", "sigmoid", False, False)
        c32 = cbam(*args32, ws.float(), None, None, None, None, 1e-5, "relu", "sigmoid", False, False)
        assert torch.equal(c16[1], c32[1]) and torch.equal(c16[2], c32[2]), (N, C, "cbam pooled, logits")


def check_outputs_round_as_torch(backend, dtype, memory_format, device="cpu", nan_bits=None):
    """y = x·g computed in float32 and rounded once to x's dtype, bit for bit
    as torch rounds (nearest, ties to even). g comes back as the forward's
    logits (float32) through hard_sigmoid, computed here as the kernels do.
    Mostly gates of few bits (fc2's weight zero, so z = fc2's bias exactly and
    g = 3/4, 5/8, 7/8, 9/16 as the channel's bias picks), whose products land
    on halfway cases about every other element, over x drawn across the
    dtype's range: normal values, subnormal products, values near its largest;
    then random gates. The first sample holds a NaN (its every output NaN;
    nan_bits: the 16 bits the kernel writes for one). backend: "triton" for
    the Triton op, else the compiled one (C++ on the CPU, CUDA on a GPU)."""
    op = torch.ops.fused_attn.se_forward_triton if backend == "triton" else torch.ops.fused_attn.se_forward
    for (N, C, H, W), random_gate in [((3, 37, 5, 7), False), ((2, 64, 4, 8), False), ((3, 24, 3, 5), True)]:
        g = torch.Generator().manual_seed(N * C)
        finfo = torch.finfo(dtype)
        # normal, subnormal products, near the top (a sum of H·W of them stays finite)
        scale = torch.tensor([1.0, finfo.tiny * 8, finfo.max / 2**12])
        x = torch.randn(N, C, H, W, generator=g) * scale[torch.randint(0, 3, (N, C, H, W), generator=g)]
        x = x.to(dtype)
        x[0, 1, 0, 0] = float("nan")
        rd = 4
        w1 = (torch.randn(rd, C, generator=g) * 0.1).to(dtype)
        b1 = torch.randn(rd, generator=g).to(dtype)
        w2 = (torch.randn(C, rd, generator=g) if random_gate else torch.zeros(C, rd)).to(dtype)
        bias = torch.randn(C, generator=g) if random_gate else torch.tensor([1.5, 0.75, 2.25, 0.375]).repeat(C)[:C]
        b2 = bias.to(dtype)
        x, w1, b1, w2, b2 = (t.to(device) for t in (x.contiguous(memory_format=memory_format), w1, b1, w2, b2))
        y, _, _, _, logits = op(x, w1, b1, w2, b2, "relu", "hard_sigmoid", "avg")
        assert logits.dtype == torch.float32
        gate = torch.clamp(logits + 3, 0, 6) / 6
        if not random_gate:
            torch.testing.assert_close(gate[1:], ((b2.float() + 3) / 6).expand(N - 1, C), rtol=0, atol=0)
        expected = (x.float() * gate[:, :, None, None]).to(dtype)
        assert y.stride() == x.stride()
        assert torch.equal(y.isnan(), expected.isnan()) and y[0].isnan().all()
        finite = ~expected.isnan()
        bits, expected_bits = y.view(torch.int16)[finite], expected.view(torch.int16)[finite]
        assert torch.equal(bits, expected_bits), f"{(bits != expected_bits).sum()} elements differ in their bits"
        if nan_bits is not None:
            assert (y[0].view(torch.int16) == nan_bits).all()


@pytest.mark.parametrize("stream", [False, True], ids=["stores", "streaming"])
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_outputs_round_to_the_dtype_as_torch_does(backend, monkeypatch, dtype, memory_format, stream):
    """The rescale's narrowing to x's dtype (check_outputs_round_as_torch):
    the CPU builds' vector conversions and their scalar tails, with and
    without streaming stores (rows of whole cache lines and not), and the
    Triton kernels' casts (float16 only under the interpreter, whose float32
    to bfloat16 cast truncates, subnormals wrongly, where a GPU rounds to
    nearest: test_se_gpu.py checks that). bfloat16's NaN from the C++ backend
    is c10::BFloat16's quiet NaN 0x7FC0 (ATen's vectorized conversion writes
    0xFFFF instead)."""
    if backend == "reference":
        pytest.skip("the reference rounds g to x's dtype first, as eager timm does")
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter's float32 -> bfloat16 cast truncates")
    if stream:
        if backend != "cpu":
            pytest.skip("streaming stores are the C++ backend's")
        monkeypatch.setenv("FUSED_ATTN_CPU_STREAM_BYTES", "0")
    check_outputs_round_as_torch(backend, dtype, memory_format, nan_bits=0x7FC0 if dtype == torch.bfloat16 and
                                 backend != "triton" else None)
