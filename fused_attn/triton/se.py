"""Squeeze-and-Excitation in Triton: the GPU fallback when the CUDA extension is
not built (and the path on non-NVIDIA GPUs Triton supports).

Two phases, three launches per direction:

    forward:  pool (read x)  ->  excitation on [N, C] (torch, fp32)  ->  rescale (read x, write y)
    backward: Σ dy·x and tie counts (read dy, x)  ->  excitation backward (torch)  ->  dx (read dy [, x], write dx)

3|x| forward and 4|x| backward (DESIGN.md §4, "two-phase fused"). A pass that
reduces over H·W splits its rows of pixels over several programs when the
rows alone are too few to fill the GPU (``hw_split``). Tiles are
[BLOCK_C, BLOCK_HW] over one sample, addressed through the strides of x, so
NCHW and channels_last are handled by the same kernels without a layout
conversion (hw = h·W + w works for both dense layouts). Offsets are int64.
Pooling accumulates in fp32 (fp64 for fp64 inputs); y is rounded once.

The ops are ``torch.library.triton_op``s, so ``torch.compile`` sees the kernels
(no graph break). Under ``TRITON_INTERPRET=1`` they also run on CPU tensors,
which is how CI checks them.
"""
import contextlib
import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton
from triton.runtime.jit import JITFunction

from ..ops.se import acc_dtype, register_se_autograd
from ..reference.se import ACTIVATIONS, GATES
from . import INTERPRET

_BLOCK_C = 16
_BLOCK_HW = 128
# As in the C++ backends: FUSED_ATTN_DEBUG_POISON=1 fills outputs with NaN
# before the kernels write them (the tests set it).
_POISON = os.environ.get("FUSED_ATTN_DEBUG_POISON", "0") not in ("", "0")


class launch:
    """``launch(kernel)[grid](*args)``: ``wrap_triton``'s launch (which
    ``torch.compile`` records as a kernel call), with two exceptions under
    TRITON_INTERPRET=1. On fake tensors it does nothing: ``wrap_triton`` hands
    back the interpreted kernel there, which would try to run on them when the
    op's body serves as its fake kernel (opcheck, tracing). And a kernel that
    the interpreter made no ``JITFunction`` (triton 3.6, with torch 2.11's
    ``wrap_triton``, which refuses it) is called directly, as it would run
    eagerly anyway."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def run(*args, **meta):
            if INTERPRET:
                if any(isinstance(a, torch.Tensor) and is_fake(a) for a in args):
                    return
                if not isinstance(self.kernel, JITFunction):
                    return self.kernel[grid](*args, **meta)
            wrap_triton(self.kernel)[grid](*args, **meta)

        return run


def on_tensor_device(fn):
    """Runs an op's body with its first tensor's CUDA device current. Triton
    launches on the current device, and PyTorch puts no device guard around a
    Python op's body: x on cuda:1 while cuda:0 is current would launch on the
    wrong GPU. Changes nothing (and traces nothing) when the device already is
    current, as under torch.compile, whose generated code guards devices."""
    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        t = next((a for a in args if isinstance(a, torch.Tensor)), None)
        ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
        if t is not None and t.is_cuda and t.device.index is not None and t.device.index != torch.cuda.current_device():
            ctx = torch.cuda.device(t.device)
        with ctx:
            return fn(*args, **kwargs)
    return guarded


def _new_output(like):
    out = torch.empty_like(like)
    return out.fill_(float("nan")) if _POISON else out


@triton.jit
def sample_and_block(HW, BLOCK_HW: tl.constexpr):
    """(n, pixel block) of a program tiled over pixels, both enumerated on grid
    axis 0: it allows 2³¹ − 1 programs, axes 1 and 2 only 65535 (a 4100×4100
    map has 131,329 blocks of 128 pixels)."""
    pid = tl.program_id(0)
    blocks = tl.cdiv(HW, BLOCK_HW)
    return (pid // blocks).to(tl.int64), pid % blocks


@triton.jit
def mean_of(total, count, ACC: tl.constexpr):
    """total / count, correctly rounded. Compiled for a GPU, fp32's `/` is an
    approximate divide (div.full.f32, up to 2 ulp); the interpreter's is exact.
    The count stays an integer argument: a Python float would reach a compiled
    kernel as fp32, and 1/count in fp32 is off by up to half an fp32 ulp in
    fp64. 0/0 is NaN, as torch's mean of nothing."""
    if ACC == tl.float32:
        return tl.div_rn(total, tl.full([], count, ACC))
    else:
        return total / count


