// The CBAM CUDA kernels (cbam_cuda.h): the channel pool of x1, the backward's
// two reductions, the two elementwise passes and the spatial gate on the maps.
//
// A reduction runs over the channels of a pixel (channel pool, pixel reduce)
// or over the pixels of a channel (channel reduce). Whichever axis that is,
// the tensor of one sample is either [rows of the reduced axis] contiguous
// (reduce_rows: a warp, or for few long rows eight warps, per output) or
// [reduced axis, outputs] with the outputs contiguous (reduce_cols: 32·V
// outputs per block, 16 threads down the reduced axis, optionally split in
// segments). Both combine their partials in a fixed order.
#include "cbam_cuda.h"
#include "se_kernels.cuh"

#include <algorithm>
#include <initializer_list>
#include <type_traits>

namespace fused_attn::cuda {
namespace {

// x·g rounded to T, as the module's multiply rounds it (identity for fp32 / fp64).
template <typename T> __device__ __forceinline__ acc_t<T> round_to(acc_t<T> v) { return to_acc(from_acc<T>(v)); }

template <CbamReduce K> constexpr bool kOverC = K != CbamReduce::ChannelReduce;

// The running state of one output of a reduction.
template <typename T, CbamReduce K>
struct Red {
  using A = acc_t<T>;
  A sum, ext;

  __device__ __forceinline__ Red() : sum(A(0)), ext(K == CbamReduce::ChannelPool ? neg_inf<A>() : A(0)) {}

