"""ECA on CUDA tensors: every GPU backend against the reference, CUDA graphs
and opcheck. Skipped without a GPU (conftest.py)."""
import pytest
import torch

import fused_attn

from .test_eca import OPCHECK_CASES, SHAPES, VARIANTS, check_eca_against_reference, eca_sample, run_eca
from .utils import (DTYPES, FORMATS, cuda_kernels_launched, cuda_path_fixture, gpu_backend_fixture, ids,
                    require_cuda_backend)

pytestmark = pytest.mark.gpu

GPU_SHAPES = SHAPES + [(4, 256, 14, 14), (2, 2048, 7, 7), (3, 520, 9, 9)]


backend = gpu_backend_fixture()


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ids(DTYPES))
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=ids(GPU_SHAPES))
def test_forward_backward_match_reference(backend, shape, dtype, memory_format, variant):
    check_eca_against_reference(shape, dtype, memory_format, variant, device="cuda", seed=hash(shape) % 1000)


cuda_path = cuda_path_fixture()

# The CUDA backend's two ECA paths, each forced: the single launch (its
# convolution's neighbours gathered across the cluster's blocks) and the two
# phases. N = 1 and 2 at the ResNet-50 sites (one group: the conv weight's
# gradient written in place), more groups than one (its partials summed),
# clusters whose channels do not divide evenly, C smaller than k (circular
# padding wrapping more than once), H·W = 1, several samples per cluster of
# several blocks with a shorter last group (5, 16, 1, 1).
PATH_SHAPES = [(1, 2048, 7, 7), (2, 256, 28, 28), (12, 64, 2, 2), (2, 37, 13, 17), (1, 130, 7, 7), (3, 8, 1, 1),
               (2, 3, 5, 7), (5, 16, 1, 1)]


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", PATH_SHAPES, ids=ids(PATH_SHAPES))
def test_cuda_paths_match_reference(cuda_path, shape, dtype, memory_format, variant):
    check_eca_against_reference(shape, dtype, memory_format, variant, device="cuda", seed=sum(shape))


@pytest.mark.parametrize("shape", [(1, 2048, 7, 7), (12, 64, 2, 2)], ids=str)
def test_cuda_paths_deterministic(cuda_path, shape):
    variant = VARIANTS[3]
    inputs = eca_sample(shape, torch.bfloat16, torch.channels_last, variant, seed=5, requires_grad=True,
                        device="cuda")
    wrt = [t for t in inputs if t is not None]
    dy = torch.randn(inputs[0].shape, device="cuda").to(torch.bfloat16).to(memory_format=torch.channels_last)

    def step():
        y = run_eca(*inputs, variant)
        return [y] + list(torch.autograd.grad(y, wrt, dy))

    first = step()
    for _ in range(3):
        for a, b in zip(first, step(), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_one_launch_per_direction_at_n1(monkeypatch, memory_format):
    """One kernel each for eca_forward and eca_backward at N = 1, 2048×7²
    (auto path, outputs not poisoned)."""
    require_cuda_backend(single_launch=True)
    monkeypatch.delenv("FUSED_ATTN_DEBUG_POISON", raising=False)
    monkeypatch.delenv("FUSED_ATTN_CUDA_PATH", raising=False)
    variant = VARIANTS[3]
    x, w, b = eca_sample((1, 2048, 7, 7), torch.bfloat16, memory_format, variant, seed=3, device="cuda")
    outs = {}
    fwd = cuda_kernels_launched(
        lambda: outs.update(f=torch.ops.fused_attn.eca_forward(x, w, b, variant.padding, variant.gate)))
    assert len(fwd) == 1, fwd
    _, pooled, logits = outs["f"]
    dy = torch.randn_like(x)
    bwd = cuda_kernels_launched(lambda: torch.ops.fused_attn.eca_backward(
        dy, x, w, pooled, logits, variant.padding, variant.gate, b is not None))
    assert len(bwd) == 1, bwd


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
        for s, f in zip(static, fresh, strict=True):
            if s is not None:
                s.copy_(f)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(out, step(), strict=True):
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
