"""The planner of the single-launch SE / ECA kernels (csrc/cuda/se_fused.cu),
on any machine with the CUDA build: it is host arithmetic, asked through
torch.ops.fused_attn._single_launch_plan for an sm_90 device of given limits
(an H100/H200: 132 multiprocessors, 227 KB of opt-in shared memory per block)
without the runtime's say. What a plan must satisfy for the kernels to be
right: every channel in exactly one block and no block empty, the tiles inside
the shared memory claimed and that inside the device's, 16-byte accesses only
where every slice is whole packs, and — what the GPU tests rely on — a plan
for every shape they force onto the single launch."""
import collections
import math
import random

import pytest
import torch

import fused_attn
from fused_attn import _extension

from . import test_eca, test_eca_gpu, test_se_gpu
from .utils import VARIANTS as SE_VARIANTS, reduced

pytestmark = pytest.mark.skipif(_extension.CUDA_VERSION == 0, reason="fused_attn was built without its CUDA sources")

H200 = dict(sms=132, smem_optin=232448)
ELEM = {"float32": 4, "float16": 2, "bfloat16": 2}
Plan = collections.namedtuple("Plan", "cluster group groups cb vec staged smem")


def plan(N, C, HW, rd, dtype, *, cl=False, two_layer=True, with_max=False, eca=False, backward=False, force=False,
         aligned=True, sms=H200["sms"], smem_optin=H200["smem_optin"]):
    out = torch.ops.fused_attn._single_launch_plan(N, C, HW, rd, dtype, cl, two_layer, with_max, eca, backward,
                                                    force, aligned, sms, smem_optin)
    return Plan(*out) if out else None


def check_plan(p, N, C, HW, rd, dtype, *, cl, two_layer, eca, backward, force, aligned, smem_optin):
    elem = ELEM[dtype]
    assert 1 <= p.cluster <= 16
    # Channels [r·cb, (r+1)·cb) per block r: all covered, none left empty.
    assert (p.cluster - 1) * p.cb < C <= p.cluster * p.cb, p
    assert 1 <= p.group <= 8 and p.groups == math.ceil(N / p.group) and p.groups <= 65535, p
    tiles = (2 if backward else 1) * p.group * p.cb * HW * elem
    weights = (rd * p.cb + p.cb * rd if two_layer else (C * p.cb if backward else p.cb * C)) * elem
    assert tiles + (weights if p.staged else 0) <= p.smem <= smem_optin, p
    if eca:
        assert not p.staged
    if p.vec:
        V = 16 // elem
        assert aligned, p
        if cl:
            assert C % V == 0 and p.cb % V == 0, p
        else:
            assert (C * HW) % V == 0 and (p.cb * HW) % V == 0, p
    if not force and p.groups > 1:
        # Re-reading the weights once per group costs at most half of x.
        wcount = rd + 1 if eca else (2 * rd * C if two_layer else C * C)
        per_group = wcount * elem + (4 * wcount if backward else 0)
        assert p.groups * per_group <= N * C * HW * elem / 2, p


