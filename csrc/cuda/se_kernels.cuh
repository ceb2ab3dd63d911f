// The SE CUDA kernels, as templates over the element type T, the direction
// (forward pool/scale, or backward Σ dy·x / dx), whether the pool has a max
// term, and V, the elements per memory access (16 bytes when the rows allow,
// else 1). se_forward.cu and se_backward.cu instantiate them, so the two
// directions compile in parallel.
//
// Reductions are deterministic: each (n, c) is reduced by one warp (NCHW) or
// one block (channels_last) in an order fixed by the shape and the block
// size — never by float atomics — so results are bitwise identical run to run.
#pragma once

#include "se_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace fused_attn::cuda {

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_t = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename A> __device__ __forceinline__ A neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
  return __longlong_as_double(static_cast<long long>(0xfff0000000000000ULL));
}

// max that propagates NaN, as torch.amax does.
template <typename A> __device__ __forceinline__ A nan_max(A a, A b) { return (a > b || a != a) ? a : b; }

// ---- the gate and ECA's padding, in the accumulation type -------------------
//
// ATen's formulas, as the reference writes them. Shared by the single launch
// (se_fused.cu, in float) and the two-phase ECA excitation (float or double).

__device__ __forceinline__ float exp_acc(float v) { return expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }
__device__ __forceinline__ float erf_acc(float v) { return erff(v); }
__device__ __forceinline__ double erf_acc(double v) { return erf(v); }
__device__ __forceinline__ float tanh_acc(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_acc(double v) { return tanh(v); }
__device__ __forceinline__ float clamp_0_6(float v) { return fminf(fmaxf(v, 0.f), 6.f); }
__device__ __forceinline__ double clamp_0_6(double v) { return fmin(fmax(v, 0.0), 6.0); }

// The excitation's activation (FusedAct) of the hidden layer's pre-activation h.
template <typename A> __device__ __forceinline__ A act_fwd(int8_t act, A h) {
  switch (static_cast<FusedAct>(act)) {
    case FusedAct::ReLU: return h <= A(0) ? A(0) : h;  // NaN stays NaN
    case FusedAct::SiLU: return h / (A(1) + exp_acc(-h));
    case FusedAct::GELU: return A(0.5) * h * (A(1) + erf_acc(h * A(0.70710678118654752)));
    case FusedAct::GELUTanh: {
      const A inner = A(0.79788456080286536) * (h + A(0.044715) * h * h * h);
      return A(0.5) * h * (A(1) + tanh_acc(inner));
    }
    case FusedAct::HardSwish: return h * clamp_0_6(h + A(3)) / A(6);
  }
  return h;
}

// dL/dh from dL/dact(h), as ATen's threshold / silu / gelu / hardswish backward.
template <typename A> __device__ __forceinline__ A act_bwd(int8_t act, A grad, A h) {
  switch (static_cast<FusedAct>(act)) {
    case FusedAct::ReLU: return h <= A(0) ? A(0) : grad;  // threshold_backward: NaN h passes grad
    case FusedAct::SiLU: {
      const A s = A(1) / (A(1) + exp_acc(-h));
      return grad * s * (A(1) + h * (A(1) - s));
    }
    case FusedAct::GELU: {
      const A cdf = A(0.5) * (A(1) + erf_acc(h * A(0.70710678118654752)));
      const A pdf = exp_acc(A(-0.5) * h * h) * A(0.39894228040143268);
      return grad * (cdf + h * pdf);
    }
    case FusedAct::GELUTanh: {
      const A kBeta = A(0.79788456080286536), kKappa = A(0.044715);
      const A t = tanh_acc(kBeta * (h + kKappa * h * h * h));
      const A left = A(0.5) * h, right = A(1) + t;
      const A dleft = A(0.5) * right;
      const A dright = left * (A(1) - t * t) * kBeta * (A(1) + A(3) * kKappa * h * h);
      return grad * (dleft + dright);
    }
    case FusedAct::HardSwish:
      return h < A(-3) ? A(0) : (h <= A(3) ? grad * (h / A(3) + A(0.5)) : grad);
  }
  return grad;
}

template <typename A> __device__ __forceinline__ A gate_fwd(int8_t gate, A z) {
  if (static_cast<FusedGate>(gate) == FusedGate::Sigmoid) return A(1) / (A(1) + exp_acc(-z));
  if (z != z) return z;                   // relu6 keeps NaN; fmax would not
  return clamp_0_6(z + A(3)) / A(6);      // relu6(z + 3) / 6, as the reference
}

// dL/dz from dL/dg, the logit z and the gate g = gate_fwd(z).
template <typename A> __device__ __forceinline__ A gate_bwd(int8_t gate, A grad, A z, A g) {
  if (static_cast<FusedGate>(gate) == FusedGate::Sigmoid) return grad * (A(1) - g) * g;
  return (z > A(-3) && z < A(3)) ? grad / A(6) : A(0);
}

// at(i) of a row of C values, i wrapped (circular) or zero outside [0, C).
template <typename A, typename At>
__device__ __forceinline__ A padded_by(At&& at, int64_t C, int64_t i, bool circular) {
  if (i >= 0 && i < C) return at(i);
  if (!circular) return A(0);
  i %= C;
  return at(i < 0 ? i + C : i);
}
// v[i] of a row of C values, as padded_by says.
template <typename A> __device__ __forceinline__ A padded(const A* v, int64_t C, int64_t i, bool circular) {
  return padded_by<A>([v](int64_t j) { return v[j]; }, C, i, circular);
}

// V elements in one aligned access.
template <typename T, int V> struct alignas(sizeof(T) * V) Pack { T v[V]; };

template <typename T, int V> __device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}
template <typename T, int V> __device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& v) {
  *reinterpret_cast<Pack<T, V>*>(p) = v;
}

// The elements per 16-byte access.
template <typename T> constexpr int kVec = 16 / sizeof(T);

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The running state of one (n, c) reduction. Forward: Σ x and max x.
// Backward: Σ dy·x and the number of elements equal to the forward's max.
template <typename A, bool BWD, bool WITH_MAX>
struct Partial {
  A sum, ext;

  __device__ __forceinline__ Partial() : sum(A(0)), ext(BWD ? A(0) : neg_inf<A>()) {}

  __device__ __forceinline__ void add(A x, A dy, A mref) {
    if constexpr (BWD) {
      sum += dy * x;
      if constexpr (WITH_MAX) ext += x == mref ? A(1) : A(0);
    } else {
      sum += x;
      if constexpr (WITH_MAX) ext = nan_max(ext, x);
    }
  }
  __device__ __forceinline__ void merge(A other_sum, A other_ext) {
    sum += other_sum;
    if constexpr (WITH_MAX) ext = BWD ? ext + other_ext : nan_max(ext, other_ext);
  }
  // Stores this piece's partial for row nc (segment seg), or, with one
  // segment, the final result.
  __device__ __forceinline__ void finish_or_store(const SePass& p, int64_t nc, int64_t seg) const {
    if (p.segments == 1) {
      finish(p, nc);
      return;
    }
    A* part = static_cast<A*>(p.partials);
    const int64_t rows = p.N * p.C;
    part[nc * p.segments + seg] = sum;
    part[rows * p.segments + nc * p.segments + seg] = ext;
  }
  // Writes the (n, c) = nc results.
  __device__ __forceinline__ void finish(const SePass& p, int64_t nc) const {
    A* out_sum = static_cast<A*>(p.sum);
    A* out_ext = static_cast<A*>(p.ext);
    if constexpr (BWD) {
      out_sum[nc] = sum;
      if constexpr (WITH_MAX) out_ext[nc] = ext;
    } else {
      const A mean = sum / static_cast<A>(p.HW);
      if constexpr (WITH_MAX) {
        out_ext[nc] = ext;
        out_sum[nc] = p.plain_mean ? mean : A(0.5) * mean + A(0.5) * ext;
      } else {
        out_sum[nc] = mean;
      }
    }
  }
};

constexpr int kThreads = 256;

