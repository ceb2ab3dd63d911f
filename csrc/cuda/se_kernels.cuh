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

// Combines the segments' partials of every row in order 0, 1, ... and writes
// the results (one thread per row).
template <typename A, bool BWD, bool WITH_MAX>
__global__ void __launch_bounds__(kThreads) combine_partials_kernel(const SePass p) {
  const A* part = static_cast<const A*>(p.partials);
  const int64_t rows = p.N * p.C, S = p.segments;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kThreads) {
    Partial<A, BWD, WITH_MAX> acc;
    acc.sum = part[r * S];
    acc.ext = part[rows * S + r * S];
    for (int64_t s = 1; s < S; ++s) acc.merge(part[r * S + s], part[rows * S + r * S + s]);
    acc.finish(p, r);
  }
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
// x == maxv) (backward), V elements per thread per step, grid-stride. V > 1
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
    const int64_t e = i * V;
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
  if (p.segments > 1) {
    const int64_t blocks = std::min<int64_t>(ceil_div(p.N * p.C, kThreads), int64_t{p.sm_count} * 32);
    combine_partials_kernel<acc_t<T>, BWD, WITH_MAX><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  }
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