def test_random_shapes_give_sound_plans():
    rng = random.Random(0)
    planned = 0
    for _ in range(3000):
        N = rng.choice([1, 2, 3, 5, 8, 12, 32, 100, 128, 257])
        C = rng.choice([1, 3, 8, 16, 37, 64, 96, 130, 256, 480, 1001, 1152, 2048, 2900])
        HW = rng.choice([1, 2, 4, 9, 49, 56, 196, 221, 784, 3136, 12544])
        dtype = rng.choice(list(ELEM))
        cl = HW == 1 or rng.random() < 0.5
        kind = rng.choice(["se", "ese", "eca"])
        eca = kind == "eca"
        two_layer = kind == "se"
        rd = rng.choice([1, 3, 5, 9]) if eca else (max(1, C // rng.choice([4, 16, 24])) if two_layer else C)
        with_max = not eca and rng.random() < 0.3
        backward, force, aligned = rng.random() < 0.5, rng.random() < 0.3, rng.random() < 0.8
        p = plan(N, C, HW, rd, dtype, cl=cl, two_layer=two_layer, with_max=with_max, eca=eca, backward=backward,
                 force=force, aligned=aligned)
        if p is not None:
            planned += 1
            check_plan(p, N, C, HW, rd, dtype, cl=cl, two_layer=two_layer, eca=eca, backward=backward, force=force,
                       aligned=aligned, smem_optin=H200["smem_optin"])
    assert planned > 1000  # the draw reaches the planner's cases, not only its refusals


def test_no_plan_for_float64_or_where_nothing_fits():
    assert plan(1, 64, 49, 4, "float64", force=True) is None
    assert plan(1, 64, 49, 4, "float32", force=True) is not None
    assert plan(1, 64, 49, 4, "float32", smem_optin=0, force=True) is None


def _forced(N, C, H, W, dtype, fmt, **kw):
    cl = fmt == torch.channels_last or H * W == 1
    return [plan(N, C, H * W, dtype=dtype, cl=cl, backward=bwd, force=True, **kw) for bwd in (False, True)]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_every_shape_the_gpu_tests_force_has_a_plan(dtype):
    """test_se_gpu / test_eca_gpu run their path matrix with
    FUSED_ATTN_CUDA_PATH=fused, which raises where there is no plan."""
    for fmt in (torch.contiguous_format, torch.channels_last):
        for (N, C, H, W) in test_se_gpu.PATH_SHAPES:
            for v in SE_VARIANTS:
                rd = C if v.effective else reduced(C)
                for p in _forced(N, C, H, W, dtype, fmt, rd=rd, two_layer=not v.effective,
                                 with_max=v.pool == "avgmax"):
                    assert p is not None, ((N, C, H, W), dtype, fmt, v)
        for (N, C, H, W) in test_eca_gpu.PATH_SHAPES:
            for v in test_eca.VARIANTS:
                for p in _forced(N, C, H, W, dtype, fmt, rd=v.k, two_layer=False, eca=True):
                    assert p is not None, ((N, C, H, W), dtype, fmt, v)
    # The unaligned x of test_cuda_paths_unaligned_x (scalar copies), the
    # ResNet-50 site, the determinism shapes.
    for p in _forced(3, 64, 8, 8, "bfloat16", torch.channels_last, rd=reduced(64), with_max=True, aligned=False):
        assert p is not None and not p.vec
    for fmt in (torch.contiguous_format, torch.channels_last):
        for p in _forced(2, 256, 56, 56, "bfloat16", fmt, rd=reduced(256), with_max=True):
            assert p is not None and p.cluster >= 8
    for shape in [(1, 2048, 7, 7), (12, 64, 2, 2), (8, 256, 28, 28)]:
        assert all(p is not None for p in _forced(*shape, "bfloat16", torch.channels_last, rd=reduced(shape[1]),
                                                   with_max=True))


def test_what_the_readme_says_about_the_resnet50_sites():
    # SE: one launch at every site, batch, dtype and layout but these.
    for C, H in ((256, 56), (512, 28), (1024, 14), (2048, 7)):
        for N in (1, 32, 128):
            for dtype in ("float32", "bfloat16"):
                for cl in (False, True):
                    for bwd in (False, True):
                        p = plan(N, C, H * H, C // 16, dtype, cl=cl, backward=bwd)
                        f32_bwd = dtype == "float32" and bwd
                        two_phase = ((C == 2048 and N > 1)                 # weights large next to a sample
                                     or (f32_bwd and C == 256)             # dy and x slices too big
                                     or (f32_bwd and C == 1024 and N > 1))  # weight-gradient partials
                        assert (p is None) == two_phase, (C, H, N, dtype, cl, bwd)
    for dtype in ("float32", "bfloat16"):
        for bwd in (False, True):
            # N = 1 at 2048×7²: one launch, on a cluster of 16 blocks.
            p = plan(1, 2048, 49, 128, dtype, backward=bwd)
            assert p is not None and p.cluster == 16 and p.groups == 1
            # Every ECA site at every benchmarked batch: one launch, but for
            # the float32 backward at 256×56², whose dy and x slices (401 KB
            # a block in a cluster of 16) do not fit.
            for C, H, k in ((256, 56, 5), (512, 28, 5), (1024, 14, 5), (2048, 7, 7)):
                for N in (1, 32, 128):
                    for cl in (False, True):
                        p = plan(N, C, H * H, k, dtype, cl=cl, two_layer=False, eca=True, backward=bwd)
                        too_big = dtype == "float32" and bwd and C == 256
                        assert (p is None) == too_big, (C, H, N, dtype, bwd)


def test_a_bad_dtype_name_is_refused():
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        torch.ops.fused_attn._single_launch_plan(1, 8, 4, 2, "int8", False, True, False, False, False, False, True,
                                                  132, 232448)
    assert fused_attn  # the import registers the op