// NCHW: each (n, c) is a contiguous row of HW elements, reduced by one warp
// (lane l takes the accesses l, l + 32, ...; then a butterfly over the warp),
// or, with p.segments > 1, by one warp per segment of the row (segments are
// whole multiples of 32·V elements, so every access stays aligned).
// V > 1 needs HW % V == 0 and 16-byte aligned rows.
template <typename T, bool BWD, bool WITH_MAX, int V>
__global__ void __launch_bounds__(kThreads) reduce_rows_kernel(const SePass p, const int64_t seg_len) {
  using A = acc_t<T>;
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ dy = static_cast<const T*>(p.dy);
  const A* __restrict__ maxv = static_cast<const A*>(p.maxv);
  const int lane = threadIdx.x & 31;
  const int64_t items = p.N * p.C * p.segments;
  const int64_t HW = p.HW;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5); item < items;
       item += warps) {
    const int64_t r = item / p.segments, seg = item - r * p.segments;
    const int64_t begin = seg * seg_len, end = begin + seg_len < HW ? begin + seg_len : HW;
    const A mref = (BWD && WITH_MAX) ? maxv[r] : A(0);
    Partial<A, BWD, WITH_MAX> acc;
    const T* xr = x + r * HW;
    const T* dyr = BWD ? dy + r * HW : nullptr;
#pragma unroll 2
    for (int64_t i = begin + static_cast<int64_t>(lane) * V; i < end; i += 32 * V) {
      const Pack<T, V> xv = load_pack<T, V>(xr + i);
      Pack<T, V> dv;
      if constexpr (BWD) dv = load_pack<T, V>(dyr + i);
#pragma unroll
      for (int k = 0; k < V; ++k) acc.add(to_acc(xv.v[k]), BWD ? to_acc(dv.v[k]) : A(0), mref);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const A s = __shfl_xor_sync(0xffffffffu, acc.sum, offset);
      const A e = __shfl_xor_sync(0xffffffffu, acc.ext, offset);
      acc.merge(s, e);
    }
    if (lane == 0) acc.finish_or_store(p, r, seg);
  }
}

// Row r's total from a reduction's segment partials [rows, S]: added in
// order, as combine_rows adds them (the same bits).
template <typename A>
__device__ __forceinline__ A segments_sum(const A* part, int64_t S, int64_t r) {
  A v = part[r * S];
  for (int64_t s = 1; s < S; ++s) v += part[r * S + s];
  return v;
}

// Combines the segments' partials of rows first, first + stride, ... in order
// 0, 1, ... and writes the results (one thread per row): the body of
// combine_partials_kernel, and the first phase of the forward's cooperative
// excitation (se_forward.cu).
template <typename A, bool BWD, bool WITH_MAX>
__device__ __forceinline__ void combine_rows(const SePass& p, int64_t first, int64_t stride) {
  const A* part = static_cast<const A*>(p.partials);
  const int64_t rows = p.N * p.C, S = p.segments;
  for (int64_t r = first; r < rows; r += stride) {
    Partial<A, BWD, WITH_MAX> acc;
    acc.sum = part[r * S];
    acc.ext = part[rows * S + r * S];
    for (int64_t s = 1; s < S; ++s) acc.merge(part[r * S + s], part[rows * S + r * S + s]);
    acc.finish(p, r);
  }
}

template <typename A, bool BWD, bool WITH_MAX>
__global__ void __launch_bounds__(kThreads) combine_partials_kernel(const SePass p) {
  combine_rows<A, BWD, WITH_MAX>(p, static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x,
                                 static_cast<int64_t>(gridDim.x) * kThreads);
}

// channels_last: a pixel's C channels are contiguous. A block of 32 × 8
// threads takes 32·V channels of one sample: threadIdx.x picks V adjacent
// channels (one coalesced access across the warp), threadIdx.y every 8th
// pixel; the 8 partials are then summed in a fixed order through shared
// memory. V > 1 needs C % V == 0 and 16-byte aligned rows.
constexpr int kColsX = 32, kColsY = 8;

template <typename T, bool BWD, bool WITH_MAX, int V>
__global__ void __launch_bounds__(kColsX * kColsY) reduce_cols_kernel(const SePass p, const int64_t seg_len) {
  using A = acc_t<T>;
  __shared__ A part_sum[kColsY][kColsX * V];
  __shared__ A part_ext[kColsY][kColsX * V];
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ dy = static_cast<const T*>(p.dy);
  const A* __restrict__ maxv = static_cast<const A*>(p.maxv);
  const int64_t C = p.C, HW = p.HW;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * kColsX + tx) * V;
  const bool active = c0 < C;
  // blockIdx.z: the segment of pixels [begin, end) this block reduces.
  const int64_t seg = blockIdx.z;
  const int64_t begin = seg * seg_len, end = begin + seg_len < HW ? begin + seg_len : HW;
  for (int64_t n = blockIdx.y; n < p.N; n += gridDim.y) {
    Partial<A, BWD, WITH_MAX> acc[V];
    A mref[V];
#pragma unroll
    for (int k = 0; k < V; ++k) mref[k] = (BWD && WITH_MAX && active) ? maxv[n * C + c0 + k] : A(0);
    if (active) {
      const T* xs = x + n * HW * C + c0;
      const T* dys = BWD ? dy + n * HW * C + c0 : nullptr;
#pragma unroll 2
      for (int64_t hw = begin + ty; hw < end; hw += kColsY) {
        const Pack<T, V> xv = load_pack<T, V>(xs + hw * C);
        Pack<T, V> dv;
        if constexpr (BWD) dv = load_pack<T, V>(dys + hw * C);
#pragma unroll
        for (int k = 0; k < V; ++k) acc[k].add(to_acc(xv.v[k]), BWD ? to_acc(dv.v[k]) : A(0), mref[k]);
      }
    }
#pragma unroll
    for (int k = 0; k < V; ++k) {
      part_sum[ty][tx * V + k] = acc[k].sum;
      part_ext[ty][tx * V + k] = acc[k].ext;
    }
    __syncthreads();
    if (ty == 0 && active) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        Partial<A, BWD, WITH_MAX> total = acc[k];
        for (int j = 1; j < kColsY; ++j) total.merge(part_sum[j][tx * V + k], part_ext[j][tx * V + k]);
        total.finish_or_store(p, n * C + c0 + k, seg);
      }
    }
    __syncthreads();  // the partials are rewritten for the next sample
  }
}

// The elementwise passes: out = x·g (forward) or dy·g + a (+ b where
// x == maxv) (backward), V elements per thread per step, grid-stride (from
// the last pack back with p.reverse). V > 1
// needs the contiguous row (HW or C) to be a multiple of V and the tensors 16-byte aligned,
// so a pack never straddles two (n, c) rows (NCHW) or two samples (channels_last).
template <typename T, bool BWD, bool WITH_MAX, int V>
__global__ void __launch_bounds__(kThreads) apply_kernel(const SePass p) {
  using A = acc_t<T>;
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ dy = static_cast<const T*>(p.dy);
  T* __restrict__ out = static_cast<T*>(p.out);
  const A* __restrict__ g = static_cast<const A*>(p.g);
  const A* __restrict__ ca = static_cast<const A*>(p.a);
  const A* __restrict__ cb = static_cast<const A*>(p.b);
  const A* __restrict__ maxv = static_cast<const A*>(p.maxv);
  const int64_t C = p.C, HW = p.HW;
  const int64_t packs = p.N * C * HW / V;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < packs; i += stride) {
    const int64_t e = (p.reverse ? packs - 1 - i : i) * V;
    // (n, c) of each element of the pack.
    int64_t nc[V];
    if (!p.channels_last) {
      const int64_t r = e / HW;
#pragma unroll
      for (int k = 0; k < V; ++k) nc[k] = r;
    } else {
      const int64_t n = e / (HW * C);
      const int64_t c = e - (e / C) * C;
#pragma unroll
      for (int k = 0; k < V; ++k) nc[k] = n * C + c + k;
    }
    Pack<T, V> result;
    if constexpr (!BWD) {
      const Pack<T, V> xv = load_pack<T, V>(x + e);
#pragma unroll
      for (int k = 0; k < V; ++k) result.v[k] = from_acc<T>(to_acc(xv.v[k]) * g[nc[k]]);
    } else {
      const Pack<T, V> dv = load_pack<T, V>(dy + e);
      Pack<T, V> xv;
      if constexpr (WITH_MAX) xv = load_pack<T, V>(x + e);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        A d = to_acc(dv.v[k]) * g[nc[k]] + ca[nc[k]];
        if constexpr (WITH_MAX) d += to_acc(xv.v[k]) == maxv[nc[k]] ? cb[nc[k]] : A(0);
        result.v[k] = from_acc<T>(d);
      }
    }
    store_pack<T, V>(out + e, result);
  }
}

// ---- SE's excitation on the [N, C] rows (two-phase path) --------------------

// One linear layer over the batch, out[n, j] = Σ_k W[j, k]·in[n, k]:
// a block of 256 threads takes 64 outputs j of 16 samples (thread t: output
// j0 + t % 64 of samples 4·(t / 64) ... + 3) and walks k in chunks of 32
// staged in shared memory; blockIdx.z picks a split of k. W is the weight
// [J, K] as stored, or (WT) the transpose of a stored [K, J] weight: the
// backward's layers run the forward's weights transposed.
constexpr int kLinJ = 64, kLinN = 16, kLinK = 32, kLinThreads = 256;
constexpr int kLinPerThread = kLinN * kLinJ / kLinThreads;
constexpr int kLinMaxSplits = 16;

