"""CBAM in Triton: the channel gate, then the spatial gate, with the same
contract as the C++ ops (``fused_attn::cbam_forward`` / ``cbam_backward``,
csrc/fused_attn.cpp; the algorithm of csrc/cpu/cbam_kernel.cpp).

    channel gate   a = mlp(mean_hw x) + mlp(max_hw x)   (light: mlp(½mean + ½max))
                   g = gate(a)                          (light: sigmoid)       x1 = x·g (rounded to x's dtype)
    spatial gate   m = [mean_c x1, max_c x1]            (light: ½mean + ½max; max_first: [max, mean])
                   z = conv_kxk(m),  s = gate(bn(z))                          y = x1·s

Passes over the big tensors (|x| = bytes of x); everything else is on [N, C]
or [N, H·W] tensors:

    forward:  spatial mean and max per (n, c)            read x
              (MLP, channel gate: torch on [N, C])
              channel mean and max of x1 per pixel        read x
              (k×k conv: a small kernel; BatchNorm, spatial gate: torch on [N, H·W])
              y = x1·s                                    read x, write y         4|x|
    backward: ds = Σ_c dy·x1 and the channel max's ties   read dy, x
              (BatchNorm backward: torch; conv backward: two small kernels)
              dg = Σ_hw dx1·x and the spatial max's ties  read dy, x
              (channel gate and MLP backward: torch, weight grads as GEMMs)
              dx = dx1·g + the spatial pools' shares      read dy, x, write dx    7|x|

x1 is never stored: each pass recomputes it from x and g, rounded exactly as
the forward rounded it, so the backward finds the forward's ties. The max
pools send their gradient to every tied maximum in equal shares (as
torch.amax does). Tiles are [BLOCK_C, BLOCK_HW] over one sample addressed
through x's strides (NCHW and channels_last alike, see ``se.dense``), offsets
int64; accumulation in fp32 (fp64 for fp64 x). Every reduction runs in a
fixed order inside one program (or as a torch sum over per-sample partials),
so results are deterministic. The spatial convolution and its gradients are
Triton kernels rather than F.conv2d: no cuDNN algorithm choice (TF32, atomics
in the weight gradient) can change the precision or the bits.
"""
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ..ops.cbam import check_cbam_args, check_cbam_names, register_cbam_autograd
from ..ops.se import acc_dtype
from ..reference.se import ACTIVATIONS, GATES
from .se import (_POISON, _act_backward, _linear, _new_output, _tl_acc, dense, gate_backward, launch, mean_of,
                 on_tensor_device, pixel_block_grid, row_reduce_grid, sample_and_block, split_range, tiles)

# Tiles for the passes that reduce over H·W (per channel) and over C (per
# pixel); the elementwise passes use the first. Powers of two.
_BLOCK_C, _BLOCK_HW = 16, 128
_PIX_BLOCK_C, _PIX_BLOCK_HW = 32, 64
_MAP_BLOCK = 128     # at most this many pixels per program in the convolutions on the maps


def _empty(like, shape, dtype):
    out = like.new_empty(shape, dtype=dtype)
    return out.fill_(float("nan")) if _POISON else out


# ---- the passes over x --------------------------------------------------------