  // Element (c, q) of sample n, with its x and dy.
  __device__ __forceinline__ void add(const CbamPass& p, int64_t n, int64_t c, int64_t q, A x, A dy) {
    const A x1 = round_to<T>(x * static_cast<const A*>(p.g)[n * p.C + c]);
    if constexpr (K == CbamReduce::ChannelPool) {
      sum += x1;
      ext = nan_max(ext, x1);
    } else if constexpr (K == CbamReduce::PixelReduce) {
      sum += dy * x1;
      ext += x1 == static_cast<const A*>(p.cmax)[n * p.HW + q] ? A(1) : A(0);
    } else {
      const int64_t pix = n * p.HW + q;
      A d = dy * static_cast<const A*>(p.s)[pix] + static_cast<const A*>(p.dcmean)[pix];
      if (x1 == static_cast<const A*>(p.cmax)[pix]) d += static_cast<const A*>(p.dcmax)[pix];
      sum += d * x;
      ext += x == static_cast<const A*>(p.mx)[n * p.C + c] ? A(1) : A(0);
    }
  }
  __device__ __forceinline__ void merge(A s, A e) {
    sum += s;
    ext = K == CbamReduce::ChannelPool ? nan_max(ext, e) : ext + e;
  }
  // Output j of sample n (a pixel, or a channel for ChannelReduce).
  __device__ __forceinline__ void finish(const CbamPass& p, int64_t n, int64_t j) const {
    const int64_t at = kOverC<K> ? n * p.HW + j : n * p.C + j;
    static_cast<A*>(p.sum)[at] = K == CbamReduce::ChannelPool ? sum / static_cast<A>(p.C) : sum;
    static_cast<A*>(p.ext)[at] = ext;
  }
};

constexpr int kRowThreads = 256;
constexpr int kColsX = 32, kColsY = 16;

// Lengths of the reduced axis and of the outputs per sample, and whether the
// reduced axis is the contiguous one.
template <CbamReduce K> __host__ __device__ int64_t reduced_len(const CbamPass& p) { return kOverC<K> ? p.C : p.HW; }
template <CbamReduce K> __host__ __device__ int64_t outputs_len(const CbamPass& p) { return kOverC<K> ? p.HW : p.C; }
template <CbamReduce K> __host__ __device__ bool reduces_rows(const CbamPass& p) { return kOverC<K> == p.channels_last; }

// Rows of L contiguous elements, one output each; `wpr` warps (1 or 8) per
// row, lane l of a warp taking accesses l, l + 32·wpr, ...; the samples
// taken from the last back when REV (p.reverse). V > 1 needs L % V == 0 and
// 16-byte aligned tensors.
template <typename T, CbamReduce K, int V, bool REV>
__global__ void __launch_bounds__(kRowThreads) reduce_rows_kernel(const CbamPass p, const int wpr) {
  using A = acc_t<T>;
  __shared__ A sh_sum[kRowThreads / 32], sh_ext[kRowThreads / 32];
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ dy = static_cast<const T*>(p.dy);
  const int64_t L = reduced_len<K>(p), R = outputs_len<K>(p), rows = p.N * R;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int rows_per_block = (kRowThreads / 32) / wpr;
  const int group = warp / wpr, part = warp - group * wpr;
  const int64_t step = static_cast<int64_t>(32) * wpr * V;
  for (int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows_per_block; r0 < rows;
       r0 += static_cast<int64_t>(gridDim.x) * rows_per_block) {
    const int64_t v = r0 + group;  // REV: row j of sample N - 1 - n for row j of sample n
    const bool live = v < rows;
    const int64_t vn = live ? v / R : 0, j = live ? v - vn * R : 0;
    const int64_t n = REV ? p.N - 1 - vn : vn, r = REV ? n * R + j : v;
    Red<T, K> acc;
    if (live) {
      const T* xr = x + r * L;
      const T* dyr = K == CbamReduce::ChannelPool ? nullptr : dy + r * L;
#pragma unroll 2
      for (int64_t i = (static_cast<int64_t>(part) * 32 + lane) * V; i < L; i += step) {
        const Pack<T, V> xv = load_pack<T, V>(xr + i);
        Pack<T, V> dv;
        if constexpr (K != CbamReduce::ChannelPool) dv = load_pack<T, V>(dyr + i);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const int64_t idx = i + k;
          const A dyk = K == CbamReduce::ChannelPool ? A(0) : to_acc(dv.v[k]);
          if constexpr (kOverC<K>) {
            acc.add(p, n, idx, j, to_acc(xv.v[k]), dyk);
          } else {
            acc.add(p, n, j, idx, to_acc(xv.v[k]), dyk);
          }
        }
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const A s = __shfl_xor_sync(0xffffffffu, acc.sum, offset);
      const A e = __shfl_xor_sync(0xffffffffu, acc.ext, offset);
      acc.merge(s, e);
    }
    if (wpr == 1) {
      if (live && lane == 0) acc.finish(p, n, j);
    } else {
      if (lane == 0) {
        sh_sum[warp] = acc.sum;
        sh_ext[warp] = acc.ext;
      }
      __syncthreads();
      if (live && part == 0 && lane == 0) {
        for (int w = 1; w < wpr; ++w) acc.merge(sh_sum[warp + w], sh_ext[warp + w]);
        acc.finish(p, n, j);
      }
      __syncthreads();  // sh_* are rewritten for the next rows
    }
  }
}

// Per sample a [L, R] matrix (the R outputs contiguous): a block of 32 × 16
// threads takes 32·V adjacent outputs, threadIdx.y every 16th element of the
// reduced axis within segment blockIdx.z; partials summed in order through
// shared memory. REV (p.reverse) maps blockIdx.y and blockIdx.z to samples
// and segments in reverse. V > 1 needs R % V == 0 and 16-byte aligned
// tensors. (REV is a template parameter: a run-time flag cost the in-order
// kernels registers, and some of them a spill.)
template <typename T, CbamReduce K, int V, bool REV>
__global__ void __launch_bounds__(kColsX * kColsY) reduce_cols_kernel(const CbamPass p, const int64_t seg_len) {
  using A = acc_t<T>;
  __shared__ A part_sum[kColsY][kColsX * V];
  __shared__ A part_ext[kColsY][kColsX * V];
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ dy = static_cast<const T*>(p.dy);
  const int64_t L = reduced_len<K>(p), R = outputs_len<K>(p);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j0 = (static_cast<int64_t>(blockIdx.x) * kColsX + tx) * V;
  const bool active = j0 < R;
  const int64_t seg = REV ? p.segments - 1 - blockIdx.z : blockIdx.z;
  const int64_t begin = seg * seg_len, end = begin + seg_len < L ? begin + seg_len : L;
  for (int64_t m = blockIdx.y; m < p.N; m += gridDim.y) {
    const int64_t n = REV ? p.N - 1 - m : m;
    Red<T, K> acc[V];
    if (active) {
      const T* xs = x + n * L * R + j0;
      const T* dys = K == CbamReduce::ChannelPool ? nullptr : dy + n * L * R + j0;
#pragma unroll 2
      for (int64_t i = begin + ty; i < end; i += kColsY) {
        const Pack<T, V> xv = load_pack<T, V>(xs + i * R);
        Pack<T, V> dv;
        if constexpr (K != CbamReduce::ChannelPool) dv = load_pack<T, V>(dys + i * R);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const A dyk = K == CbamReduce::ChannelPool ? A(0) : to_acc(dv.v[k]);
          if constexpr (kOverC<K>) {
            acc[k].add(p, n, i, j0 + k, to_acc(xv.v[k]), dyk);
          } else {
            acc[k].add(p, n, j0 + k, i, to_acc(xv.v[k]), dyk);
          }
        }
      }
    }
#pragma unroll
    for (int k = 0; k < V; ++k) {
      part_sum[ty][tx * V + k] = acc[k].sum;
      part_ext[ty][tx * V + k] = acc[k].ext;
    }
    __syncthreads();
    if (ty == 0 && active) {
      A* partials = static_cast<A*>(p.partials);
      const int64_t rows = p.N * R;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        Red<T, K> total = acc[k];
        for (int y = 1; y < kColsY; ++y) total.merge(part_sum[y][tx * V + k], part_ext[y][tx * V + k]);
        if (p.segments == 1) {
          total.finish(p, n, j0 + k);
        } else {
          const int64_t row = n * R + j0 + k;
          partials[seg * rows + row] = total.sum;
          partials[(p.segments + seg) * rows + row] = total.ext;
        }
      }
    }
    __syncthreads();  // the partials are rewritten for the next sample
  }
}

// Combines reduce_cols' segments in order 0, 1, ... (one thread per output).
template <typename T, CbamReduce K>
__global__ void __launch_bounds__(kRowThreads) combine_kernel(const CbamPass p) {
  using A = acc_t<T>;
  const A* partials = static_cast<const A*>(p.partials);
  const int64_t R = outputs_len<K>(p), rows = p.N * R, S = p.segments;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowThreads + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kRowThreads) {
    Red<T, K> acc;
    acc.sum = partials[r];
    acc.ext = partials[S * rows + r];
    for (int64_t s = 1; s < S; ++s) acc.merge(partials[s * rows + r], partials[(S + s) * rows + r]);
    const int64_t n = r / R;
    acc.finish(p, n, r - n * R);
  }
}