// What the layer's input rows are. The blocks of the first output tile
// (blockIdx.x == 0) also save what they stage: each (n, k) exactly once.
enum class LinIn {
  Rows,         // in [N, K] as it is; with pair (light CBAM), ½·in[n] + ½·in[N + n] of in [2N, K]
  PartsAct,     // forward fc2: h = the in_splits partials [in_splits, N, K] summed in order + in_bias,
                // saved (pre-activation) to save, and act(h); with pair (CBAM), the partials hold
                // 2N rows and the input is act(h[n]) + act(h[N + n]) (the two pools' hidden rows)
  GateGrad,     // backward, first layer: dz = gate'(z)·s with s = in, z = in2 ([N, K] each), the gate
                // g = gate(z) saved to save2 and dz to save
  PartsActGrad  // backward fc1: the partials summed in order, through act's derivative at h: dL/dh,
                // saved to save. The partials hold part_rows rows (row n reads row n mod part_rows: CBAM's
                // two pools share dL/dh); h is in2 [N, K], or (in2_splits > 0) in2's partials
                // [in2_splits, N, K] summed in order plus in_bias, saved to save2 (CBAM's recomputed fc1)
};
// What becomes of the sums: the raw sums of each split (part_out [splits, N, J]),
// z = sum + bias with gate(z) (z_out, g_out), or (Spread: the sums are
// dL/dpooled) their spread back over H·W for se_dx: a = sum·a_scale to z_out
// and, with cnt (the max's tie counts [N, J]), b = (sum·0.5) / cnt to g_out,
// as input_grad_pass's ATen ops compute them; with pair (CBAM: rows [0, N/2) the
// spatial means', [N/2, N) the maxima's) a = sum·a_scale from the first half
// and b = sum / cnt from the second.
enum class LinOut { Parts, Gate, Spread };

struct SeLinear {
  int64_t N = 0, J = 0, K = 0;
  int64_t k_per_split = kLinK;     // a multiple of kLinK
  const void* w = nullptr;         // [J, K] or (WT) [K, J], x's dtype
  const void* in = nullptr;        // acc type, as LinIn says
  const void* in2 = nullptr;
  int64_t in_splits = 1;
  int64_t part_rows = 0;           // PartsActGrad: rows of in's partials (0: N)
  int64_t in2_splits = 0;          // PartsActGrad: in2 as partials (0: in2 itself)
  const void* in_bias = nullptr;   // [K], x's dtype, or null
  void* save = nullptr;            // [N, K] acc type, or null (PartsAct, PartsActGrad)
  void* save2 = nullptr;
  int8_t act = 0;
  int8_t gate = 0;                 // LinOut::Gate's, or LinIn::GateGrad's
  bool pair = false;               // CBAM's two pools (LinIn::Rows, LinIn::PartsAct, LinOut::Spread)
  const void* bias = nullptr;      // [J], x's dtype, or null
  double bias_scale = 1;           // LinOut::Gate: z = sum + bias_scale·bias (CBAM: fc2's bias once per pool)
  void* z_out = nullptr;
  void* g_out = nullptr;
  void* part_out = nullptr;
  double a_scale = 1;              // Spread
  const void* cnt = nullptr;
  // GateGrad's in (s) and Spread's cnt from se_reduce's deferred partials
  // [2, red_rows, red_segs] (sums, then counts) when red_segs > 1.
  const void* red = nullptr;
  int64_t red_segs = 1, red_rows = 0;
};

// The shared tiles of one block of a layer: the weights' and the inputs'.
template <typename A> struct LinTiles {
  A (*ws)[kLinK + 1];  // [kLinJ][kLinK + 1]
  A (*xs)[kLinK];      // [kLinN][kLinK]
};

// The work of block (bx, by, bz) of a layer's grid (gy blocks along y): the
// body of se_linear_kernel, and a tile of the cooperative excitation. The
// inputs are read by plain loads (no __restrict__): in the cooperative kernel
// they were written by the phase before its grid.sync, which the
// non-coherent read-only path need not see.
template <typename T, LinIn IN, LinOut OUT, bool WT>
__device__ __forceinline__ void linear_block(const SeLinear& q, int64_t bx, int64_t by, int64_t bz, int64_t gy,
                                             const LinTiles<acc_t<T>>& tiles) {
  using A = acc_t<T>;
  A (*const ws)[kLinK + 1] = tiles.ws;
  A (*const xs)[kLinK] = tiles.xs;
  const T* __restrict__ w = static_cast<const T*>(q.w);
  const A* in = static_cast<const A*>(q.in);
  const A* in2 = static_cast<const A*>(q.in2);
  const int t = threadIdx.x, jj = t % kLinJ, ng = t / kLinJ;
  const int64_t N = q.N, J = q.J, K = q.K;
  const int64_t j0 = bx * kLinJ;
  const int64_t kb = bz * q.k_per_split;
  const int64_t ke = kb + q.k_per_split < K ? kb + q.k_per_split : K;
  const bool saves = bx == 0 && q.save != nullptr;
  for (int64_t n0 = by * kLinN; n0 < N; n0 += gy * kLinN) {
    A acc[kLinPerThread];
#pragma unroll
    for (int m = 0; m < kLinPerThread; ++m) acc[m] = A(0);
    for (int64_t k0 = kb; k0 < ke; k0 += kLinK) {
#pragma unroll
      for (int i = 0; i < kLinJ * kLinK / kLinThreads; ++i) {
        // Adjacent threads read adjacent elements of the stored weight.
        const int e = t + i * kLinThreads;
        const int r = WT ? e % kLinJ : e / kLinK, col = WT ? e / kLinJ : e % kLinK;
        const int64_t j = j0 + r, k = k0 + col;
        ws[r][col] = (j < J && k < ke) ? to_acc(WT ? w[k * J + j] : w[j * K + k]) : A(0);
      }
#pragma unroll
      for (int i = 0; i < kLinN * kLinK / kLinThreads; ++i) {
        const int e = t + i * kLinThreads, r = e / kLinK, col = e % kLinK;
        const int64_t n = n0 + r, k = k0 + col;
        A v = A(0);
        if (n < N && k < ke) {
          const int64_t at = n * K + k;
          if constexpr (IN == LinIn::Rows) {
            v = q.pair ? in[at] * A(0.5) + in[N * K + at] * A(0.5) : in[at];
          } else if constexpr (IN == LinIn::GateGrad) {
            const A z = in2[at], g = gate_fwd(q.gate, z);
            const A sv = q.red_segs > 1 ? segments_sum(static_cast<const A*>(q.red), q.red_segs, at) : in[at];
            v = gate_bwd(q.gate, sv, z, g);
            if (saves) {
              static_cast<A*>(q.save)[at] = v;
              if (q.save2 != nullptr) static_cast<A*>(q.save2)[at] = g;
            }
          } else {
            // Row `row` of partials [splits, rows, K], the splits summed in order.
            auto parts_sum = [&](const A* src, int64_t splits, int64_t rows, int64_t row) {
              A h = src[row * K + k];
              for (int64_t sp = 1; sp < splits; ++sp) h += src[(sp * rows + row) * K + k];
              return h;
            };
            if constexpr (IN == LinIn::PartsAct) {
              const int64_t rows = q.pair ? 2 * N : N;
              auto row_sum = [&](int64_t row) { return parts_sum(in, q.in_splits, rows, row); };
              A h = row_sum(n);
              if (q.in_bias != nullptr) h += to_acc(static_cast<const T*>(q.in_bias)[k]);
              if (saves) static_cast<A*>(q.save)[at] = h;
              v = act_fwd(q.act, h);
              if (q.pair) {
                A h2 = row_sum(N + n);
                if (q.in_bias != nullptr) h2 += to_acc(static_cast<const T*>(q.in_bias)[k]);
                v += act_fwd(q.act, h2);
              }
            } else {
              const int64_t rows = q.part_rows ? q.part_rows : N;
              const A h = parts_sum(in, q.in_splits, rows, n < rows ? n : n - rows);
              A pre;
              if (q.in2_splits > 0) {
                pre = parts_sum(in2, q.in2_splits, N, n);
                if (q.in_bias != nullptr) pre += to_acc(static_cast<const T*>(q.in_bias)[k]);
              } else {
                pre = in2[at];
              }
              v = act_bwd(q.act, h, pre);
              if (saves) {
                static_cast<A*>(q.save)[at] = v;
                if (q.save2 != nullptr) static_cast<A*>(q.save2)[at] = pre;
              }
            }
          }
        }
        xs[r][col] = v;
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < kLinK; ++kk) {
        const A wv = ws[jj][kk];
#pragma unroll
        for (int m = 0; m < kLinPerThread; ++m) acc[m] += wv * xs[ng * kLinPerThread + m][kk];
      }
      __syncthreads();  // the tiles are restaged for the next chunk
    }
    const int64_t j = j0 + jj;
    if (j < J) {
#pragma unroll
      for (int m = 0; m < kLinPerThread; ++m) {
        const int64_t n = n0 + ng * kLinPerThread + m;
        if (n >= N) continue;
        if constexpr (OUT == LinOut::Gate) {
          const A z = acc[m] + (q.bias != nullptr ? static_cast<A>(q.bias_scale) * to_acc(static_cast<const T*>(q.bias)[j]) : A(0));
          static_cast<A*>(q.z_out)[n * J + j] = z;
          if (q.g_out != nullptr) static_cast<A*>(q.g_out)[n * J + j] = gate_fwd(q.gate, z);
        } else if constexpr (OUT == LinOut::Spread) {
          if (q.pair) {
            const int64_t half = N / 2;
            if (n < half) {
              static_cast<A*>(q.z_out)[n * J + j] = acc[m] * static_cast<A>(q.a_scale);
            } else {
              const int64_t at = (n - half) * J + j;
              static_cast<A*>(q.g_out)[at] = acc[m] / static_cast<const A*>(q.cnt)[at];
            }
          } else {
            static_cast<A*>(q.z_out)[n * J + j] = acc[m] * static_cast<A>(q.a_scale);
            if (q.cnt != nullptr) {
              const A c = q.red_segs > 1
                              ? segments_sum(static_cast<const A*>(q.red) + q.red_rows * q.red_segs, q.red_segs, n * J + j)
                              : static_cast<const A*>(q.cnt)[n * J + j];
              static_cast<A*>(q.g_out)[n * J + j] = acc[m] * A(0.5) / c;
            }
          }
        } else {
          static_cast<A*>(q.part_out)[(bz * N + n) * J + j] = acc[m];
        }
      }
    }
  }
}