@triton.jit
def _spatial_pool_kernel(x_ptr, pooled_ptr, plane, C, HW, CHUNK, stride_n, stride_c, stride_hw,
                         SPLIT: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    # pooled[0, n, c] = mean_hw x, pooled[1, n, c] = max_hw x. plane = N·C, from the host: an int
    # argument is typed int64 when it needs to be, a product N·C in the kernel would be int32.
    # SPLIT: the split's pixels (se.split_range) into pooled[split] = (sum, max), for the host.
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    lo, hi, part = split_range(HW, CHUNK, 2 * plane)
    row = x_ptr + n * stride_n + offs_c[:, None].to(tl.int64) * stride_c
    acc = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    mx = tl.full([BLOCK_C, BLOCK_HW], float("-inf"), ACC)
    for hw0 in range(lo, hi, BLOCK_HW):
        offs_hw = hw0 + tl.arange(0, BLOCK_HW)
        mask = mask_c[:, None] & (offs_hw[None, :] < hi)
        v = tl.load(row + offs_hw[None, :].to(tl.int64) * stride_hw, mask=mask, other=0.0).to(ACC)
        acc += v
        mx = tl.where(mask, tl.maximum(mx, v, propagate_nan=tl.PropagateNan.ALL), mx)
    # tl.max drops NaNs; torch.amax (the reference) keeps them.
    has_nan = tl.max(tl.where(mx != mx, 1, 0), axis=1) > 0
    m = tl.where(has_nan, float("nan"), tl.max(mx, axis=1))
    nc = part + n * C + offs_c
    total = tl.sum(acc, axis=1)
    tl.store(pooled_ptr + nc, total if SPLIT else mean_of(total, HW, ACC), mask=mask_c)
    tl.store(pooled_ptr + plane + nc, m, mask=mask_c)


@triton.jit
def _x1(x, g, T: tl.constexpr, ACC: tl.constexpr):
    # x1 = x·g rounded to x's dtype, as the module's multiply rounds it. For
    # bfloat16 the rounding (to nearest, ties to even) is written out on the
    # float32 bits: Triton's interpreter truncates float32 → bfloat16, which
    # would move the channel max's ties away from the compiled kernels' (and
    # the C++ ones').
    p = x * g
    if T == tl.bfloat16:
        bits = p.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        r = bits.to(tl.float32, bitcast=True)
        return tl.where(p != p, p, r).to(ACC)
    return p.to(T).to(ACC)


@triton.jit
def _channel_pool_kernel(x_ptr, g_ptr, smap_ptr, plane, C, HW, stride_n, stride_c, stride_hw,
                         ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    # smap[0, n, p] = mean_c x1, smap[1, n, p] = max_c x1; plane = N·H·W (as above).
    n, hw_block = sample_and_block(HW, BLOCK_HW)
    offs_hw = hw_block * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask_hw = offs_hw < HW
    col = x_ptr + n * stride_n + offs_hw[None, :].to(tl.int64) * stride_hw
    acc = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    mx = tl.full([BLOCK_C, BLOCK_HW], float("-inf"), ACC)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_c[:, None] & mask_hw[None, :]
        g = tl.load(g_ptr + n * C + offs_c, mask=mask_c, other=0.0)
        x = tl.load(col + offs_c[:, None].to(tl.int64) * stride_c, mask=mask, other=0.0)
        x1 = _x1(x.to(ACC), g[:, None], x_ptr.dtype.element_ty, ACC)
        acc += tl.where(mask, x1, 0.0)
        mx = tl.where(mask, tl.maximum(mx, x1, propagate_nan=tl.PropagateNan.ALL), mx)
    has_nan = tl.max(tl.where(mx != mx, 1, 0), axis=0) > 0
    m = tl.where(has_nan, float("nan"), tl.max(mx, axis=0))
    np_ = n * HW + offs_hw
    tl.store(smap_ptr + np_, mean_of(tl.sum(acc, axis=0), C, ACC), mask=mask_hw)
    tl.store(smap_ptr + plane + np_, m, mask=mask_hw)


@triton.jit
def _rescale_kernel(x_ptr, g_ptr, s_ptr, y_ptr, C, HW, stride_n, stride_c, stride_hw,
                    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    # y = x1 · s[n, p]; y has x's strides.
    n, hw_block = sample_and_block(HW, BLOCK_HW)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_hw = hw_block * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask_c = offs_c < C
    mask_hw = offs_hw < HW
    mask = mask_c[:, None] & mask_hw[None, :]
    g = tl.load(g_ptr + n * C + offs_c, mask=mask_c, other=0.0)
    s = tl.load(s_ptr + n * HW + offs_hw, mask=mask_hw, other=0.0)
    off = n * stride_n + offs_c[:, None].to(tl.int64) * stride_c + offs_hw[None, :].to(tl.int64) * stride_hw
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
    y = _x1(x, g[:, None], x_ptr.dtype.element_ty, ACC) * s[None, :]
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pixel_reduce_kernel(dy_ptr, x_ptr, g_ptr, cmax_ptr, ds_ptr, cnt_ptr, C, HW, stride_n, stride_c, stride_hw,
                         ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    # ds[n, p] = Σ_c dy·x1; cnt[n, p] = #{c : x1 == cmax[n, p]}.
    n, hw_block = sample_and_block(HW, BLOCK_HW)
    offs_hw = hw_block * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask_hw = offs_hw < HW
    cmax = tl.load(cmax_ptr + n * HW + offs_hw, mask=mask_hw, other=0.0)
    base = n * stride_n + offs_hw[None, :].to(tl.int64) * stride_hw
    acc = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    cnt = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_c[:, None] & mask_hw[None, :]
        g = tl.load(g_ptr + n * C + offs_c, mask=mask_c, other=0.0)
        off = base + offs_c[:, None].to(tl.int64) * stride_c
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(ACC)
        x1 = _x1(x, g[:, None], x_ptr.dtype.element_ty, ACC)
        acc += dy * x1
        cnt += tl.where(mask & (x1 == cmax[None, :]), 1.0, 0.0)
    tl.store(ds_ptr + n * HW + offs_hw, tl.sum(acc, axis=0), mask=mask_hw)
    tl.store(cnt_ptr + n * HW + offs_hw, tl.sum(cnt, axis=0), mask=mask_hw)


@triton.jit
def _dx1(dy, x1, s_ptr, dcmean_ptr, dcmax_ptr, cmax_ptr, pix, mask_hw):
    # dx1 = dy·s + dL/dcmean / C + (dL/dcmax / ties where x1 is its pixel's channel max);
    # the per-pixel coefficients are loaded by the caller's pixel offsets ``pix``.
    s = tl.load(s_ptr + pix, mask=mask_hw, other=0.0)
    dcmean = tl.load(dcmean_ptr + pix, mask=mask_hw, other=0.0)
    dcmax = tl.load(dcmax_ptr + pix, mask=mask_hw, other=0.0)
    cmax = tl.load(cmax_ptr + pix, mask=mask_hw, other=0.0)
    d = dy * s[None, :] + dcmean[None, :]
    return d + tl.where(x1 == cmax[None, :], dcmax[None, :], 0.0)


@triton.jit
def _channel_reduce_kernel(dy_ptr, x_ptr, g_ptr, s_ptr, dcmean_ptr, dcmax_ptr, cmax_ptr, mx_ptr, dg_ptr, cnt_ptr,
                           plane, C, HW, CHUNK, stride_n, stride_c, stride_hw,
                           ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    # dg[split, n, c] = Σ_hw dx1·x; cnt[split, n, c] = #{p : x == mx[n, c]}, over the split's pixels
    # (se.split_range; plane = N·C).
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    lo, hi, part = split_range(HW, CHUNK, plane)
    g = tl.load(g_ptr + n * C + offs_c, mask=mask_c, other=0.0)
    mx = tl.load(mx_ptr + n * C + offs_c, mask=mask_c, other=0.0)
    base = n * stride_n + offs_c[:, None].to(tl.int64) * stride_c
    acc = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    cnt = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    for hw0 in range(lo, hi, BLOCK_HW):
        offs_hw = hw0 + tl.arange(0, BLOCK_HW)
        mask_hw = offs_hw < hi
        mask = mask_c[:, None] & mask_hw[None, :]
        off = base + offs_hw[None, :].to(tl.int64) * stride_hw
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(ACC)
        x1 = _x1(x, g[:, None], x_ptr.dtype.element_ty, ACC)
        d = _dx1(dy, x1, s_ptr, dcmean_ptr, dcmax_ptr, cmax_ptr, n * HW + offs_hw, mask_hw)
        acc += tl.where(mask, d * x, 0.0)
        cnt += tl.where(mask & (x == mx[:, None]), 1.0, 0.0)
    nc = part + n * C + offs_c
    tl.store(dg_ptr + nc, tl.sum(acc, axis=1), mask=mask_c)
    tl.store(cnt_ptr + nc, tl.sum(cnt, axis=1), mask=mask_c)


@triton.jit
def _input_grad_kernel(dy_ptr, x_ptr, dx_ptr, g_ptr, s_ptr, dcmean_ptr, dcmax_ptr, cmax_ptr, mx_ptr, a_ptr, b_ptr,
                       C, HW, stride_n, stride_c, stride_hw,
                       ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    # dx = dx1·g + a[n, c] (+ b[n, c] where x is its channel's spatial max).
    n, hw_block = sample_and_block(HW, BLOCK_HW)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_hw = hw_block * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask_c = offs_c < C
    mask_hw = offs_hw < HW
    mask = mask_c[:, None] & mask_hw[None, :]
    nc = n * C + offs_c
    g = tl.load(g_ptr + nc, mask=mask_c, other=0.0)
    mx = tl.load(mx_ptr + nc, mask=mask_c, other=0.0)
    a = tl.load(a_ptr + nc, mask=mask_c, other=0.0)
    b = tl.load(b_ptr + nc, mask=mask_c, other=0.0)
    off = n * stride_n + offs_c[:, None].to(tl.int64) * stride_c + offs_hw[None, :].to(tl.int64) * stride_hw
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
    dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(ACC)
    x1 = _x1(x, g[:, None], x_ptr.dtype.element_ty, ACC)
    d = _dx1(dy, x1, s_ptr, dcmean_ptr, dcmax_ptr, cmax_ptr, n * HW + offs_hw, mask_hw) * g[:, None] + a[:, None]
    d += tl.where(x == mx[:, None], b[:, None], 0.0)
    tl.store(dx_ptr + off, d.to(dx_ptr.dtype.element_ty), mask=mask)


# ---- the k×k convolution on the [N, maps, H, W] maps ---------------------------
# Each program takes a block of pixels and every tap (ci, i, j) of the kernel
# at once, as a [pixels, taps] tile: one gather and one reduction instead of
# a loop over the taps (which the interpreter runs op by op, in Python).

@triton.jit
def _taps(CIN, K, TAPS: tl.constexpr):
    # The tap indices t = (ci, i, j) padded to TAPS, and their mask.
    t = tl.arange(0, TAPS)
    return t, t < CIN * K * K


@triton.jit
def _tap_tile(in_ptr, n, offs, mask, t, tmask, H, W, CIN, K, PAD, ACC: tl.constexpr):
    # The [pixels, taps] tile of sample n's maps: v[p, t] = in[n, ci, p shifted by (i − PAD, j − PAD)]
    # for tap t = (ci, i, j), zero outside the map (and for the padding taps ≥ CIN·K·K). The taps
    # come from the caller: an index returned from here would derive from in_ptr for Inductor's
    # mutation analysis, which would then take a store through it as a write to in_ptr.
    ci = t // (K * K)
    yy = (offs // W)[:, None] + ((t // K) % K - PAD)[None, :]
    xx = (offs % W)[:, None] + (t % K - PAD)[None, :]
    ok = mask[:, None] & tmask[None, :] & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
    src = in_ptr + (n * CIN + ci[None, :].to(tl.int64)) * (H * W) + yy * W + xx
    return tl.load(src, mask=ok, other=0.0).to(ACC)


@triton.jit
def _conv_kernel(in_ptr, w_ptr, out_ptr, H, W, CIN, COUT, K, PAD, ACC: tl.constexpr, BLOCK: tl.constexpr,
                 TAPS: tl.constexpr):
    # out[n, co] = Σ_ci Σ_ij w[co, ci, i, j] · in[n, ci] shifted by (i − PAD, j − PAD), zero padding
    # ('same' size, stride 1); the taps summed by one tree reduction (a fixed order).
    HW = H * W
    row, block = sample_and_block(HW, BLOCK)   # row = n·COUT + co
    n = row // COUT
    co = row % COUT
    offs = block * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    t, tmask = _taps(CIN, K, TAPS)
    v = _tap_tile(in_ptr, n, offs, mask, t, tmask, H, W, CIN, K, PAD, ACC)
    wv = tl.load(w_ptr + co * CIN * K * K + t, mask=tmask, other=0.0)
    acc = tl.sum(v * wv[None, :].to(ACC), axis=1)
    tl.store(out_ptr + row * HW + offs, acc, mask=mask)


@triton.jit
def _conv_wgrad_kernel(in_ptr, dz_ptr, part_ptr, H, W, CIN, K, PAD, ACC: tl.constexpr, BLOCK: tl.constexpr,
                       TAPS: tl.constexpr):
    # part[n, b, tap] = Σ_{p in block b} dz[n, p] · in[n, ci, p shifted by (i − PAD, j − PAD)]: one
    # pixel block's share of the weight gradient (summed over n and b in torch, fixed order).
    HW = H * W
    n, b = sample_and_block(HW, BLOCK)
    offs = b * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    t, tmask = _taps(CIN, K, TAPS)
    v = _tap_tile(in_ptr, n, offs, mask, t, tmask, H, W, CIN, K, PAD, ACC)
    d = tl.load(dz_ptr + n * HW + offs, mask=mask, other=0.0).to(ACC)
    part = tl.sum(d[:, None] * v, axis=0)
    taps = CIN * K * K
    tl.store(part_ptr + tl.program_id(0).to(tl.int64) * taps + t, part, mask=tmask)  # part[n, b]


def _map_tiles(cin, k):
    """(pixels per program, taps padded to a power of two, warps): tiles of about
    8K elements, 16 per thread. Four warps (Triton's default) would hold 64 each:
    on sm_90 ptxas then took all 255 registers and spilled up to 576 bytes per
    thread (`make triton-check` prints each kernel's registers and stack)."""
    taps = triton.next_power_of_2(cin * k * k)
    block = max(16, min(_MAP_BLOCK, 8192 // taps))
    return block, taps, max(4, min(16, block * taps // (16 * 32)))


def _conv(inp, w, H, W):
    """inp [N, CIN, H·W], w [COUT, CIN, k, k] (accumulation dtype) → [N, COUT, H·W]."""
    N, CIN, HW = inp.shape
    COUT, k = w.shape[0], w.shape[-1]
    out = _empty(inp, (N, COUT, HW), inp.dtype)
    block, taps, warps = _map_tiles(CIN, k)
    grid = (N * COUT * triton.cdiv(HW, block),)  # (row, pixel block) pairs: sample_and_block
    launch(_conv_kernel)[grid](inp.contiguous(), w.contiguous(), out, H, W, CIN, COUT, k, (k - 1) // 2,
                               ACC=_tl_acc(inp.dtype), BLOCK=block, TAPS=taps, num_warps=warps)
    return out


def _conv_weight_grad(inp, dz, k, H, W):
    """dL/dw [CIN, k, k] of out = conv(inp, w) (one output map) given dz [N, H·W]."""
    N, CIN, HW = inp.shape
    block, taps, warps = _map_tiles(CIN, k)
    blocks = triton.cdiv(HW, block)
    part = _empty(inp, (N, blocks, CIN * k * k), inp.dtype)
    grid = (N * blocks,)   # (n, pixel block) pairs: sample_and_block
    launch(_conv_wgrad_kernel)[grid](inp.contiguous(), dz.contiguous(), part, H, W, CIN, k, (k - 1) // 2,
                                     ACC=_tl_acc(inp.dtype), BLOCK=block, TAPS=taps, num_warps=warps)
    return part.sum((0, 1)).view(CIN, k, k)


# ---- the small tensors -------------------------------------------------------

def _conv_input(smap, light, max_first):
    """The conv's input maps [N, maps, H·W] from smap [2, N, H·W]."""
    cmean, cmax = smap[0], smap[1]
    if light:
        return (0.5 * cmean + 0.5 * cmax).unsqueeze(1)
    return torch.stack([cmax, cmean] if max_first else [cmean, cmax], 1)


def _bn_affine(bn_w, bn_b, acc, like):
    gamma = like.new_ones((), dtype=acc) if bn_w is None else bn_w.reshape(()).to(acc)
    beta = like.new_zeros((), dtype=acc) if bn_b is None else bn_b.reshape(()).to(acc)
    return gamma, beta


def _invstd(stats, eps, acc):
    # As the C++ kernel: in double from the stored statistics, then rounded.
    return (1.0 / torch.sqrt(stats[1].double() + eps)).to(acc)


def _tiles(HW):
    """(BLOCK_C, BLOCK_HW) of the passes tiled over channels (se.tiles)."""
    return tiles(HW, _BLOCK_C, _BLOCK_HW)


def _pix_tiles(HW):
    """(BLOCK_C, BLOCK_HW) of the passes that reduce over C per pixel, likewise."""
    return tiles(HW, _PIX_BLOCK_C, _PIX_BLOCK_HW)


def _pixel_grid(N, HW):
    return (N * triton.cdiv(HW, _pix_tiles(HW)[1]),)  # (n, pixel block) pairs: sample_and_block


def _in_layout(grad_y, x, strides):
    """grad_y in x's (dense) layout."""
    C, H, W = x.shape[1:]
    fmt = torch.contiguous_format if strides == (C * H * W, H * W, 1) else torch.channels_last
    return grad_y if grad_y.is_contiguous(memory_format=fmt) else torch.empty_like(x).copy_(grad_y)


@triton_op("fused_attn::cbam_forward_triton", mutates_args=())
@on_tensor_device
def cbam_forward(x: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: Optional[torch.Tensor], fc2_weight: torch.Tensor,
                 fc2_bias: Optional[torch.Tensor], spatial_weight: torch.Tensor, bn_weight: Optional[torch.Tensor],
                 bn_bias: Optional[torch.Tensor], bn_running_mean: Optional[torch.Tensor],
                 bn_running_var: Optional[torch.Tensor], bn_eps: float, act: str, gate: str, light: bool,
                 max_first: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as ``fused_attn::cbam_forward``: (y, pooled [2, N, C], logits [N, C],
    smap [2, N, H·W], z [N, H·W], bn_stats [2])."""
    check_cbam_args(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, light,
                    (("bn_weight", bn_weight), ("bn_bias", bn_bias), ("bn_running_mean", bn_running_mean),
                     ("bn_running_var", bn_running_var)))
    check_cbam_names(act, gate)
    acc = acc_dtype(x.dtype)
    x, strides = dense(x)
    N, C, H, W = x.shape
    HW = H * W
    y = _new_output(x)
    if N == 0 or C == 0 or HW == 0:   # as the C++ op: zeros, and NaN statistics of nothing
        stats = x.new_zeros((2,), dtype=acc)
        if C == 0 or HW == 0:
            stats = stats + float("nan")
        return (y, x.new_zeros((2, N, C), dtype=acc), x.new_zeros((N, C), dtype=acc),
                x.new_zeros((2, N, HW), dtype=acc), x.new_zeros((N, HW), dtype=acc), stats)
    tacc = _tl_acc(x.dtype)

    # The channel gate.
    bc, bhw = _tiles(HW)
    pc, phw = _pix_tiles(HW)
    grid, chunk, lead = row_reduce_grid(x, N, C, HW, bc, bhw)
    pooled = _empty(x, lead + (2, N, C), acc)
    launch(_spatial_pool_kernel)[grid](
        x, pooled, N * C, C, HW, chunk, *strides, SPLIT=bool(lead), ACC=tacc, BLOCK_C=bc, BLOCK_HW=bhw)
    if lead:
        pooled = torch.stack((pooled[:, 0].sum(0) / HW, pooled[:, 1].amax(0)))
    w1, w2 = fc1_weight.to(acc), fc2_weight.to(acc)
    b1 = None if fc1_bias is None else fc1_bias.to(acc)
    b2 = None if fc2_bias is None else fc2_bias.to(acc)

    def mlp(v):
        return _linear(ACTIVATIONS[act](_linear(v, w1, b1)), w2, b2)

    if light:
        logits = mlp(0.5 * pooled[0] + 0.5 * pooled[1])
        g = torch.sigmoid(logits)
    else:
        logits = mlp(pooled[0]) + mlp(pooled[1])
        g = GATES[gate](logits)
    logits, g = logits.contiguous(), g.contiguous()

    # The spatial gate.
    smap = _empty(x, (2, N, HW), acc)
    launch(_channel_pool_kernel)[_pixel_grid(N, HW)](
        x, g, smap, N * HW, C, HW, *strides, ACC=tacc, BLOCK_C=pc, BLOCK_HW=phw)
    ws = spatial_weight.to(acc).unsqueeze(0)                      # [1, maps, k, k]
    z = _conv(_conv_input(smap, light, max_first), ws, H, W)[:, 0]   # [N, H·W]
    if bn_running_mean is not None and bn_running_var is not None:
        stats_d = torch.cat([bn_running_mean.reshape(1).double(), bn_running_var.reshape(1).double()])
    else:
        # Mean and biased variance over N·H·W in double, two passes (as the C++ op).
        zd = z.double()
        mean = zd.mean()
        stats_d = torch.stack([mean, (zd - mean).square().mean()])
    mu = stats_d[0].to(acc)
    invstd = _invstd(stats_d, bn_eps, acc)
    gamma, beta = _bn_affine(bn_weight, bn_bias, acc, x)
    s = GATES[gate](gamma * (z - mu) * invstd + beta).contiguous()

    launch(_rescale_kernel)[pixel_block_grid(N, C, HW, bc, bhw)](
        x, g, s, y, C, HW, *strides, ACC=tacc, BLOCK_C=bc, BLOCK_HW=bhw)
    return y, pooled, logits, smap, z.contiguous(), stats_d.to(acc)


@triton_op("fused_attn::cbam_backward_triton", mutates_args=())
@on_tensor_device
def cbam_backward(grad_y: torch.Tensor, x: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: Optional[torch.Tensor],
                  fc2_weight: torch.Tensor, fc2_bias: Optional[torch.Tensor], spatial_weight: torch.Tensor,
                  bn_weight: Optional[torch.Tensor], bn_bias: Optional[torch.Tensor], pooled: torch.Tensor,
                  logits: torch.Tensor, smap: torch.Tensor, z: torch.Tensor, bn_stats: torch.Tensor,
                  bn_batch_stats: bool, bn_eps: float, act: str, gate: str, light: bool, max_first: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor, torch.Tensor]:
    """Same contract as ``fused_attn::cbam_backward``: (dx, dfc1_weight, dfc1_bias, dfc2_weight,
    dfc2_bias, dspatial_weight, dbn_weight, dbn_bias), a [0] tensor for an absent parameter."""
    check_cbam_args(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, light)
    check_cbam_names(act, gate)
    torch._check(grad_y.shape == x.shape, lambda: f"grad_y must have x's shape {list(x.shape)}, "
                                                  f"got {list(grad_y.shape)}")
    acc = acc_dtype(x.dtype)
    x, strides = dense(x)
    N, C, H, W = x.shape
    HW = H * W
    k = spatial_weight.shape[-1]
    maps = 1 if light else 2
    empty = spatial_weight.new_empty((0,))

    def grads_out(dx, dw1, db1, dw2, db2, dws, dgamma, dbeta):
        def param(t, grad):
            return empty.clone() if t is None else grad.to(t.dtype).view(t.shape)

        return (dx, dw1.to(fc1_weight.dtype), param(fc1_bias, db1), dw2.to(fc2_weight.dtype), param(fc2_bias, db2),
                dws.to(spatial_weight.dtype), param(bn_weight, dgamma), param(bn_bias, dbeta))

    dx = _new_output(x)
    if N == 0 or C == 0 or HW == 0:   # nothing flows: zero weight gradients, as the C++ op gives
        def zeros(*shape):
            return x.new_zeros(shape, dtype=acc)

        return grads_out(dx, zeros(*fc1_weight.shape), zeros(fc1_weight.shape[0]), zeros(*fc2_weight.shape),
                         zeros(C), zeros(maps, k, k), zeros(), zeros())
    tacc = _tl_acc(x.dtype)
    dy = _in_layout(grad_y, x, strides)
    cmax = smap[1].contiguous()
    g = (torch.sigmoid(logits) if light else GATES[gate](logits)).contiguous()

    # Pass 1: the spatial gate's gradient per pixel, and the channel max's ties.
    ds = _empty(x, (N, HW), acc)
    ccnt = _empty(x, (N, HW), acc)
    bc, bhw = _tiles(HW)
    pc, phw = _pix_tiles(HW)
    launch(_pixel_reduce_kernel)[_pixel_grid(N, HW)](
        dy, x, g, cmax, ds, ccnt, C, HW, *strides, ACC=tacc, BLOCK_C=pc, BLOCK_HW=phw)

    # The BatchNorm backward (batch statistics: through the batch mean and variance too).
    mu = bn_stats[0].to(acc)
    invstd = _invstd(bn_stats, bn_eps, acc)
    gamma, beta = _bn_affine(bn_weight, bn_bias, acc, x)
    bo = gamma * (z - mu) * invstd + beta
    s = GATES[gate](bo)
    dbn = gate_backward(gate, ds, bo, s)
    zhat_d = (z.double() - bn_stats[0].double()) * invstd.double()
    dbn_d = dbn.double()
    dbeta = dbn_d.sum()
    dgamma = (dbn_d * zhat_d).sum()
    if bn_batch_stats:
        count = N * HW
        zhat = (z - mu) * invstd
        dz = gamma * invstd * (dbn - (dbeta / count).to(acc) - zhat * (dgamma / count).to(acc))
    else:
        dz = gamma * invstd * dbn
    dz = dz.contiguous()

    # The convolution backward: dL/dm through the flipped kernel, and the weight gradient.
    m = _conv_input(smap, light, max_first).contiguous()
    dws = _conv_weight_grad(m, dz, k, H, W)
    dm = _conv(dz.unsqueeze(1), spatial_weight.to(acc).flip(-1, -2).unsqueeze(1), H, W)   # [N, maps, H·W]
    if light:
        dmean = dmax = 0.5 * dm[:, 0]
    else:
        dmean, dmax = (dm[:, 1], dm[:, 0]) if max_first else (dm[:, 0], dm[:, 1])
    dcmean = (dmean * (1.0 / C)).contiguous()
    dcmax = (dmax / ccnt).contiguous()
    s = s.contiguous()

    # Pass 2: the channel gate's gradient per channel, and the spatial max's ties.
    mx = pooled[1].contiguous()
    grid, chunk, lead = row_reduce_grid(x, N, C, HW, bc, bhw)
    dg = _empty(x, lead + (N, C), acc)
    scnt = _empty(x, lead + (N, C), acc)
    launch(_channel_reduce_kernel)[grid](
        dy, x, g, s, dcmean, dcmax, cmax, mx, dg, scnt, N * C, C, HW, chunk, *strides,
        ACC=tacc, BLOCK_C=bc, BLOCK_HW=bhw)
    if lead:
        dg, scnt = dg.sum(0), scnt.sum(0)

    # The channel gate and the MLP backward; the weight gradients as GEMMs over the batch.
    da = dg * (1 - g) * g if light else gate_backward(gate, dg, logits, g)
    w1, w2 = fc1_weight.to(acc), fc2_weight.to(acc)
    b1 = None if fc1_bias is None else fc1_bias.to(acc)
    dh = da @ w2                                                        # [N, rd], both branches
    inputs = [0.5 * pooled[0] + 0.5 * pooled[1]] if light else [pooled[0], pooled[1]]
    pre = [_linear(v, w1, b1) for v in inputs]
    dpre = [_act_backward(act, dh, p) for p in pre]
    hsum = sum(ACTIVATIONS[act](p) for p in pre)
    dw2 = da.t() @ hsum
    dw1 = torch.cat(dpre).t() @ torch.cat(inputs)
    db1 = sum(d.sum(0) for d in dpre)
    db2 = da.sum(0) * float(maps)
    dpool = [d @ w1 for d in dpre]
    if light:
        dpool = [0.5 * dpool[0]] * 2
    a = (dpool[0] * (1.0 / HW)).contiguous()      # the mean's share per pixel
    b = (dpool[1] / scnt).contiguous()            # the max's share per tie

    # Pass 3: dx.
    launch(_input_grad_kernel)[pixel_block_grid(N, C, HW, bc, bhw)](
        dy, x, dx, g, s, dcmean, dcmax, cmax, mx, a, b, C, HW, *strides, ACC=tacc, BLOCK_C=bc, BLOCK_HW=bhw)
    return grads_out(dx, dw1, db1, dw2, db2, dws, dgamma.to(acc), dbeta.to(acc))


register_cbam_autograd("fused_attn::cbam_forward_triton", torch.ops.fused_attn.cbam_backward_triton)