// y = x1·s (forward) or dx (backward), V elements per thread per step,
// grid-stride. V > 1 needs the contiguous row (H·W or C) to be a multiple of
// V and 16-byte aligned tensors, so a pack never straddles two rows.
template <typename T, bool BWD, int V>
__global__ void __launch_bounds__(kRowThreads) apply_kernel(const CbamPass p) {
  using A = acc_t<T>;
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ dy = static_cast<const T*>(p.dy);
  T* __restrict__ out = static_cast<T*>(p.out);
  const A* __restrict__ g = static_cast<const A*>(p.g);
  const A* __restrict__ s = static_cast<const A*>(p.s);
  const int64_t C = p.C, HW = p.HW;
  const int64_t packs = p.N * C * HW / V;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRowThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kRowThreads + threadIdx.x; i < packs; i += stride) {
    const int64_t e = i * V;
    int64_t n, c0, q0;   // the pack's first element; the pack runs along q (NCHW) or c (channels_last)
    if (!p.channels_last) {
      const int64_t r = e / HW;
      n = r / C;
      c0 = r - n * C;
      q0 = e - r * HW;
    } else {
      const int64_t r = e / C;
      n = r / HW;
      q0 = r - n * HW;
      c0 = e - r * C;
    }
    const Pack<T, V> xv = load_pack<T, V>(x + e);
    Pack<T, V> dv;
    if constexpr (BWD) dv = load_pack<T, V>(dy + e);
    Pack<T, V> result;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int64_t nc = n * C + c0 + (p.channels_last ? k : 0);
      const int64_t pix = n * HW + q0 + (p.channels_last ? 0 : k);
      const A xa = to_acc(xv.v[k]);
      const A gc = g[nc];
      const A x1 = round_to<T>(xa * gc);
      if constexpr (!BWD) {
        result.v[k] = from_acc<T>(x1 * s[pix]);
      } else {
        A d = to_acc(dv.v[k]) * s[pix] + static_cast<const A*>(p.dcmean)[pix];
        if (x1 == static_cast<const A*>(p.cmax)[pix]) d += static_cast<const A*>(p.dcmax)[pix];
        A dxv = d * gc + static_cast<const A*>(p.a)[nc];
        if (xa == static_cast<const A*>(p.mx)[nc]) dxv += static_cast<const A*>(p.b)[nc];
        result.v[k] = from_acc<T>(dxv);
      }
    }
    store_pack<T, V>(out + e, result);
  }
}

// ---- the channel gate ------------------------------------------------------

// g = gate(z), element by element, by gate_fwd: the very function fc2's
// epilogue (se_linear_kernel's LinOut::Gate) applies, so a g recomputed here
// from the saved logits has the forward's bits. Grid-stride.
constexpr int64_t kGateMaxBlocks = 1024;

template <typename A>
__global__ void __launch_bounds__(kRowThreads) channel_gate_kernel(const int64_t count, const A* __restrict__ z,
                                                                   A* __restrict__ g, const int8_t gate) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRowThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kRowThreads + threadIdx.x; i < count; i += stride)
    g[i] = gate_fwd(gate, z[i]);
}

// ---- the forward's spatial gate --------------------------------------------

constexpr int kSpatialThreads = 256;
constexpr int64_t kSpatialMaxBlocks = 512;  // each block of the gate launch reads all their partials

// Count, mean and sum of squared deviations of a set of values (double).
struct Moments {
  double n, mean, m2;
};

__device__ __forceinline__ Moments moments_add(Moments m, double v) {
  m.n += 1;
  const double d = v - m.mean;
  m.mean += d / m.n;
  m.m2 += d * (v - m.mean);
  return m;
}

// Chan's merge of two disjoint sets; an empty side leaves the other as it is.
__device__ __forceinline__ Moments moments_merge(Moments a, Moments b) {
  if (b.n == 0) return a;
  if (a.n == 0) return b;
  const double n = a.n + b.n, d = b.mean - a.mean, fb = b.n / n;
  return {n, a.mean + d * fb, a.m2 + b.m2 + d * d * a.n * fb};
}

// The block's moments merged up a fixed tree (thread t with t + width); the
// result is thread 0's. Every thread of the block must call it.
__device__ __forceinline__ Moments block_moments(Moments m) {
  __shared__ double sn[kSpatialThreads], smean[kSpatialThreads], sm2[kSpatialThreads];
  const int t = threadIdx.x;
  sn[t] = m.n, smean[t] = m.mean, sm2[t] = m.m2;
  __syncthreads();
  for (int width = kSpatialThreads / 2; width > 0; width >>= 1) {
    if (t < width) {
      const Moments r = moments_merge({sn[t], smean[t], sm2[t]}, {sn[t + width], smean[t + width], sm2[t + width]});
      sn[t] = r.n, smean[t] = r.mean, sm2[t] = r.m2;
    }
    __syncthreads();
  }
  return {sn[0], smean[0], sm2[0]};
}

// Single rounded operations (never contracted into a fused multiply-add), as
// ATen's elementwise ops round them one by one.
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float exp_of(float v) { return expf(v); }
__device__ __forceinline__ double exp_of(double v) { return exp(v); }

