"""The Triton passes that reduce over H·W (SE's and ECA's pooling and Σ dy·x,
CBAM's spatial pooling and channel-gate gradient) split each row of pixels
over several programs when the (sample, channel block) rows alone are too
few to fill a GPU (``se.hw_split``); torch combines the partial sums, maxima
and tie counts in a fixed order. The interpreter takes the split a 132-SM GPU
would, so these shapes (one sample, a few channels, large maps) are split
here, with an uneven last split, and must match the reference as unsplit
shapes do: forward, gradients, NaN and ties in the max pool."""
import pytest
import torch

import fused_attn

from .test_cbam import CBAMVariant, check_against_reference
from .test_eca import VARIANTS as ECA_VARIANTS
from .test_eca import check_eca_against_reference
from .utils import FORMATS, SEVariant, check_se_against_reference, ids

triton_pkg = pytest.importorskip("fused_attn.triton")
if not triton_pkg.AVAILABLE:
    pytest.skip(triton_pkg.ERROR, allow_module_level=True)

from fused_attn.triton import se as tse  # noqa: E402

# CPU tensors under the interpreter (CI), CUDA tensors on a GPU (132 SMs on an
# H100 or H200: the same splits).
DEVICE = "cpu" if "cpu" in fused_attn.backends()["triton"].devices else "cuda"
if DEVICE not in fused_attn.backends()["triton"].devices:
    pytest.skip(fused_attn.backends()["triton"].detail, allow_module_level=True)

DTYPES = (torch.float32, torch.bfloat16)
SHAPE = (1, 3, 33, 33)        # H·W = 1089: two programs a row, of 640 and 449 pixels


@pytest.fixture(autouse=True)
def triton_backend():
    with fused_attn.use_backend("triton"):
        yield


def _splits(shape, block_c=16):
    N, C, H, W = shape
    bc, bhw = tse.tiles(H * W, block_c)
    grid, _, lead = tse.row_reduce_grid(torch.empty(0), N, C, H * W, bc, bhw)
    assert lead == (() if grid[2] == 1 else (grid[2],))
    return grid[2]


@pytest.mark.parametrize("HW", [1, 128, 129, 513, 1089, 4100 * 4100])
@pytest.mark.parametrize("rows", [1, 3, 200, 10**6])
def test_hw_split_covers_each_row_once(rows, HW):
    splits, chunk = tse.hw_split(torch.empty(0), rows, HW, 128)
    assert 1 <= splits <= 65535                          # grid axis 2
    if splits == 1:
        assert chunk == HW
    else:
        assert chunk % 128 == 0 and (splits - 1) * chunk < HW <= splits * chunk
        assert chunk >= 4 * 128                          # each program still reads whole tiles
    if rows * splits > 4 * 132 and splits > 1:
        assert rows * (splits - 1) < 4 * 132             # no more programs than the GPU needs
    if rows >= 4 * 132:
        assert splits == 1


def test_the_shapes_here_are_split():
    assert _splits(SHAPE) == 2
    assert _splits((1, 3, 40, 40)) == 3


@pytest.mark.parametrize("variant", [SEVariant(), SEVariant(act="gelu", pool="avgmax", bias=False)], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ids(DTYPES))
def test_se(dtype, memory_format, variant):
    check_se_against_reference(SHAPE, dtype, memory_format, variant, device=DEVICE)


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ids(DTYPES))
def test_eca(dtype, memory_format):
    check_eca_against_reference(SHAPE, dtype, memory_format, ECA_VARIANTS[0], device=DEVICE)


@pytest.mark.parametrize("variant", [CBAMVariant(k=3), CBAMVariant(light=True, k=3, train=True)], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ids(DTYPES))
def test_cbam(dtype, memory_format, variant):
    check_against_reference(SHAPE, dtype, memory_format, variant, device=DEVICE)


@pytest.mark.parametrize("light", [False, True], ids=["cbam", "light"])
def test_cbam_ties_across_splits(light):
    """Integer-valued x: every channel's spatial max is tied across both
    splits; the tie counts are summed over them (float64: exact). SiLU: a
    ReLU MLP may pass no gradient to the max at all."""
    check_against_reference(SHAPE, torch.float64, torch.contiguous_format, CBAMVariant(light=light, k=3, act="silu"),
                            integer=True, device=DEVICE)


@pytest.mark.parametrize("nan", [False, True], ids=["ties", "nan"])
def test_se_max_pool_across_splits(nan):
    """SE's avg+max pool on integer-valued x: the tied maxima lie in both
    splits, and the gradient is shared among them as torch.amax's is. With a
    NaN in the second split only: it reaches the output (through the max and
    the mean, then the MLP), as in the reference."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, SHAPE, generator=g).double()
    if nan:
        x[0, 1, -1, -1] = float("nan")
    w1, w2 = torch.randn(2, 3, generator=g).double(), torch.randn(3, 2, generator=g).double()
    dy = torch.randn(SHAPE, generator=g).double()
    x, w1, w2, dy = (t.to(DEVICE) for t in (x, w1, w2, dy))
    outs = []
    for backend in ("triton", "reference"):
        xi = x.clone().requires_grad_()
        with fused_attn.use_backend(backend):
            y = fused_attn.squeeze_excitation(xi, w1, None, w2, None, pool="avgmax")
        outs.append((y, *torch.autograd.grad(y, xi, dy)))
    assert outs[0][0].isnan().any() == nan
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)