template <typename T, LinIn IN, LinOut OUT, bool WT>
__global__ void __launch_bounds__(kLinThreads) se_linear_kernel(const SeLinear q) {
  using A = acc_t<T>;
  __shared__ A ws[kLinJ][kLinK + 1];
  __shared__ A xs[kLinN][kLinK];
  linear_block<T, IN, OUT, WT>(q, blockIdx.x, blockIdx.y, blockIdx.z, gridDim.y, LinTiles<A>{ws, xs});
}

// The weight gradients on the [N, ·] rows: out[r, c] = Σ_n L[n, r]·R[n, c]
// (r < Rn, c < Cn; L through the activation when l_act), each sum over n in
// order by one thread: deterministic, whatever the grid. The bias gradient
// rides along as a row or column of ones: the row sums Σ_n L[n, r] (bias_rows)
// at column c = Cn, or the column sums Σ_n R[n, c] at row r = Rn. CBAM's
// pairs of rows: l_pair reads L's row n as act(L[n]) + act(L[N + n]) (the two
// pools' hidden rows, whose bias counts twice: a row of twos), r_pair R's as
// ½R[n] + ½R[N + n] (light CBAM's MLP input). out is
// [Rn, Cn], or (transposed) [Cn, Rn], written through shared memory so that
// the stores stay coalesced. A block of 256 threads takes 16 rows × 64
// columns (thread t: column t % 64 of rows 4·(t / 64) ... + 3), n in chunks
// of 32; the blocks walk the tiles of up to two jobs (dw2 then dw1) in turn.
constexpr int kWgR = 16, kWgC = 64, kWgN = 32;
static_assert(kWgR * kWgC == kLinThreads * 4, "four sums per thread");

struct SeWgradJob {
  int64_t N = 0;                   // the rows summed over
  int64_t Rn = 0, Cn = 0;
  const void* L = nullptr;         // [N, Rn], acc type
  const void* R = nullptr;         // [N, Cn], acc type
  bool l_act = false;
  bool l_pair = false, r_pair = false;  // L [2N, Rn], R [2N, Cn]: pairs of rows, as above
  bool transposed = false;
  bool bias_rows = false;
  void* out = nullptr;             // x's dtype
  void* bias = nullptr;            // x's dtype, or null
  int64_t col_tiles = 0, tiles = 0;
};
struct SeWgrad {
  int8_t act = 0;
  SeWgradJob a, b;                 // b.tiles == 0: one job
};

template <typename T>
__global__ void __launch_bounds__(kLinThreads) se_wgrad_kernel(const SeWgrad q) {
  using A = acc_t<T>;
  __shared__ A ls[kWgN][kWgR];
  __shared__ A rs[kWgN][kWgC];
  __shared__ A out_tile[kWgR][kWgC + 1];
  const int t = threadIdx.x, cc = t % kWgC, rg = t / kWgC;
  for (int64_t tile = blockIdx.x; tile < q.a.tiles + q.b.tiles; tile += gridDim.x) {
    const bool second = tile >= q.a.tiles;
    const SeWgradJob jb = second ? q.b : q.a;
    const int64_t local = second ? tile - q.a.tiles : tile;
    const int64_t r0 = local / jb.col_tiles * kWgR, c0 = local % jb.col_tiles * kWgC;
    const A* __restrict__ L = static_cast<const A*>(jb.L);
    const A* __restrict__ R = static_cast<const A*>(jb.R);
    const int64_t N = jb.N;
    A acc[kWgR * kWgC / kLinThreads];
#pragma unroll
    for (int m = 0; m < 4; ++m) acc[m] = A(0);
    for (int64_t n0 = 0; n0 < N; n0 += kWgN) {
#pragma unroll
      for (int i = 0; i < kWgN * kWgR / kLinThreads; ++i) {
        const int e = t + i * kLinThreads, nn = e / kWgR, rr = e % kWgR;
        const int64_t n = n0 + nn, r = r0 + rr;
        A v = A(0);
        if (n < N) {
          if (r < jb.Rn) {
            v = L[n * jb.Rn + r];
            if (jb.l_act) v = act_fwd(q.act, v);
            if (jb.l_pair) v += act_fwd(q.act, L[(N + n) * jb.Rn + r]);
          } else if (r == jb.Rn) {
            v = jb.l_pair ? A(2) : A(1);
          }
        }
        ls[nn][rr] = v;
      }
#pragma unroll
      for (int i = 0; i < kWgN * kWgC / kLinThreads; ++i) {
        const int e = t + i * kLinThreads, nn = e / kWgC, c = e % kWgC;
        const int64_t n = n0 + nn, col = c0 + c;
        A v = A(0);
        if (n < N) {
          if (col < jb.Cn) {
            v = jb.r_pair ? R[n * jb.Cn + col] * A(0.5) + R[(N + n) * jb.Cn + col] * A(0.5) : R[n * jb.Cn + col];
          } else if (col == jb.Cn) {
            v = A(1);
          }
        }
        rs[nn][c] = v;
      }
      __syncthreads();
#pragma unroll 8
      for (int nn = 0; nn < kWgN; ++nn) {
        const A rv = rs[nn][cc];
#pragma unroll
        for (int m = 0; m < 4; ++m) acc[m] += ls[nn][rg * 4 + m] * rv;
      }
      __syncthreads();  // ls and rs are restaged for the next chunk
    }
    T* __restrict__ out = static_cast<T*>(jb.out);
    T* __restrict__ bias = static_cast<T*>(jb.bias);
    const int64_t c = c0 + cc;
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const int64_t r = r0 + rg * 4 + m;
      if (bias != nullptr && jb.bias_rows && c == jb.Cn && r < jb.Rn) bias[r] = from_acc<T>(acc[m]);
      if (bias != nullptr && !jb.bias_rows && r == jb.Rn && c < jb.Cn) bias[c] = from_acc<T>(acc[m]);
      if (jb.transposed) {
        out_tile[rg * 4 + m][cc] = acc[m];
      } else if (r < jb.Rn && c < jb.Cn) {
        out[r * jb.Cn + c] = from_acc<T>(acc[m]);
      }
    }
    if (jb.transposed) {
      __syncthreads();
#pragma unroll
      for (int i = 0; i < kWgR * kWgC / kLinThreads; ++i) {
        const int e = t + i * kLinThreads, rr = e % kWgR, ct = e / kWgR;
        const int64_t r = r0 + rr, col = c0 + ct;
        if (r < jb.Rn && col < jb.Cn) out[col * jb.Rn + r] = from_acc<T>(out_tile[rr][ct]);
      }
      __syncthreads();  // out_tile is rewritten by the next tile (with N == 0, no other barrier comes between)
    }
  }
}