// The glue's gate_forward: sigmoid, or relu6(z + 3) / 6 with ATen's CUDA
// division by a scalar (a product with its reciprocal); NaN stays NaN.
template <typename A>
__device__ __forceinline__ A spatial_gate_of(int8_t gate, A v) {
  if (static_cast<FusedGate>(gate) == FusedGate::Sigmoid) return A(1) / (A(1) + exp_of(-v));
  if (v != v) return v;
  const A r = add_rn(v, A(3));
  return mul_rn(r < A(0) ? A(0) : (r > A(6) ? A(6) : r), A(1) / A(6));
}

// Input map ci of the convolution at pixel q of sample n, read from smap
// [2, N, H·W]: light, ½mean + ½max rounded op by op as the ATen expression;
// otherwise the mean or the max, in the module's order.
template <typename A>
__device__ __forceinline__ A map_value(const CbamSpatial& sp, const A* __restrict__ smap, int64_t n, int ci, int64_t q) {
  const int64_t HW = sp.H * sp.W;
  const A cmean = smap[n * HW + q], cmax = smap[(sp.N + n) * HW + q];
  if (sp.light) return add_rn(mul_rn(cmean, A(0.5)), mul_rn(cmax, A(0.5)));
  return ((ci == 0) != sp.max_first) ? cmean : cmax;
}

// Element i of a parameter of dtype t (the conv weight, the BatchNorm's
// scalars and running buffers) in A: exact widening, or float64 rounded to
// nearest as a conversion launch would.
template <typename A>
__device__ __forceinline__ A param_as(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<A>(static_cast<const float*>(p)[i]);
    case DType::F64: return static_cast<A>(static_cast<const double*>(p)[i]);
    case DType::F16: return static_cast<A>(to_acc(static_cast<const __half*>(p)[i]));
    case DType::BF16: return static_cast<A>(to_acc(static_cast<const __nv_bfloat16*>(p)[i]));
  }
  return A(0);  // not reached
}

// v (already rounded to A) stored in dtype t, rounded to nearest from float
// (the caller never asks for float64 to a 16-bit type: that would round twice).
template <typename A>
__device__ __forceinline__ void store_param(void* p, DType t, A v) {
  switch (t) {
    case DType::F32: *static_cast<float*>(p) = static_cast<float>(v); break;
    case DType::F64: *static_cast<double*>(p) = static_cast<double>(v); break;
    case DType::F16: *static_cast<__half*>(p) = from_acc<__half>(static_cast<float>(v)); break;
    case DType::BF16: *static_cast<__nv_bfloat16*>(p) = from_acc<__nv_bfloat16>(static_cast<float>(v)); break;
  }
}

// The conv's weights [maps, k, k] in A, staged in shared memory by the whole
// block (every thread must call it, before any returns).
template <typename A>
__device__ __forceinline__ const A* stage_weights(const CbamSpatial& sp, A* buf) {
  const int n = (sp.light ? 1 : 2) * sp.k * sp.k;
  for (int i = threadIdx.x; i < n; i += kSpatialThreads) buf[i] = param_as<A>(sp.w, sp.w_dtype, i);
  __syncthreads();
  return buf;
}

constexpr int kSpatialMaxTaps = 2 * kCbamMaxSpatialK * kCbamMaxSpatialK;

// z = conv(maps), summed in (map, i, j) order, the maps read from smap; each
// block's moments of its pixels of z to partials [3, gridDim.x].
template <typename A>
__global__ void __launch_bounds__(kSpatialThreads) spatial_conv_kernel(const CbamSpatial sp) {
  __shared__ A w_sh[kSpatialMaxTaps];
  const A* __restrict__ smap = static_cast<const A*>(sp.smap);
  const A* __restrict__ w = stage_weights(sp, w_sh);
  A* __restrict__ z = static_cast<A*>(sp.z);
  const int64_t HW = sp.H * sp.W, total = sp.N * HW;
  const int maps = sp.light ? 1 : 2, pad = (sp.k - 1) / 2, kk = sp.k * sp.k;
  Moments m{0, 0, 0};
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kSpatialThreads + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * kSpatialThreads) {
    const int64_t n = idx / HW, pix = idx - n * HW;
    const int64_t py = pix / sp.W, px = pix - py * sp.W;
    A acc = A(0);
    for (int ci = 0; ci < maps; ++ci) {
      const A* wk = w + ci * kk;
      for (int i = 0; i < sp.k; ++i) {
        const int64_t yy = py + i - pad;
        if (yy < 0 || yy >= sp.H) continue;
        for (int j = 0; j < sp.k; ++j) {
          const int64_t xx = px + j - pad;
          if (xx < 0 || xx >= sp.W) continue;
          acc += wk[i * sp.k + j] * map_value(sp, smap, n, ci, yy * sp.W + xx);
        }
      }
    }
    z[idx] = acc;
    if (sp.batch_stats) m = moments_add(m, static_cast<double>(acc));
  }
  if (!sp.batch_stats) return;
  m = block_moments(m);
  if (threadIdx.x == 0) {
    double* part = static_cast<double*>(sp.partials);
    part[blockIdx.x] = m.n;
    part[gridDim.x + blockIdx.x] = m.mean;
    part[2 * gridDim.x + blockIdx.x] = m.m2;
  }
}

