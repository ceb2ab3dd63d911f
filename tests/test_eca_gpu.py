"""ECA on CUDA tensors: every GPU backend against the reference, CUDA graphs
and opcheck. Skipped without a GPU (conftest.py)."""
import pytest
import torch

import fused_attn

from .test_eca import OPCHECK_CASES, SHAPES, VARIANTS, check_eca_against_reference, eca_sample, run_eca
from .utils import DTYPES, FORMATS, gpu_backend_fixture, ids

pytestmark = pytest.mark.gpu

GPU_SHAPES = SHAPES + [(4, 256, 14, 14), (2, 2048, 7, 7), (3, 520, 9, 9)]


backend = gpu_backend_fixture()


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ids(DTYPES))
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=ids(GPU_SHAPES))
def test_forward_backward_match_reference(backend, shape, dtype, memory_format, variant):
    check_eca_against_reference(shape, dtype, memory_format, variant, device="cuda", seed=hash(shape) % 1000)


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_cuda_graph_capture_and_replay(backend, memory_format):
    variant = VARIANTS[3]
    static = eca_sample((4, 64, 14, 14), torch.float32, memory_format, variant, seed=6, requires_grad=True,
                        device="cuda")
    wrt = [t for t in static if t is not None]
    dy = torch.randn(static[0].shape, device="cuda").to(memory_format=memory_format)

    def step():
        y = run_eca(*static, variant)
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
    fresh = eca_sample((4, 64, 14, 14), torch.float32, memory_format, variant, seed=7, device="cuda")
    with torch.no_grad():
        for s, f in zip(static, fresh):
            if s is not None:
                s.copy_(f)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(out, step()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
def test_opcheck_cuda(case):
    if "cuda" not in fused_attn.backends()["cuda"].devices:
        pytest.skip(fused_attn.backends()["cuda"].detail)
    shape, dtype, fmt, v = case
    x, w, b = eca_sample(shape, dtype, fmt, v, seed=2, requires_grad=True, device="cuda")
    torch.library.opcheck(torch.ops.fused_attn.eca_forward.default, (x, w, b, v.padding, v.gate))
    with torch.no_grad():
        _, pooled, logits = torch.ops.fused_attn.eca_forward(x, w, b, v.padding, v.gate)
    torch.library.opcheck(torch.ops.fused_attn.eca_backward.default,
                          (torch.randn_like(x), x.detach(), w.detach(), pooled, logits, v.padding, v.gate,
                           b is not None))