@triton.jit
def split_range(HW, CHUNK, plane):
    # The pixels [lo, hi) of this program's split (axis 2 of a grid from hw_split) and the offset
    # of its [N, C] (or [N, ·]) slice of the partials, plane elements each.
    split = tl.program_id(2).to(tl.int64)
    lo = split * CHUNK
    return lo, tl.minimum(lo + CHUNK, HW), split * plane


@triton.jit
def _pool_kernel(x_ptr, pooled_ptr, maxv_ptr, plane, C, HW, CHUNK, stride_n, stride_c, stride_hw,
                 WITH_MAX: tl.constexpr, SPLIT: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
                 BLOCK_HW: tl.constexpr):
    # pooled[n, c] = mean_hw x (or 0.5·mean + 0.5·max); maxv[n, c] = max_hw x. SPLIT: program
    # (n, c block, split) pools pixels [split·CHUNK, +CHUNK) into the partials pooled[split, n, c]
    # (the sum) and maxv[split, n, c], which the host combines (hw_split); plane = N·C.
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    lo, hi, part = split_range(HW, CHUNK, plane)
    row = x_ptr + n * stride_n + offs_c[:, None].to(tl.int64) * stride_c
    acc = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    mx = tl.full([BLOCK_C, BLOCK_HW], float("-inf"), ACC)
    for hw0 in range(lo, hi, BLOCK_HW):
        offs_hw = hw0 + tl.arange(0, BLOCK_HW)
        mask = mask_c[:, None] & (offs_hw[None, :] < hi)
        v = tl.load(row + offs_hw[None, :].to(tl.int64) * stride_hw, mask=mask, other=0.0).to(ACC)
        acc += v
        if WITH_MAX:
            # NaN propagates, as torch.amax's does.
            mx = tl.where(mask, tl.maximum(mx, v, propagate_nan=tl.PropagateNan.ALL), mx)
    total = tl.sum(acc, axis=1)
    nc = part + n * C + offs_c
    if WITH_MAX:
        m = tl.max(mx, axis=1)
        # tl.max does not propagate NaN; torch.amax does.
        has_nan = tl.max(tl.where(mx != mx, 1, 0), axis=1) > 0
        m = tl.where(has_nan, float("nan"), m)
        tl.store(maxv_ptr + nc, m, mask=mask_c)
    if SPLIT:
        tl.store(pooled_ptr + nc, total, mask=mask_c)
    else:
        mean = mean_of(total, HW, ACC)
        if WITH_MAX:
            mean = 0.5 * mean + 0.5 * m
        tl.store(pooled_ptr + nc, mean, mask=mask_c)


