"""CBAM on CUDA tensors: every GPU backend (the CUDA kernels, Triton) against
the reference, auto's choice, unaligned and strided inputs, determinism,
compile, CUDA graphs and opcheck. Skipped without a GPU (conftest.py)."""
import pytest
import torch

import fused_attn

from .test_cbam import (VARIANTS, CBAMVariant, _op_args, cbam_sample, check_against_reference,
                        check_inputs_against_reference, run)
from .utils import DTYPES, FORMATS, gpu_backend_fixture, ids, misaligned_copy

pytestmark = pytest.mark.gpu

# Odd shapes, rows that take the 16-byte paths (H·W or C multiples of 8), few
# long rows (the reductions' split paths: 2048×7×7 at N = 1 and 2, 16×64×64)
# and a ResNet-50 site.
GPU_SHAPES = [(2, 1, 5, 6), (1, 3, 7, 7), (2, 37, 13, 17), (4, 256, 14, 14), (2, 2048, 7, 7), (1, 2048, 7, 7),
              (3, 520, 9, 9), (1, 16, 64, 64), (2, 64, 56, 56)]

backend = gpu_backend_fixture()


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ids(DTYPES))
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=ids(GPU_SHAPES))
def test_forward_backward_match_reference(backend, shape, dtype, memory_format, variant):
    check_against_reference(shape, dtype, memory_format, variant, device="cuda", seed=sum(shape))


def test_auto_runs_the_cuda_kernels():
    if "cuda" not in fused_attn.backends()["cuda"].devices:
        pytest.skip(fused_attn.backends()["cuda"].detail)
    x, params, buffers = cbam_sample((2, 16, 6, 6), torch.float32, torch.contiguous_format, CBAMVariant(),
                                     device="cuda")
    y = run(fused_attn.cbam, x, params, buffers, CBAMVariant())
    with fused_attn.use_backend("cuda"):
        torch.testing.assert_close(y, run(fused_attn.cbam, x, params, buffers, CBAMVariant()), atol=0, rtol=0)


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_unaligned_and_strided_inputs(backend, dtype, memory_format):
    """x one element past a 16-byte boundary (the scalar paths) and a sliced x."""
    variant = CBAMVariant(train=True, bias=True)
    x, params, buffers = cbam_sample((3, 32, 8, 8), dtype, memory_format, variant, seed=3, device="cuda")
    shifted = misaligned_copy(x)
    for xin in (shifted, x[:, ::2, 1:, :-1]):
        check_inputs_against_reference(xin.detach(), params, buffers, variant)


@pytest.mark.parametrize("variant", [CBAMVariant(train=True), CBAMVariant(light=True, bias=True)], ids=str)
def test_deterministic(backend, variant):
    """Two forward+backward runs give bitwise-identical outputs and gradients
    (the reductions' order is fixed; no atomics), at a shape whose reductions
    split into segments."""
    x, params, buffers = cbam_sample((1, 2048, 7, 7), torch.float32, torch.contiguous_format, variant, seed=5,
                                     device="cuda")
    dy = torch.randn_like(x)

    def once():
        xin = x.detach().requires_grad_()
        leaves = {k: (v.detach().requires_grad_() if v is not None else None) for k, v in params.items()}
        y = run(fused_attn.cbam, xin, leaves, {k: v.clone() for k, v in buffers.items()}, variant)
        wrt = [xin] + [v for v in leaves.values() if v is not None]
        return [y] + list(torch.autograd.grad(y, wrt, dy))

    for a, b in zip(once(), once(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compile_fullgraph(backend, dynamic):
    variant = CBAMVariant(train=True)
    x, params, buffers = cbam_sample((2, 64, 14, 14), torch.float32, torch.channels_last, variant, device="cuda")
    eager_bufs = {k: v.clone() for k, v in buffers.items()}

    def f(x, params, bufs):
        return run(fused_attn.cbam, x, params, bufs, variant)

    y = torch.compile(f, fullgraph=True, dynamic=dynamic)(x, params, buffers)
    torch.testing.assert_close(y, f(x, params, eager_bufs), atol=1e-5, rtol=1e-5)
    for k in buffers:
        torch.testing.assert_close(buffers[k], eager_bufs[k])


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_cuda_graph_capture_and_replay(backend, memory_format):
    """Eval-mode BatchNorm (train mode updates buffers in place, which a
    replay repeats by design)."""
    variant = CBAMVariant(bias=True)
    x, params, buffers = cbam_sample((4, 64, 14, 14), torch.float32, memory_format, variant, device="cuda")
    x.requires_grad_()
    leaves = {k: (v.requires_grad_() if v is not None else None) for k, v in params.items()}
    wrt = [x] + [v for v in leaves.values() if v is not None]
    dy = torch.randn(x.shape, device="cuda").to(memory_format=memory_format)

    def step():
        y = run(fused_attn.cbam, x, leaves, buffers, variant)
        return [y] + list(torch.autograd.grad(y, wrt, dy))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    fresh, _, _ = cbam_sample((4, 64, 14, 14), torch.float32, memory_format, variant, seed=7, device="cuda")
    with torch.no_grad():
        x.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(out, step(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", [CBAMVariant(), CBAMVariant(train=True, light=True, k=3)], ids=str)
def test_opcheck(backend, variant):
    op = torch.ops.fused_attn.cbam_forward_triton if backend == "triton" else torch.ops.fused_attn.cbam_forward
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in _op_args(variant))
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() and i not in (8, 9)
                 else a for i, a in enumerate(args))
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