// ---- weight-gradient partials summed over their groups (sum_partials) -------

// One thread per output element (of all the gradients in turn), summing its
// groups' partials in order: adjacent threads read adjacent partials.
template <typename T>
__global__ void __launch_bounds__(kThreads) grad_sum_kernel(const PartialSums q) {
  int64_t total = 0;
  for (int j = 0; j < q.count; ++j) total += q.len[j];
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    int j = 0;
    int64_t e = i;
    while (e >= q.len[j]) e -= q.len[j], ++j;
    const float* __restrict__ src = q.parts[j] + e;
    float s = src[0];
    for (int64_t g = 1; g < q.groups; ++g) s += src[g * q.len[j]];
    static_cast<T*>(q.out[j])[e] = from_acc<T>(s);
  }
}

template <typename T>
cudaError_t launch_grad_sum(const PartialSums& q, cudaStream_t stream) {
  if (q.count < 0 || q.count > kMaxPartialSums || q.groups < 1) return cudaErrorInvalidValue;
  int64_t total = 0;
  for (int j = 0; j < q.count; ++j) {
    if (q.len[j] < 1 || q.parts[j] == nullptr || q.out[j] == nullptr) return cudaErrorInvalidValue;
    total += q.len[j];
  }
  if (total == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>(ceil_div(total, kThreads), 1024);  // a grid-stride loop past that
  grad_sum_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(q);
  return cudaGetLastError();
}

// ---- ECA's excitation on the [N, C] rows (two-phase path) -------------------

constexpr int kExciteThreads = 256;
static_assert((kEcaMaxTaps + 1) * 16 == kExciteThreads, "the block sums below split 16 rows over 16 threads each");

// z = Σ_j w[j]·P(c + j - pad) + b and g = gate(z), one thread per (n, c).
template <typename T>
__global__ void __launch_bounds__(kExciteThreads) eca_excite_fwd_kernel(const EcaExcite p) {
  using A = acc_t<T>;
  const A* __restrict__ pooled = static_cast<const A*>(p.pooled);
  const T* __restrict__ w = static_cast<const T*>(p.w);
  A* __restrict__ z_out = static_cast<A*>(p.logits);
  A* __restrict__ g_out = static_cast<A*>(p.g);
  const int64_t C = p.C, k = p.k, pad = (k - 1) / 2, total = p.N * C;
  const A bias = p.b != nullptr ? to_acc(static_cast<const T*>(p.b)[0]) : A(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kExciteThreads;
  // The pooled value of row r: as the pool wrote it, or (deferred) its
  // segments' sums added in order and divided by H·W, as combine_rows does.
  const A* __restrict__ parts = static_cast<const A*>(p.pool_partials);
  const int64_t S = p.segments;
  auto pooled_at = [&](int64_t r) {
    return S <= 1 ? pooled[r] : segments_sum(parts, S, r) / static_cast<A>(p.HW);
  };
  // (pooled, __restrict__, is never read when S > 1: pooled_out, the same
  // memory, is written instead.)
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kExciteThreads + threadIdx.x; i < total; i += stride) {
    const int64_t n = i / C, c = i - n * C;
    auto row_at = [&](int64_t j) { return pooled_at(n * C + j); };
    A z = A(0), own = A(0);
    for (int64_t j = 0; j < k; ++j) {
      const A v = padded_by<A>(row_at, C, c + j - pad, p.circular);
      if (j == pad) own = v;  // the window's centre: row i itself
      z += to_acc(w[j]) * v;
    }
    if (S > 1) static_cast<A*>(p.pooled_out)[i] = own;
    z += bias;
    z_out[i] = z;
    g_out[i] = gate_fwd(p.gate, z);
  }
}

// The backward for channels [c0, c0 + 256) of the samples blockIdx.y,
// blockIdx.y + gridDim.y, ...: dz = gate'(z)·s over the tile and its
// neighbours (k - 1 of them, wrapped or zero) into shared memory, then per
// channel g, a = dp / HW with dp = Σ_j w[j]·dz(c - j + pad), and the
// thread's running Σ P(c + j - pad)·dz(c) (j < k) and Σ dz (j = k). The
// block's k + 1 sums, in a fixed order, go to partials[block][j].
template <typename T>
__global__ void __launch_bounds__(kExciteThreads) eca_excite_bwd_kernel(const EcaExcite p) {
  using A = acc_t<T>;
  __shared__ A dz_tile[kExciteThreads + kEcaMaxTaps - 1];
  __shared__ A red[kEcaMaxTaps + 1][kExciteThreads];
  const A* __restrict__ pooled = static_cast<const A*>(p.pooled);
  const A* __restrict__ s = static_cast<const A*>(p.s);
  const A* __restrict__ zs = static_cast<const A*>(p.saved_logits);
  const T* __restrict__ w = static_cast<const T*>(p.w);
  A* __restrict__ g_out = static_cast<A*>(p.g);
  A* __restrict__ a_out = static_cast<A*>(p.a);
  const int t = threadIdx.x;
  const int64_t C = p.C, k = p.k, pad = (k - 1) / 2;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kExciteThreads, c = c0 + t;
  const A inv_hw = A(1) / static_cast<A>(p.HW);
  A wt[kEcaMaxTaps], acc[kEcaMaxTaps + 1];
#pragma unroll
  for (int j = 0; j < kEcaMaxTaps; ++j) wt[j] = j < k ? to_acc(w[j]) : A(0);
#pragma unroll
  for (int j = 0; j <= kEcaMaxTaps; ++j) acc[j] = A(0);
  for (int64_t n = blockIdx.y; n < p.N; n += gridDim.y) {
    const int64_t row = n * C;
    for (int64_t i = t; i < kExciteThreads + 2 * pad; i += kExciteThreads) {
      int64_t cc = c0 - pad + i;
      A dz = A(0);
      if (cc < 0 || cc >= C) cc = p.circular ? ((cc % C) + C) % C : -1;
      if (cc >= 0) {
        const A z = zs[row + cc];
        dz = gate_bwd(p.gate, s[row + cc], z, gate_fwd(p.gate, z));
      }
      dz_tile[i] = dz;
    }
    __syncthreads();
    if (c < C) {
      A dp = A(0);
#pragma unroll
      for (int j = 0; j < kEcaMaxTaps; ++j)
        if (j < k) dp += wt[j] * dz_tile[t - j + 2 * pad];
      g_out[row + c] = gate_fwd(p.gate, zs[row + c]);
      a_out[row + c] = dp * inv_hw;
      const A dz = dz_tile[t + pad];
#pragma unroll
      for (int j = 0; j <= kEcaMaxTaps; ++j) {
        if (j < k) {
          acc[j] += padded(pooled + row, C, c + j - pad, p.circular) * dz;
        } else if (j == k) {
          acc[j] += dz;
        }
      }
    }
    __syncthreads();  // dz_tile is rewritten for the next sample
  }
#pragma unroll
  for (int j = 0; j <= kEcaMaxTaps; ++j) red[j][t] = acc[j];
  __syncthreads();
  // Row j = t / 16: thread q = t % 16 sums its 16 entries, then thread j the 16 sums.
  {
    const int j = t / 16, q = t % 16;
    A v = red[j][q * 16];
    for (int i = 1; i < 16; ++i) v += red[j][q * 16 + i];
    red[j][q * 16] = v;
  }
  __syncthreads();
  if (t <= k) {
    A v = red[t][0];
    for (int q = 1; q < 16; ++q) v += red[t][q * 16];
    A* part = static_cast<A*>(p.partials);
    part[(static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x) * (k + 1) + t] = v;
  }
}

// dw[j] (blockIdx.x = j < k) or db (j = k): the sum of the `parts` block
// partials, each thread over a fixed stride, then a fixed tree; in w's dtype.
template <typename T>
__global__ void __launch_bounds__(kExciteThreads) eca_excite_wsum_kernel(const EcaExcite p, const int64_t parts) {
  using A = acc_t<T>;
  __shared__ A red[kExciteThreads];
  const A* __restrict__ part = static_cast<const A*>(p.partials);
  const int t = threadIdx.x;
  const int64_t j = blockIdx.x, items = p.k + 1;
  A v = A(0);
  for (int64_t q = t; q < parts; q += kExciteThreads) v += part[q * items + j];
  red[t] = v;
  __syncthreads();
  for (int width = kExciteThreads / 2; width > 0; width >>= 1) {
    if (t < width) red[t] += red[t + width];
    __syncthreads();
  }
  if (t == 0) {
    T* out = static_cast<T*>(j < p.k ? p.dw : p.db);
    if (out != nullptr) out[j < p.k ? j : 0] = from_acc<T>(red[0]);
  }
}

// ---- launchers -------------------------------------------------------------

// Whether 16-byte accesses fit: rows of `row` elements (whole packs) in
// tensors that all start 16-byte aligned (null pointers ignored).
template <typename T>
bool vectorizes(int64_t row, std::initializer_list<const void*> ptrs) {
  if (row % kVec<T> != 0) return false;
  for (const void* q : ptrs)
    if (q != nullptr && !aligned16(q)) return false;
  return true;
}

// V for a pass: 16-byte accesses when every row starts 16-byte aligned.
template <typename T>
bool can_vectorize(const SePass& p, std::initializer_list<const void*> ptrs) {
  return vectorizes<T>(p.channels_last ? p.C : p.HW, ptrs);
}

// Segments of H·W for a reduction: enough work items to fill the GPU (about
// 64 warps per multiprocessor for NCHW, 8 blocks of 256 threads for
// channels_last), each segment still long enough to be worth a launch slot.
template <typename T>
int64_t segments_for(const SePass& p, int V) {
  if (p.N * p.C == 0 || p.HW == 0) return 1;
  int64_t want = 1;
  if (!p.channels_last) {
    const int64_t target = int64_t{p.sm_count} * 64, rows = p.N * p.C;
    if (rows < target / 2) want = std::min(ceil_div(target, rows), ceil_div(p.HW, int64_t{32} * V * 4));
  } else {
    const int64_t target = int64_t{p.sm_count} * 8, blocks = ceil_div(p.C, kColsX * V) * p.N;
    if (blocks < target / 2) want = std::min(ceil_div(target, blocks), ceil_div(p.HW, int64_t{kColsY} * 4));
  }
  want = std::max<int64_t>(1, std::min<int64_t>(want, 65535));
  // Whole multiples of an access round, then as few segments as that allows.
  const int64_t unit = p.channels_last ? 1 : int64_t{32} * V;
  const int64_t seg_len = ceil_div(ceil_div(p.HW, want), unit) * unit;
  return ceil_div(p.HW, seg_len);
}

template <typename A, bool BWD, bool WITH_MAX>
void launch_combine(const SePass& p, cudaStream_t stream) {
  const int64_t blocks = std::min<int64_t>(ceil_div(p.N * p.C, kThreads), int64_t{p.sm_count} * 32);
  combine_partials_kernel<A, BWD, WITH_MAX><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
}

template <typename T, bool BWD, bool WITH_MAX, int V>
void launch_reduce_v(const SePass& p, cudaStream_t stream) {
  // Segment length: H·W / segments rounded up to whole access rounds (32·V
  // elements for NCHW, so every access stays aligned); as segments_for chose
  // it, every segment is non-empty.
  const int64_t unit = p.channels_last ? 1 : int64_t{32} * V;
  const int64_t seg_len = ceil_div(ceil_div(p.HW == 0 ? 1 : p.HW, p.segments), unit) * unit;
  if (!p.channels_last) {
    const int64_t items = p.N * p.C * p.segments;
    const int64_t blocks = std::min<int64_t>(ceil_div(items, kThreads / 32), int64_t{p.sm_count} * 64);
    reduce_rows_kernel<T, BWD, WITH_MAX, V><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p, seg_len);
  } else {
    const dim3 grid(static_cast<unsigned>(ceil_div(p.C, kColsX * V)),
                    static_cast<unsigned>(std::min<int64_t>(p.N, 65535)), static_cast<unsigned>(p.segments));
    reduce_cols_kernel<T, BWD, WITH_MAX, V><<<grid, dim3(kColsX, kColsY), 0, stream>>>(p, seg_len);
  }
  if (p.segments > 1 && !p.defer_combine) launch_combine<acc_t<T>, BWD, WITH_MAX>(p, stream);
}