// s = gate(BN(z)): every block merges the `parts` partials in one fixed
// order (so all agree, bit for bit), block 0 writes the statistics.
template <typename A>
__global__ void __launch_bounds__(kSpatialThreads) spatial_gate_kernel(const CbamSpatial sp, const int64_t parts) {
  double mean, var;
  if (sp.batch_stats) {
    const double* part = static_cast<const double*>(sp.partials);
    Moments m{0, 0, 0};
    for (int64_t b = threadIdx.x; b < parts; b += kSpatialThreads)
      m = moments_merge(m, {part[b], part[parts + b], part[2 * parts + b]});
    m = block_moments(m);
    mean = m.mean;
    var = m.m2 / m.n;
    if (blockIdx.x == 0 && threadIdx.x == 0 && sp.stats) sp.stats[0] = mean, sp.stats[1] = var;
  } else {
    mean = param_as<double>(sp.running_mean, sp.running_dtype, 0);  // exact: every dtype widens to double
    var = param_as<double>(sp.running_var, sp.running_dtype, 0);
  }
  A* stats_acc = static_cast<A*>(sp.stats_acc);
  if (blockIdx.x == 0 && threadIdx.x == 0) stats_acc[0] = static_cast<A>(mean), stats_acc[1] = static_cast<A>(var);
  const A mu = static_cast<A>(mean);
  const A invstd = static_cast<A>(1.0 / sqrt(var + sp.eps));
  const A gamma = sp.gamma ? param_as<A>(sp.gamma, sp.gamma_dtype, 0) : A(1);
  const A beta = sp.beta ? param_as<A>(sp.beta, sp.beta_dtype, 0) : A(0);
  const A* __restrict__ z = static_cast<const A*>(sp.z);
  A* __restrict__ s = static_cast<A*>(sp.s);
  const int64_t total = sp.N * sp.H * sp.W;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kSpatialThreads + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * kSpatialThreads) {
    const A bo = add_rn(mul_rn(mul_rn(sub_rn(z[idx], mu), gamma), invstd), beta);
    s[idx] = spatial_gate_of(sp.gate, bo);
  }
}

// ---- the backward's spatial gate -------------------------------------------

// Two sums over the block in a fixed tree (thread t with t + width); the
// result is thread 0's, read by every thread. Every thread must call it, once
// per kernel.
__device__ __forceinline__ void block_sum2(double& a, double& b) {
  __shared__ double sa[kSpatialThreads], sb[kSpatialThreads];
  const int t = threadIdx.x;
  sa[t] = a, sb[t] = b;
  __syncthreads();
  for (int width = kSpatialThreads / 2; width > 0; width >>= 1) {
    if (t < width) sa[t] += sa[t + width], sb[t] += sb[t + width];
    __syncthreads();
  }
  a = sa[0], b = sb[0];
}

// The BatchNorm's scalars as the backward uses them: the forward's statistics
// rounded to A, invstd = 1 / sqrt(var + eps) in double, then rounded.
template <typename A>
struct SpatialBn {
  A mu, invstd, gamma, beta;
  __device__ __forceinline__ explicit SpatialBn(const CbamSpatial& sp) {
    const A* stats = static_cast<const A*>(sp.stats_acc);
    mu = stats[0];
    invstd = static_cast<A>(1.0 / sqrt(static_cast<double>(stats[1]) + sp.eps));
    gamma = sp.gamma ? param_as<A>(sp.gamma, sp.gamma_dtype, 0) : A(1);
    beta = sp.beta ? param_as<A>(sp.beta, sp.beta_dtype, 0) : A(0);
  }
};

// s = gate(BN(z)) as the forward computed it, dbn = dL/d(BN output) (stored
// in dz for the next launch), and the block's sums of dbn and dbn·ẑ in double
// (ẑ = (z − mu)·invstd) to partials [2, gridDim.x].
template <typename A>
__global__ void __launch_bounds__(kSpatialThreads) spatial_bn_grad_kernel(const CbamSpatial sp) {
  const SpatialBn<A> bn(sp);
  const double mu_d = bn.mu, invstd_d = bn.invstd;
  const A* __restrict__ z = static_cast<const A*>(sp.z);
  const A* __restrict__ ds = static_cast<const A*>(sp.ds);
  A* __restrict__ s = static_cast<A*>(sp.s);
  A* __restrict__ dbn_out = static_cast<A*>(sp.dz);
  const int64_t total = sp.N * sp.H * sp.W;
  double sum_dbn = 0, sum_dbn_zhat = 0;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kSpatialThreads + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * kSpatialThreads) {
    const A zv = z[idx];
    const A bo = add_rn(mul_rn(mul_rn(sub_rn(zv, bn.mu), bn.gamma), bn.invstd), bn.beta);
    const A sv = spatial_gate_of(sp.gate, bo);
    s[idx] = sv;
    A dbn;
    if (static_cast<FusedGate>(sp.gate) == FusedGate::Sigmoid) {
      dbn = mul_rn(mul_rn(ds[idx], add_rn(-sv, A(1))), sv);  // ds·(1 − s)·s
    } else {
      dbn = (bo > A(-3) && bo < A(3)) ? mul_rn(ds[idx], A(1) / A(6)) : A(0);
    }
    dbn_out[idx] = dbn;
    sum_dbn += static_cast<double>(dbn);
    sum_dbn_zhat += static_cast<double>(dbn) * ((static_cast<double>(zv) - mu_d) * invstd_d);
  }
  block_sum2(sum_dbn, sum_dbn_zhat);
  if (threadIdx.x == 0) {
    double* part = static_cast<double*>(sp.partials);
    part[blockIdx.x] = sum_dbn;
    part[gridDim.x + blockIdx.x] = sum_dbn_zhat;
  }
}

