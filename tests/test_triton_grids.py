"""The Triton kernels' launch grids stay inside CUDA's limits (axis 0 up to
2³¹ − 1 programs, axes 1 and 2 up to 65535) for sizes the interpreter cannot
run: a 4100×4100 map (the GPU suite's 64-bit-indexing shape), many samples,
many channels. The interpreter ignores those limits, so this records each
launch's grid instead of running it (outputs are then garbage, and unused)."""
import pytest
import torch

import fused_attn

triton_pkg = pytest.importorskip("fused_attn.triton")
if not triton_pkg.AVAILABLE:
    pytest.skip(triton_pkg.ERROR, allow_module_level=True)

from fused_attn.triton import cbam as tcbam  # noqa: E402
from fused_attn.triton import se as tse  # noqa: E402

AXIS0_MAX, AXIS12_MAX = 2**31 - 1, 65535
SHAPES = [(1, 1, 4100, 4100), (2, 3, 1500, 1700), (70000, 2, 1, 1), (3, 70000, 1, 1), (1, 20000, 3, 3)]


@pytest.fixture
def grids(monkeypatch):
    seen = []

    class Record:
        def __init__(self, kernel):
            self.name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", "?")

        def __getitem__(self, grid):
            def run(*args, **meta):
                seen.append((self.name, tuple(grid)))
            return run

    monkeypatch.setattr(tse, "launch", Record)
    monkeypatch.setattr(tcbam, "launch", Record)
    with fused_attn.use_backend("triton"):
        yield seen


def _check(seen, kernels_expected):
    names = {name for name, _ in seen}
    assert len(names) >= kernels_expected, names
    for name, grid in seen:
        assert 1 <= len(grid) <= 3, (name, grid)
        assert all(g >= 1 for g in grid), (name, grid)
        assert grid[0] <= AXIS0_MAX, (name, grid)
        assert all(g <= AXIS12_MAX for g in grid[1:]), (name, grid)


def _x(shape):
    return torch.randn(shape, requires_grad=True)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_se_and_eca_grids(grids, shape):
    _, C, _, _ = shape
    x = _x(shape)
    w1, w2 = torch.randn(2, C, requires_grad=True), torch.randn(C, 2, requires_grad=True)
    fused_attn.squeeze_excitation(x, w1, None, w2, None, pool="avgmax").sum().backward()
    w = torch.randn(3, requires_grad=True)
    fused_attn.efficient_channel_attention(x, w).sum().backward()
    _check(grids, 4)   # pool, scale, reduce, dx


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cbam_grids(grids, shape):
    _, C, _, _ = shape
    x = _x(shape)
    w1, w2 = torch.randn(2, C, requires_grad=True), torch.randn(C, 2, requires_grad=True)
    ws = torch.randn(1, 2, 7, 7, requires_grad=True)
    fused_attn.cbam(x, w1, None, w2, None, ws, bn_training=True).sum().backward()
    _check(grids, 8)   # spatial pool, channel pool, conv, rescale; pixel/channel reduce, conv wgrad, dx