template <typename T, bool BWD, bool WITH_MAX, int V>
void launch_apply_v(const SePass& p, cudaStream_t stream) {
  const int64_t packs = p.N * p.C * p.HW / V;
  const int64_t blocks = std::min<int64_t>(ceil_div(packs, kThreads), int64_t{p.sm_count} * 32);
  apply_kernel<T, BWD, WITH_MAX, V><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
}

template <typename T, bool BWD>
bool reduce_vectorizes(const SePass& p) {
  return can_vectorize<T>(p, {p.x, BWD ? p.dy : nullptr});
}

template <typename T, bool BWD>
int64_t reduce_segments(const SePass& p) {
  return segments_for<T>(p, reduce_vectorizes<T, BWD>(p) ? kVec<T> : 1);
}

template <typename T, bool BWD>
cudaError_t launch_reduce(const SePass& p, cudaStream_t stream) {
  // H·W == 0 still writes every (n, c): the mean of nothing is NaN (0/0), as
  // torch's is, and the sums are 0.
  if (p.N * p.C == 0) return cudaSuccess;
  if (p.segments != reduce_segments<T, BWD>(p) || (p.segments > 1 && p.partials == nullptr)) {
    return cudaErrorInvalidValue;  // the caller must size the workspace with se_reduce_segments
  }
  const bool with_max = p.ext != nullptr;
  const bool vec = reduce_vectorizes<T, BWD>(p);
  if (with_max) {
    vec ? launch_reduce_v<T, BWD, true, kVec<T>>(p, stream) : launch_reduce_v<T, BWD, true, 1>(p, stream);
  } else {
    vec ? launch_reduce_v<T, BWD, false, kVec<T>>(p, stream) : launch_reduce_v<T, BWD, false, 1>(p, stream);
  }
  return cudaGetLastError();
}

template <typename T, bool BWD>
cudaError_t launch_apply(const SePass& p, cudaStream_t stream) {
  if (p.N * p.C * p.HW == 0) return cudaSuccess;
  const bool vec = can_vectorize<T>(p, {p.x, p.out, BWD ? p.dy : nullptr});
  if constexpr (BWD) {
    if (p.maxv != nullptr) {
      vec ? launch_apply_v<T, true, true, kVec<T>>(p, stream) : launch_apply_v<T, true, true, 1>(p, stream);
      return cudaGetLastError();
    }
  }
  vec ? launch_apply_v<T, BWD, false, kVec<T>>(p, stream) : launch_apply_v<T, BWD, false, 1>(p, stream);
  return cudaGetLastError();
}

// fc1's split of C: enough blocks to fill the GPU twice over, at most
// kLinMaxSplits, each split whole chunks of kLinK.
inline int64_t se_fc1_k_per_split(const SeExcite& p) {
  const int64_t chunks = ceil_div(p.C, kLinK);
  if (chunks <= 1) return kLinK;
  const int64_t tiles = ceil_div(p.rd, kLinJ) * std::min<int64_t>(ceil_div(p.N, kLinN), 65535);
  if (tiles == 0) return kLinK;  // no samples or no hidden units: nothing is launched
  const int64_t splits = std::min<int64_t>({chunks, kLinMaxSplits, std::max<int64_t>(1, ceil_div(int64_t{p.sm_count} * 2, tiles))});
  return ceil_div(chunks, splits) * kLinK;
}
inline int64_t se_fc1_splits(const SeExcite& p) {
  return p.C == 0 ? 1 : ceil_div(p.C, se_fc1_k_per_split(p));
}

inline bool se_excite_valid(const SeExcite& p) {
  // C and rd below 2^36: grid.x = ceil(C / 64) stays a valid launch.
  return p.N >= 0 && p.C >= 0 && p.rd >= 0 && (p.two_layer || p.rd == p.C) && (p.C < (int64_t{1} << 36)) &&
         (p.rd < (int64_t{1} << 36));
}

template <typename T, LinIn IN, LinOut OUT, bool WT>
void launch_linear(const SeLinear& q, int64_t splits, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(q.J, kLinJ)),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div(q.N, kLinN), 65535)), static_cast<unsigned>(splits));
  se_linear_kernel<T, IN, OUT, WT><<<grid, kLinThreads, 0, stream>>>(q);
}

// CBAM's channel MLP runs on the same two layers: fc1 on both pools' rows
// [2N, C] (light: on ½mean + ½max, N rows), split over C; fc2 on the sum of
// the two rows' activations (light: the one row's), fc2's bias once per pool.
inline SeExcite cbam_mlp_rows(const SeExcite& p, bool light) {
  SeExcite rows = p;
  if (!light) rows.N = 2 * p.N;
  return rows;
}