@triton.jit
def _scale_kernel(x_ptr, g_ptr, y_ptr, C, HW, stride_n, stride_c, stride_hw,
                  ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    # y = x · g[n, c]; y has x's strides.
    n, hw_block = sample_and_block(HW, BLOCK_HW)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_hw = hw_block * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask_c = offs_c < C
    mask = mask_c[:, None] & (offs_hw[None, :] < HW)
    g = tl.load(g_ptr + n * C + offs_c, mask=mask_c, other=0.0)
    off = n * stride_n + offs_c[:, None].to(tl.int64) * stride_c + offs_hw[None, :].to(tl.int64) * stride_hw
    v = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
    tl.store(y_ptr + off, (v * g[:, None]).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _reduce_kernel(dy_ptr, x_ptr, maxv_ptr, s_ptr, cnt_ptr, plane, C, HW, CHUNK, stride_n, stride_c, stride_hw,
                   WITH_MAX: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    # s[split, n, c] = Σ_hw dy·x; cnt[split, n, c] = #{hw : x == maxv[n, c]}, over the split's
    # pixels (all of them when unsplit; the host sums the partials otherwise).
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    lo, hi, part = split_range(HW, CHUNK, plane)
    base = n * stride_n + offs_c[:, None].to(tl.int64) * stride_c
    acc = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    cnt = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    if WITH_MAX:
        m = tl.load(maxv_ptr + n * C + offs_c, mask=mask_c, other=0.0)
    for hw0 in range(lo, hi, BLOCK_HW):
        offs_hw = hw0 + tl.arange(0, BLOCK_HW)
        mask = mask_c[:, None] & (offs_hw[None, :] < hi)
        off = base + offs_hw[None, :].to(tl.int64) * stride_hw
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(ACC)
        acc += dy * x
        if WITH_MAX:
            cnt += tl.where(mask & (x == m[:, None]), 1.0, 0.0)
    nc = part + n * C + offs_c
    tl.store(s_ptr + nc, tl.sum(acc, axis=1), mask=mask_c)
    if WITH_MAX:
        tl.store(cnt_ptr + nc, tl.sum(cnt, axis=1), mask=mask_c)


@triton.jit
def _dx_kernel(dy_ptr, x_ptr, dx_ptr, g_ptr, a_ptr, b_ptr, maxv_ptr, C, HW, stride_n, stride_c, stride_hw,
               WITH_MAX: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    # dx = dy·g + a (+ b where x == maxv), coefficients per (n, c).
    n, hw_block = sample_and_block(HW, BLOCK_HW)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_hw = hw_block * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask_c = offs_c < C
    mask = mask_c[:, None] & (offs_hw[None, :] < HW)
    nc = n * C + offs_c
    g = tl.load(g_ptr + nc, mask=mask_c, other=0.0)
    a = tl.load(a_ptr + nc, mask=mask_c, other=0.0)
    off = n * stride_n + offs_c[:, None].to(tl.int64) * stride_c + offs_hw[None, :].to(tl.int64) * stride_hw
    dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(ACC)
    dx = dy * g[:, None] + a[:, None]
    if WITH_MAX:
        b = tl.load(b_ptr + nc, mask=mask_c, other=0.0)
        m = tl.load(maxv_ptr + nc, mask=mask_c, other=0.0)
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
        dx += tl.where(x == m[:, None], b[:, None], 0.0)
    tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _tl_acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def dense(x):
    """x dense in its suggested memory format, and the (n, c, hw) strides of
    that layout. The strides are derived from the shape, not read from x: a
    tensor with size-1 dimensions counts as contiguous whatever strides those
    dimensions report (e.g. [1, 1, 2, 1] with strides (2, 2, 1, 2)), and
    x.stride(3) is then not the step between pixels (the fuzz test found it)."""
    from torch._prims_common import suggest_memory_format

    fmt = suggest_memory_format(x)
    x = x.contiguous(memory_format=fmt)
    _, C, H, W = x.shape
    if fmt == torch.channels_last:
        return x, (H * W * C, 1, C)
    return x, (C * H * W, H * W, 1)


def _linear(v, w, b):
    return torch.addmm(b, v, w.t()) if b is not None else v @ w.t()


# ---- derivatives of the activations and gates, PyTorch's definitions ---------

def _act_backward(act, grad, h):
    if act == "relu":
        return torch.where(h > 0, grad, torch.zeros_like(grad))
    if act == "silu":
        return torch.ops.aten.silu_backward(grad, h)
    if act == "gelu":
        return torch.ops.aten.gelu_backward(grad, h, approximate="none")
    if act == "gelu_tanh":
        return torch.ops.aten.gelu_backward(grad, h, approximate="tanh")
    return torch.ops.aten.hardswish_backward(grad, h)


def gate_backward(gate, grad, z, g):
    if gate == "sigmoid":
        return grad * (1 - g) * g
    # Written out: ATen's CPU hardsigmoid_backward uses a float32 1/6.
    return torch.where((z > -3) & (z < 3), grad / 6, torch.zeros_like(grad))


# ---- the passes over the big tensors, shared with ECA (triton/eca.py) -------
# Each takes x dense (``dense``) with its (n, c, hw) strides.

def tiles(HW, block_c=_BLOCK_C, block_hw=_BLOCK_HW):
    """(BLOCK_C, BLOCK_HW) for a pass over x: the default [block_c, block_hw]
    tile, narrowed to H·W and widened over C by as much (to at most 256
    channels) when H·W is smaller (late stages: 7×7, 1×1), so fewer lanes are
    masked and fewer programs launched. Powers of two. H·W is specialized
    (int(): a guard on its value under torch.compile(dynamic=True)) — the
    tile is a constexpr, so the kernel is specialized on it anyway — rather
    than pushed through next_power_of_2's bit operations as a SymInt."""
    narrow = min(block_hw, triton.next_power_of_2(max(1, int(HW))))
    return max(block_c, min(256, block_c * block_hw // narrow)), narrow


def pixel_block_grid(N, C, HW, block_c, block_hw):
    """The grid of a pass tiled over channels and pixels: (sample, pixel block)
    pairs on axis 0 (``sample_and_block``), channel blocks on axis 1."""
    return (N * triton.cdiv(HW, block_hw), triton.cdiv(C, block_c))


# A pass that reduces over H·W runs one program per (sample, channel block)
# and row of pixels. When those are too few to fill the GPU (small N·C, large
# H·W: early stages at small batch), the rows are split over grid axis 2 into
# partials that torch then sums in a fixed order (deterministic, no atomics):
# enough programs for _WAVES per SM, each still at least _MIN_SPLIT_TILES tiles.
# Without a GPU (the interpreter) the split is the one a 132-SM GPU would take.
_WAVES, _MIN_SPLIT_TILES, _NO_GPU_SMS = 4, 4, 132


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def hw_split(x, rows, HW, block_hw):
    """(S, CHUNK): the programs sharing each of ``rows`` rows of H·W pixels,
    and the pixels of each (a multiple of block_hw; the last may hold fewer,
    none holds none). (1, H·W) when the rows alone fill the GPU — and when the
    batch is symbolic (torch.compile, dynamic=True), which a choice here
    would guard on."""
    if not isinstance(rows, int) or HW <= block_hw:
        return 1, HW
    sms = _sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device()) \
        if x.device.type == "cuda" else _NO_GPU_SMS
    n_tiles = triton.cdiv(HW, block_hw)
    splits = min(triton.cdiv(_WAVES * sms, rows), n_tiles // _MIN_SPLIT_TILES)
    if splits <= 1:
        return 1, HW
    chunk = triton.cdiv(n_tiles, splits) * block_hw
    return triton.cdiv(HW, chunk), chunk


def row_reduce_grid(x, N, C, HW, block_c, block_hw):
    """(grid, CHUNK, lead) of a pass that reduces rows of H·W pixels, one per
    (sample, channel block): grid (N, channel blocks, splits) and CHUNK from
    hw_split; lead, the partials' leading shape: (splits,) when split, () when
    not (the kernel then writes the final [N, …] values)."""
    splits, chunk = hw_split(x, N * triton.cdiv(C, block_c), HW, block_hw)
    return (N, triton.cdiv(C, block_c), splits), chunk, (splits,) if splits > 1 else ()


def pool_pass(x, strides, with_max):
    """pooled [N, C] (mean, or 0.5·mean + 0.5·max) and maxv ([0, 0] unless with_max)."""
    N, C, H, W = x.shape
    HW = H * W
    acc = acc_dtype(x.dtype)
    if N == 0 or C == 0:
        return x.new_empty((N, C), dtype=acc), x.new_empty((N, C) if with_max else (0, 0), dtype=acc)
    bc, bhw = tiles(HW)
    grid, chunk, lead = row_reduce_grid(x, N, C, HW, bc, bhw)
    pooled = x.new_empty(lead + (N, C), dtype=acc)
    maxv = x.new_empty(lead + (N, C) if with_max else (0, 0), dtype=acc)
    launch(_pool_kernel)[grid](
        x, pooled, maxv, N * C, C, HW, chunk, *strides, WITH_MAX=with_max, SPLIT=bool(lead),
        ACC=_tl_acc(x.dtype), BLOCK_C=bc, BLOCK_HW=bhw)
    if lead:
        pooled = pooled.sum(0) / HW
        if with_max:
            maxv = maxv.amax(0)
            pooled = 0.5 * pooled + 0.5 * maxv
    return pooled, maxv


def scale_pass(x, strides, g):
    """y = x · g[:, :, None, None], in x's layout."""
    N, C, H, W = x.shape
    y = _new_output(x)
    if x.numel() > 0:
        bc, bhw = tiles(H * W)
        grid = pixel_block_grid(N, C, H * W, bc, bhw)
        launch(_scale_kernel)[grid](x, g.contiguous(), y, C, H * W, *strides, ACC=_tl_acc(x.dtype),
                                    BLOCK_C=bc, BLOCK_HW=bhw)
    return y


def reduce_pass(grad_y, x, strides, maxv, with_max):
    """dy in x's layout, s = Σ_hw dy·x and cnt = #{x == maxv} ([0, 0] unless with_max)."""
    N, C, H, W = x.shape
    acc = acc_dtype(x.dtype)
    fmt = torch.contiguous_format if strides == (C * H * W, H * W, 1) else torch.channels_last
    dy = grad_y if grad_y.is_contiguous(memory_format=fmt) else torch.empty_like(x).copy_(grad_y)
    if N == 0 or C == 0:
        return dy, x.new_empty((N, C), dtype=acc), x.new_empty((N, C) if with_max else (0, 0), dtype=acc)
    bc, bhw = tiles(H * W)
    grid, chunk, lead = row_reduce_grid(x, N, C, H * W, bc, bhw)
    s = x.new_empty(lead + (N, C), dtype=acc)
    cnt = x.new_empty(lead + (N, C) if with_max else (0, 0), dtype=acc)
    launch(_reduce_kernel)[grid](
        dy, x, maxv, s, cnt, N * C, C, H * W, chunk, *strides, WITH_MAX=with_max,
        ACC=_tl_acc(x.dtype), BLOCK_C=bc, BLOCK_HW=bhw)
    if lead:
        s = s.sum(0)
        cnt = cnt.sum(0) if with_max else cnt
    return dy, s, cnt


def input_grad_pass(dy, x, strides, g, dp, maxv, cnt, with_max):
    """dx = dy·g + dp spread over H·W (the max's half over the tied maxima)."""
    N, C, H, W = x.shape
    HW = H * W
    # (H·W = 0: dx is empty and a unused; only the division must not raise)
    a = (dp * ((0.5 if with_max else 1.0) / max(HW, 1))).contiguous()
    b = (dp * 0.5 / cnt).contiguous() if with_max else a
    dx = _new_output(x)
    if x.numel() > 0:
        bc, bhw = tiles(HW)
        grid = pixel_block_grid(N, C, HW, bc, bhw)
        launch(_dx_kernel)[grid](dy, x, dx, g.contiguous(), a, b, maxv, C, HW, *strides, WITH_MAX=with_max,
                                 ACC=_tl_acc(x.dtype), BLOCK_C=bc, BLOCK_HW=bhw)
    return dx


@triton_op("fused_attn::se_forward_triton", mutates_args=())
@on_tensor_device
def se_forward(x: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: Optional[torch.Tensor],
               fc2_weight: Optional[torch.Tensor], fc2_bias: Optional[torch.Tensor], act: str, gate: str,
               pool: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as ``fused_attn::se_forward``: (y, pooled, maxv, hidden, logits)."""
    acc = acc_dtype(x.dtype)
    x, strides = dense(x)
    pooled, maxv = pool_pass(x, strides, pool == "avgmax")
    w1 = fc1_weight.to(acc)
    b1 = None if fc1_bias is None else fc1_bias.to(acc)
    if fc2_weight is not None:
        hidden = _linear(pooled, w1, b1)
        b2 = None if fc2_bias is None else fc2_bias.to(acc)
        logits = _linear(ACTIVATIONS[act](hidden), fc2_weight.to(acc), b2)
    else:
        hidden = x.new_empty((0, 0), dtype=acc)
        logits = _linear(pooled, w1, b1)
    y = scale_pass(x, strides, GATES[gate](logits))
    return y, pooled, maxv, hidden.contiguous(), logits.contiguous()


@triton_op("fused_attn::se_backward_triton", mutates_args=())
@on_tensor_device
def se_backward(grad_y: torch.Tensor, x: torch.Tensor, fc1_weight: torch.Tensor, fc2_weight: Optional[torch.Tensor],
                pooled: torch.Tensor, maxv: torch.Tensor, hidden: torch.Tensor, logits: torch.Tensor, act: str,
                gate: str, pool: str, has_fc1_bias: bool, has_fc2_bias: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as ``fused_attn::se_backward``."""
    acc = acc_dtype(x.dtype)
    with_max = pool == "avgmax"
    x, strides = dense(x)
    dy, s, cnt = reduce_pass(grad_y, x, strides, maxv, with_max)
    w1 = fc1_weight.to(acc)
    g = GATES[gate](logits)
    dz = gate_backward(gate, s, logits, g)
    empty = fc1_weight.new_empty((0,))
    if fc2_weight is not None:
        w2 = fc2_weight.to(acc)
        dw2 = (dz.t() @ ACTIVATIONS[act](hidden)).to(fc1_weight.dtype)
        db2 = dz.sum(0).to(fc1_weight.dtype) if has_fc2_bias else empty.clone()
        d_first = _act_backward(act, dz @ w2, hidden)
    else:
        dw2, db2 = empty.clone(), empty.clone()
        d_first = dz
    dw1 = (d_first.t() @ pooled).to(fc1_weight.dtype)
    db1 = d_first.sum(0).to(fc1_weight.dtype) if has_fc1_bias else empty.clone()
    dx = input_grad_pass(dy, x, strides, g, d_first @ w1, maxv, cnt, with_max)
    return dx, dw1, db1, dw2, db2


register_se_autograd("fused_attn::se_forward_triton", torch.ops.fused_attn.se_backward_triton)