// dbeta = Σ dbn, dgamma = Σ dbn·ẑ: every block sums the `parts` partials in
// one fixed order, block 0 writes them; then dz from dbn in place, through
// the batch mean and variance when they were the batch's.
template <typename A>
__global__ void __launch_bounds__(kSpatialThreads) spatial_dz_kernel(const CbamSpatial sp, const int64_t parts) {
  const double* part = static_cast<const double*>(sp.partials);
  double dbeta = 0, dgamma = 0;
  for (int64_t b = threadIdx.x; b < parts; b += kSpatialThreads) dbeta += part[b], dgamma += part[parts + b];
  block_sum2(dbeta, dgamma);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    store_param(sp.dbeta, sp.dbeta_dtype, static_cast<A>(dbeta));
    store_param(sp.dgamma, sp.dgamma_dtype, static_cast<A>(dgamma));
  }
  const SpatialBn<A> bn(sp);
  const A scale = mul_rn(bn.gamma, bn.invstd);
  const int64_t total = sp.N * sp.H * sp.W;
  const double count = static_cast<double>(total);
  const A mean_dbn = static_cast<A>(dbeta / count), mean_dbn_zhat = static_cast<A>(dgamma / count);
  const A* __restrict__ z = static_cast<const A*>(sp.z);
  A* __restrict__ dz = static_cast<A*>(sp.dz);
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kSpatialThreads + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * kSpatialThreads) {
    A d = dz[idx];
    if (sp.batch_stats) {
      const A zhat = mul_rn(sub_rn(z[idx], bn.mu), bn.invstd);
      d = sub_rn(sub_rn(d, mean_dbn), mul_rn(zhat, mean_dbn_zhat));
    }
    dz[idx] = mul_rn(d, scale);
  }
}

// The maps' gradients: dm = dz ⋆ the flipped kernel (taps in the order the
// convolution of the flipped weight sums them), then dcmean = dmean·(1/C),
// dcmax = dmax / ties; light: both maps get ½dm.
template <typename A>
__global__ void __launch_bounds__(kSpatialThreads) spatial_dmap_kernel(const CbamSpatial sp) {
  __shared__ A w_sh[kSpatialMaxTaps];
  const A* __restrict__ w = stage_weights(sp, w_sh);
  const A* __restrict__ dz = static_cast<const A*>(sp.dz);
  const A* __restrict__ ccnt = static_cast<const A*>(sp.ccnt);
  A* __restrict__ dcmean = static_cast<A*>(sp.dcmean);
  A* __restrict__ dcmax = static_cast<A*>(sp.dcmax);
  const int64_t HW = sp.H * sp.W, total = sp.N * HW;
  const int maps = sp.light ? 1 : 2, pad = (sp.k - 1) / 2, kk = sp.k * sp.k, last = sp.k - 1;
  const A inv_c = static_cast<A>(1.0 / static_cast<double>(sp.C));
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kSpatialThreads + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * kSpatialThreads) {
    const int64_t n = idx / HW, pix = idx - n * HW;
    const int64_t py = pix / sp.W, px = pix - py * sp.W;
    const A* src = dz + n * HW;
    A dm0 = A(0), dm1 = A(0);  // the maps' gradients, in the order of the weight's maps
    for (int ci = 0; ci < maps; ++ci) {
      const A* wk = w + ci * kk;
      A acc = A(0);
      for (int i = 0; i < sp.k; ++i) {
        const int64_t yy = py + i - pad;
        if (yy < 0 || yy >= sp.H) continue;
        for (int j = 0; j < sp.k; ++j) {
          const int64_t xx = px + j - pad;
          if (xx < 0 || xx >= sp.W) continue;
          acc += wk[(last - i) * sp.k + (last - j)] * src[yy * sp.W + xx];
        }
      }
      (ci == 0 ? dm0 : dm1) = acc;
    }
    A dmean, dmax;
    if (sp.light) {
      dmean = dmax = mul_rn(dm0, A(0.5));
    } else {
      dmean = sp.max_first ? dm1 : dm0;
      dmax = sp.max_first ? dm0 : dm1;
    }
    dcmean[idx] = mul_rn(dmean, inv_c);
    dcmax[idx] = dmax / ccnt[idx];
  }
}