// fc1 without its bias on the `rows` of p.pooled, split over C into partials
// [splits, rows.N, rd] at `parts`: the forward's first launch, and CBAM's
// backward recomputing it with the very same sums.
inline SeLinear fc1_parts_layer(const SeExcite& p, const SeExcite& rows, bool pair, void* parts) {
  SeLinear fc1;
  fc1.N = rows.N, fc1.J = p.rd, fc1.K = p.C;
  fc1.w = p.w1;
  fc1.in = p.pooled, fc1.pair = pair;
  fc1.k_per_split = se_fc1_k_per_split(rows);
  fc1.part_out = parts;
  return fc1;
}

template <typename T>
void launch_fc1_parts(const SeExcite& p, const SeExcite& rows, bool pair, void* parts, cudaStream_t stream) {
  launch_linear<T, LinIn::Rows, LinOut::Parts, false>(fc1_parts_layer(p, rows, pair, parts), se_fc1_splits(rows), stream);
}

// fc2 on fc1's partials at p.partials (as launch_two_layers says).
inline SeLinear fc2_gate_layer(const SeExcite& p, const SeExcite& rows, bool pair, double bias_scale) {
  SeLinear fc2;
  fc2.N = p.N, fc2.J = p.C, fc2.K = p.rd;
  fc2.k_per_split = ceil_div(p.rd, kLinK) * kLinK;
  fc2.w = p.w2;
  fc2.in = p.partials, fc2.in_splits = se_fc1_splits(rows), fc2.in_bias = p.b1, fc2.save = p.hidden, fc2.act = p.act;
  fc2.pair = pair;
  fc2.bias = p.b2, fc2.bias_scale = bias_scale, fc2.z_out = p.logits, fc2.g_out = p.g, fc2.gate = p.gate;
  return fc2;
}

// Effective SE's one layer, ending with the gate.
inline SeLinear one_layer_gate(const SeExcite& p) {
  SeLinear fc1;
  fc1.N = p.N, fc1.J = p.rd, fc1.K = p.C;
  fc1.w = p.w1;
  fc1.in = p.pooled;
  fc1.k_per_split = ceil_div(p.C, kLinK) * kLinK;
  fc1.bias = p.b1, fc1.z_out = p.logits, fc1.g_out = p.g, fc1.gate = p.gate;
  return fc1;
}

// fc1 on the `rows` of p.pooled split over C into partials, then fc2, which
// sums them with fc1's bias, saves hidden (when p.hidden is set), applies the
// activation, fc2's bias (times bias_scale) and the gate. SE: rows = p;
// CBAM as cbam_mlp_rows says, with the pairs of rows as LinIn says.
template <typename T>
void launch_two_layers(const SeExcite& p, const SeExcite& rows, bool fc1_pair, bool fc2_pair, double bias_scale,
                       cudaStream_t stream) {
  launch_fc1_parts<T>(p, rows, fc1_pair, p.partials, stream);
  launch_linear<T, LinIn::PartsAct, LinOut::Gate, false>(fc2_gate_layer(p, rows, fc2_pair, bias_scale), 1, stream);
}