// One block per (sample, tap): wpart[n, tap] = Σ_p dz[n, p]·map[n, ci, p + (i, j) − pad],
// a tree over the block's threads (fixed order).
template <typename A>
__global__ void __launch_bounds__(kSpatialThreads) spatial_wgrad_kernel(const CbamSpatial sp) {
  __shared__ A buf[kSpatialThreads];
  const A* __restrict__ smap = static_cast<const A*>(sp.smap);
  const A* __restrict__ dz = static_cast<const A*>(sp.dz);
  const int kk = sp.k * sp.k, taps = (sp.light ? 1 : 2) * kk, pad = (sp.k - 1) / 2;
  const int64_t n = blockIdx.x / taps;
  const int tap = static_cast<int>(blockIdx.x - n * taps);
  const int ci = tap / kk, i = (tap / sp.k) % sp.k, j = tap % sp.k;
  const int64_t HW = sp.H * sp.W;
  A acc = A(0);
  for (int64_t q = threadIdx.x; q < HW; q += kSpatialThreads) {
    const int64_t yy = q / sp.W + i - pad, xx = q % sp.W + j - pad;
    if (yy >= 0 && yy < sp.H && xx >= 0 && xx < sp.W) acc += dz[n * HW + q] * map_value(sp, smap, n, ci, yy * sp.W + xx);
  }
  buf[threadIdx.x] = acc;
  __syncthreads();
  for (int width = kSpatialThreads / 2; width > 0; width >>= 1) {
    if (static_cast<int>(threadIdx.x) < width) buf[threadIdx.x] += buf[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) static_cast<A*>(sp.wpart)[blockIdx.x] = buf[0];
}

// ---- launchers ---------------------------------------------------------------

template <typename T, CbamReduce K>
bool reduction_vectorizes(const CbamPass& p) {
  // rows: the reduced axis is contiguous; cols: the outputs are.
  const int64_t row = reduces_rows<K>(p) ? reduced_len<K>(p) : outputs_len<K>(p);
  return vectorizes<T>(row, {p.x, K == CbamReduce::ChannelPool ? nullptr : p.dy});
}

// reduce_cols splits the reduced axis when the blocks alone (32·V outputs
// of one sample each) would leave the GPU idle: about 4 blocks of 512
// threads per multiprocessor, each segment at least 64 elements long.
template <typename T, CbamReduce K>
int64_t segments_of(const CbamPass& p) {
  if (reduces_rows<K>(p) || p.N == 0 || p.C == 0 || p.HW == 0) return 1;
  const int V = reduction_vectorizes<T, K>(p) ? kVec<T> : 1;
  const int64_t L = reduced_len<K>(p);
  const int64_t blocks = ceil_div(outputs_len<K>(p), int64_t{kColsX} * V) * std::min<int64_t>(p.N, 65535);
  const int64_t target = int64_t{p.sm_count} * 4;
  if (blocks >= target / 2) return 1;
  const int64_t want = std::max<int64_t>(
      1, std::min<int64_t>({ceil_div(target, blocks), ceil_div(L, int64_t{kColsY} * 4), 65535}));
  return ceil_div(L, ceil_div(L, want));
}

template <typename T, CbamReduce K, int V, bool REV>
void launch_reduce_v(const CbamPass& p, cudaStream_t stream) {
  const int64_t R = outputs_len<K>(p), L = reduced_len<K>(p);
  if (reduces_rows<K>(p)) {
    const int64_t rows = p.N * R;
    const int wpr = (rows < int64_t{p.sm_count} * 16 && L >= int64_t{32} * V * 8) ? 8 : 1;
    const int64_t per_block = (kRowThreads / 32) / wpr;
    const int64_t blocks = std::min<int64_t>(ceil_div(rows, per_block), int64_t{p.sm_count} * 32);
    reduce_rows_kernel<T, K, V, REV><<<static_cast<unsigned>(blocks), kRowThreads, 0, stream>>>(p, wpr);
    return;
  }
  const int64_t seg_len = ceil_div(L, p.segments);
  const dim3 grid(static_cast<unsigned>(ceil_div(R, int64_t{kColsX} * V)),
                  static_cast<unsigned>(std::min<int64_t>(p.N, 65535)), static_cast<unsigned>(p.segments));
  reduce_cols_kernel<T, K, V, REV><<<grid, dim3(kColsX, kColsY), 0, stream>>>(p, seg_len);
  if (p.segments > 1) {
    const int64_t blocks = std::min<int64_t>(ceil_div(p.N * R, kRowThreads), int64_t{p.sm_count} * 32);
    combine_kernel<T, K><<<static_cast<unsigned>(blocks), kRowThreads, 0, stream>>>(p);
  }
}

template <typename T, CbamReduce K>
cudaError_t launch_reduce(const CbamPass& p, cudaStream_t stream) {
  if (p.N == 0 || p.C == 0 || p.HW == 0) return cudaSuccess;
  if (p.segments != segments_of<T, K>(p) || (p.segments > 1 && p.partials == nullptr))
    return cudaErrorInvalidValue;  // the caller sizes the workspace with cbam_reduce_segments
  const bool vec = reduction_vectorizes<T, K>(p);
  const auto launch = [&](auto rev) {
    if (vec) {
      launch_reduce_v<T, K, kVec<T>, decltype(rev)::value>(p, stream);
    } else {
      launch_reduce_v<T, K, 1, decltype(rev)::value>(p, stream);
    }
  };
  // Only the passes cbam_cuda.cpp walks in reverse have the reversed kernels;
  // the pixel reduce takes p.reverse as the hint it is and walks in order.
  if constexpr (K != CbamReduce::PixelReduce) {
    if (p.reverse) {
      launch(std::true_type{});
      return cudaGetLastError();
    }
  }
  launch(std::false_type{});
  return cudaGetLastError();
}

template <typename T, bool BWD>
cudaError_t launch_apply(const CbamPass& p, cudaStream_t stream) {
  const int64_t total = p.N * p.C * p.HW;
  if (total == 0) return cudaSuccess;
  const bool vec = vectorizes<T>(p.channels_last ? p.C : p.HW, {p.x, p.out, BWD ? p.dy : nullptr});
  const int V = vec ? kVec<T> : 1;
  const int64_t blocks = std::min<int64_t>(ceil_div(total / V, kRowThreads), int64_t{p.sm_count} * 32);
  if (vec) {
    apply_kernel<T, BWD, kVec<T>><<<static_cast<unsigned>(blocks), kRowThreads, 0, stream>>>(p);
  } else {
    apply_kernel<T, BWD, 1><<<static_cast<unsigned>(blocks), kRowThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

// Calls f(T{}, std::integral_constant<CbamReduce, K>{}) for p's element type
// T and the reduction K named by kind.
template <typename F>
cudaError_t dispatch_reduce(const CbamPass& p, CbamReduce kind, F&& f) {
  return dispatch_dtype(p.dtype, [&](auto tag) {
    switch (kind) {
      case CbamReduce::ChannelPool: return f(tag, std::integral_constant<CbamReduce, CbamReduce::ChannelPool>{});
      case CbamReduce::PixelReduce: return f(tag, std::integral_constant<CbamReduce, CbamReduce::PixelReduce>{});
      case CbamReduce::ChannelReduce:
        return f(tag, std::integral_constant<CbamReduce, CbamReduce::ChannelReduce>{});
    }
    return cudaErrorInvalidValue;
  });
}

template <typename F>
cudaError_t dispatch_acc(DType acc, F&& f) {
  if (acc == DType::F32) return f(float{});
  if (acc == DType::F64) return f(double{});
  return cudaErrorInvalidValue;
}

}  // namespace

int64_t cbam_reduce_segments(const CbamPass& p, CbamReduce kind) {
  int64_t segments = 1;
  dispatch_reduce(p, kind, [&](auto tag, auto k) {
    segments = segments_of<decltype(tag), decltype(k)::value>(p);
    return cudaSuccess;
  });
  return segments;
}

cudaError_t cbam_reduce(const CbamPass& p, CbamReduce kind, cudaStream_t stream) {
  return dispatch_reduce(p, kind, [&](auto tag, auto k) {
    return launch_reduce<decltype(tag), decltype(k)::value>(p, stream);
  });
}

cudaError_t cbam_rescale(const CbamPass& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_apply<decltype(tag), false>(p, stream); });
}