template <typename T>
cudaError_t launch_se_excite(const SeExcite& p, cudaStream_t stream) {
  if (!se_excite_valid(p)) return cudaErrorInvalidValue;
  if (p.N == 0) return cudaSuccess;
  if (p.C == 0 || p.rd == 0) return cudaErrorInvalidValue;  // the glue keeps the ATen ops for these
  if (!p.two_layer) {  // effective SE: one layer, ending with the gate
    launch_linear<T, LinIn::Rows, LinOut::Gate, false>(one_layer_gate(p), 1, stream);
  } else {
    launch_two_layers<T>(p, p, false, false, 1, stream);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_cbam_mlp(const SeExcite& p, bool light, cudaStream_t stream) {
  if (!se_excite_valid(p) || !p.two_layer || p.N >= (int64_t{1} << 62)) return cudaErrorInvalidValue;
  if (p.N == 0) return cudaSuccess;
  if (p.C == 0 || p.rd == 0) return cudaErrorInvalidValue;  // the glue keeps the ATen ops for these
  SeExcite q = p;
  q.hidden = nullptr;  // fc2 sees one hidden row of the pair's two: nothing to save
  launch_two_layers<T>(q, cbam_mlp_rows(q, light), light, !light, light ? 1 : 2, stream);
  return cudaGetLastError();
}

// The backward's workspace (accumulation-type elements): dz [N, C], and with
// two layers dL/dhidden [N, rd] and the first layer's split partials.
inline int64_t se_excite_bwd_workspace(const SeExcite& p) {
  if (p.C == 0 || p.rd == 0) return 0;
  return p.N * p.C + (p.two_layer ? p.N * p.rd * (1 + se_fc1_splits(p)) : 0);
}

// A weight-gradient job's tiles (the bias as one more row or column).
inline void se_wgrad_tiles(SeWgradJob& jb) {
  const bool bias = jb.bias != nullptr;
  jb.col_tiles = ceil_div(jb.Cn + (bias && jb.bias_rows ? 1 : 0), kWgC);
  jb.tiles = ceil_div(jb.Rn + (bias && !jb.bias_rows ? 1 : 0), kWgR) * jb.col_tiles;
}

// Both jobs' tiles over at most eight blocks per multiprocessor.
template <typename T>
void launch_wgrad(const SeWgrad& wg, int sm_count, cudaStream_t stream) {
  const int64_t tiles = wg.a.tiles + wg.b.tiles;
  const int64_t blocks = std::min<int64_t>(tiles, int64_t{sm_count} * 8);
  se_wgrad_kernel<T><<<static_cast<unsigned>(blocks), kLinThreads, 0, stream>>>(wg);
}

// The backward's first layer as it stages its input: dz = gate'(logits)·s,
// saved to dz, with g saved to p.g when set.
inline SeLinear gate_grad_layer(const SeExcite& p, void* dz) {
  SeLinear first;
  first.N = p.N, first.K = p.C;
  first.in = p.s, first.in2 = p.saved_logits, first.gate = p.gate;
  first.red = p.s_partials, first.red_segs = p.s_segments, first.red_rows = p.N * p.C;
  first.save = dz, first.save2 = p.g;
  return first;
}

// Two layers (SE's, CBAM's): dz times W2ᵀ split over C into partials
// [se_fc1_splits(p), N, rd] at `parts`.
template <typename T>
void launch_gate_grad_parts(const SeExcite& p, void* dz, void* parts, cudaStream_t stream) {
  SeLinear first = gate_grad_layer(p, dz);
  first.J = p.rd, first.w = p.w2;
  first.k_per_split = se_fc1_k_per_split(p);
  first.part_out = parts;
  launch_linear<T, LinIn::GateGrad, LinOut::Parts, true>(first, se_fc1_splits(p), stream);
}

// The backward of the excitation (the layers run with their weights
// transposed): dz = gate'·s, saved with g, times W2ᵀ split over C into
// partials; those summed through the activation's derivative (dL/dhidden,
// saved) times W1ᵀ: dL/dpooled, written as se_dx's spread terms; then both
// weight gradients in one launch.
// Effective SE: dz times W1ᵀ, then dW1. Three launches (two).
template <typename T>
cudaError_t launch_se_excite_bwd(const SeExcite& p, cudaStream_t stream) {
  if (!se_excite_valid(p) || (p.s_segments > 1 && p.s_partials == nullptr)) return cudaErrorInvalidValue;
  if (p.C == 0 || p.rd == 0) return cudaErrorInvalidValue;  // the glue keeps the ATen ops for these
  using A = acc_t<T>;
  A* const dz = static_cast<A*>(p.partials);
  A* const dh = dz + p.N * p.C;
  A* const parts = dh + p.N * p.rd;
  SeWgrad wg;
  wg.act = p.act;
  SeWgradJob& w1_job = p.two_layer ? wg.b : wg.a;  // dW1 [rd, C] = Σ_n dL/dfc1[n, ·]ᵀ pooled[n, ·]
  w1_job.N = p.N, w1_job.Rn = p.rd, w1_job.Cn = p.C;
  w1_job.L = p.two_layer ? dh : dz, w1_job.R = p.pooled;
  w1_job.bias_rows = true;
  w1_job.out = p.dw1, w1_job.bias = p.db1;
  se_wgrad_tiles(w1_job);
  // dL/dpooled as se_dx takes it: the mean's share of every element, the max's of its tied maxima.
  auto spread = [&](SeLinear& q) {
    q.a_scale = (p.cnt != nullptr ? 0.5 : 1.0) / static_cast<double>(p.HW);
    q.z_out = p.a, q.cnt = p.cnt, q.g_out = p.b;
    q.red = p.s_partials, q.red_segs = p.s_segments, q.red_rows = p.N * p.C;
  };
  if (p.N > 0) {
    if (p.two_layer) {
      launch_gate_grad_parts<T>(p, dz, parts, stream);
      SeLinear second;
      second.N = p.N, second.J = p.C, second.K = p.rd, second.w = p.w1;
      second.k_per_split = ceil_div(p.rd, kLinK) * kLinK;
      second.in = parts, second.in_splits = se_fc1_splits(p), second.in2 = p.saved_hidden, second.act = p.act;
      second.save = dh;
      spread(second);
      launch_linear<T, LinIn::PartsActGrad, LinOut::Spread, true>(second, 1, stream);
    } else {
      SeLinear first = gate_grad_layer(p, dz);
      first.J = p.C, first.w = p.w1;
      first.k_per_split = ceil_div(p.C, kLinK) * kLinK;
      spread(first);
      launch_linear<T, LinIn::GateGrad, LinOut::Spread, true>(first, 1, stream);
    }
  }
  if (p.two_layer) {  // dW2 [C, rd] = Σ_n dz[n, ·]ᵀ act(hidden[n, ·]), computed as its transpose
    wg.a.N = p.N, wg.a.Rn = p.rd, wg.a.Cn = p.C;
    wg.a.L = p.saved_hidden, wg.a.l_act = true, wg.a.R = dz;
    wg.a.transposed = true;
    wg.a.out = p.dw2, wg.a.bias = p.db2;
    se_wgrad_tiles(wg.a);
  }
  // Without samples the gradients are zeros, which the kernel writes too.
  launch_wgrad<T>(wg, p.sm_count, stream);
  return cudaGetLastError();
}

// CBAM's channel MLP backward (cbam_mlp_backward). The workspace: dz [N, C],
// fc1's recomputed partials [s1, rows, rd], dL/dhidden's partials
// [s2, N, rd], the hidden pre-activations and their gradients [rows, rd]
// each (rows = 2N, or N when light).
struct CbamMlpBwdSpace {
  int64_t rows = 0, s1 = 1, s2 = 1;
  int64_t dz = 0, pre_parts = 0, dh_parts = 0, pre = 0, dpre = 0, total = 0;
};
inline CbamMlpBwdSpace cbam_mlp_bwd_space(const SeExcite& p, bool light) {
  CbamMlpBwdSpace w;
  const SeExcite rows = cbam_mlp_rows(p, light);
  w.rows = rows.N;
  w.s1 = se_fc1_splits(rows);
  w.s2 = se_fc1_splits(p);
  w.pre_parts = w.dz + p.N * p.C;
  w.dh_parts = w.pre_parts + w.s1 * w.rows * p.rd;
  w.pre = w.dh_parts + w.s2 * p.N * p.rd;
  w.dpre = w.pre + w.rows * p.rd;
  w.total = w.dpre + w.rows * p.rd;
  return w;
}

// fc1 again, as the forward ran it (launch_fc1_parts: the same partials, so
// the same pre-activations); dz = gate'·dL/dg (p.s) times W2ᵀ split over C;
// those partials (one row for both pools) through the activation's
// derivative at each pool's pre-activations (fc1's partials summed with its
// bias, as the forward's fc2 sums them) times W1ᵀ: dL/dpooled, written as
// the dx pass's a (the means' share, / HW) and b (the maxima's, / cnt; light:
// both halves of ½mean + ½max's gradient); then both weight gradients, dW2
// on each sample's two activated rows (its bias on twos), dW1 on the 2N
// rows. Four launches.
template <typename T>
cudaError_t launch_cbam_mlp_bwd(const SeExcite& p, bool light, cudaStream_t stream) {
  if (!se_excite_valid(p) || !p.two_layer || p.N >= (int64_t{1} << 62) || p.cnt == nullptr || p.b == nullptr)
    return cudaErrorInvalidValue;
  if (p.N == 0) return cudaSuccess;  // the glue returns zeros without launching
  if (p.C == 0 || p.rd == 0) return cudaErrorInvalidValue;  // the glue keeps the ATen ops for these
  using A = acc_t<T>;
  const CbamMlpBwdSpace sp = cbam_mlp_bwd_space(p, light);
  A* const base = static_cast<A*>(p.partials);
  A* const dz = base + sp.dz;
  A* const pre = base + sp.pre;
  A* const dpre = base + sp.dpre;
  launch_fc1_parts<T>(p, cbam_mlp_rows(p, light), light, base + sp.pre_parts, stream);
  launch_gate_grad_parts<T>(p, dz, base + sp.dh_parts, stream);
  SeLinear second;
  second.N = sp.rows, second.J = p.C, second.K = p.rd, second.w = p.w1;
  second.k_per_split = ceil_div(p.rd, kLinK) * kLinK;
  second.in = base + sp.dh_parts, second.in_splits = sp.s2, second.part_rows = p.N;
  second.in2 = base + sp.pre_parts, second.in2_splits = sp.s1, second.in_bias = p.b1, second.act = p.act;
  second.save = dpre, second.save2 = pre;
  second.z_out = p.a, second.g_out = p.b, second.cnt = p.cnt;
  second.pair = !light;
  second.a_scale = (light ? 0.5 : 1.0) / static_cast<double>(p.HW);
  launch_linear<T, LinIn::PartsActGrad, LinOut::Spread, true>(second, 1, stream);
  SeWgrad wg;
  wg.act = p.act;
  // dW2 [C, rd] = Σ_n dz[n, ·]ᵀ (act(pre_mean[n, ·]) + act(pre_max[n, ·])), as its transpose.
  wg.a.N = p.N, wg.a.Rn = p.rd, wg.a.Cn = p.C;
  wg.a.L = pre, wg.a.l_act = true, wg.a.l_pair = !light, wg.a.R = dz;
  wg.a.transposed = true;
  wg.a.out = p.dw2, wg.a.bias = p.db2;
  se_wgrad_tiles(wg.a);
  // dW1 [rd, C] = Σ over the rows of dL/dpre[row, ·]ᵀ input[row, ·].
  wg.b.N = sp.rows, wg.b.Rn = p.rd, wg.b.Cn = p.C;
  wg.b.L = dpre, wg.b.R = p.pooled, wg.b.r_pair = light;
  wg.b.bias_rows = true;
  wg.b.out = p.dw1, wg.b.bias = p.db1;
  se_wgrad_tiles(wg.b);
  launch_wgrad<T>(wg, p.sm_count, stream);
  return cudaGetLastError();
}

// The backward's grid: a block per 256 channels and enough sample rows to
// fill the GPU (each block loops over every gridDim.y-th sample).
inline dim3 eca_excite_bwd_grid(const EcaExcite& p) {
  const int64_t tiles = ceil_div(p.C, kExciteThreads);
  if (tiles == 0 || p.N == 0) return dim3(0, 0, 1);
  const int64_t rows = std::min<int64_t>({p.N, std::max<int64_t>(1, ceil_div(int64_t{p.sm_count} * 8, tiles)), 65535});
  return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(rows), 1);
}

inline bool eca_excite_valid(const EcaExcite& p) {
  // C below 2^38: the backward's grid.x = ceil(C / 256) stays a valid launch.
  return p.k >= 1 && p.k <= kEcaMaxTaps && p.k % 2 == 1 && p.N >= 0 && p.C >= 0 && p.C < (int64_t{1} << 38);
}

template <typename T>
cudaError_t launch_eca_excite_fwd(const EcaExcite& p, cudaStream_t stream) {
  if (!eca_excite_valid(p) || (p.segments > 1 && (p.pool_partials == nullptr || p.pooled_out == nullptr))) {
    return cudaErrorInvalidValue;
  }
  const int64_t total = p.N * p.C;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>(ceil_div(total, kExciteThreads), int64_t{p.sm_count} * 32);
  eca_excite_fwd_kernel<T><<<static_cast<unsigned>(blocks), kExciteThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_eca_excite_bwd(const EcaExcite& p, cudaStream_t stream) {
  if (!eca_excite_valid(p)) return cudaErrorInvalidValue;
  const dim3 grid = eca_excite_bwd_grid(p);
  const int64_t parts = int64_t{grid.x} * grid.y;
  if (parts > 0) {
    eca_excite_bwd_kernel<T><<<grid, kExciteThreads, 0, stream>>>(p);
  }
  // The weight gradient even without samples or channels: zeros.
  eca_excite_wsum_kernel<T><<<static_cast<unsigned>(p.k + 1), kExciteThreads, 0, stream>>>(p, parts);
  return cudaGetLastError();
}

// Calls f(T{}) with T the element type named by dtype.
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: return f(float{});
    case DType::F64: return f(double{});
    case DType::F16: return f(__half{});
    case DType::BF16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace fused_attn::cuda