cudaError_t cbam_input_grad(const CbamPass& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_apply<decltype(tag), true>(p, stream); });
}

cudaError_t cbam_channel_gate(DType acc, int8_t gate, int64_t count, const void* z, void* g, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (count < 0 || z == nullptr || g == nullptr) return cudaErrorInvalidValue;
  const int64_t blocks = std::min<int64_t>(ceil_div(count, kRowThreads), kGateMaxBlocks);
  return dispatch_acc(acc, [&](auto tag) {
    using A = decltype(tag);
    const A* zs = static_cast<const A*>(z);
    A* gs = static_cast<A*>(g);
    channel_gate_kernel<A><<<static_cast<unsigned>(blocks), kRowThreads, 0, stream>>>(count, zs, gs, gate);
    return cudaGetLastError();
  });
}

int64_t cbam_spatial_blocks(const CbamSpatial& sp) {
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(sp.N * sp.H * sp.W, kSpatialThreads), kSpatialMaxBlocks));
}

cudaError_t cbam_spatial_gate(const CbamSpatial& sp, cudaStream_t stream) {
  if (sp.N * sp.H * sp.W == 0) return cudaSuccess;
  if (sp.k < 1 || sp.k % 2 == 0 || sp.k > kCbamMaxSpatialK || (sp.batch_stats && sp.partials == nullptr) ||
      (!sp.batch_stats && (sp.running_mean == nullptr || sp.running_var == nullptr)))
    return cudaErrorInvalidValue;
  const int64_t blocks = cbam_spatial_blocks(sp);
  return dispatch_acc(sp.acc, [&](auto tag) {
    using A = decltype(tag);
    spatial_conv_kernel<A><<<static_cast<unsigned>(blocks), kSpatialThreads, 0, stream>>>(sp);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    spatial_gate_kernel<A><<<static_cast<unsigned>(blocks), kSpatialThreads, 0, stream>>>(sp, blocks);
    return cudaGetLastError();
  });
}

cudaError_t cbam_spatial_grad(const CbamSpatial& sp, cudaStream_t stream) {
  const int64_t total = sp.N * sp.H * sp.W;
  if (total == 0) return cudaSuccess;
  const int64_t taps = int64_t{sp.light ? 1 : 2} * sp.k * sp.k;
  if (sp.k < 1 || sp.k % 2 == 0 || sp.k > kCbamMaxSpatialK || sp.C < 1 || sp.partials == nullptr ||
      sp.N * taps > 0x7fffffff)
    return cudaErrorInvalidValue;
  const int64_t blocks = cbam_spatial_blocks(sp);
  return dispatch_acc(sp.acc, [&](auto tag) {
    using A = decltype(tag);
    spatial_bn_grad_kernel<A><<<static_cast<unsigned>(blocks), kSpatialThreads, 0, stream>>>(sp);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    spatial_dz_kernel<A><<<static_cast<unsigned>(blocks), kSpatialThreads, 0, stream>>>(sp, blocks);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    spatial_dmap_kernel<A><<<static_cast<unsigned>(blocks), kSpatialThreads, 0, stream>>>(sp);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    spatial_wgrad_kernel<A><<<static_cast<unsigned>(sp.N * taps), kSpatialThreads, 0, stream>>>(sp);
    return cudaGetLastError();
  });
}

}  // namespace fused_attn::cuda
