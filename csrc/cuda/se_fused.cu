// The single-launch SE (se_cuda.h, SeFused): one kernel per direction, a
// thread-block cluster (sm_90+) per group of samples, each block holding its
// slice of channels of those samples in shared memory from the pooling to the
// rescale, so x (forward) or dy and x (backward) are read from DRAM once.
//
// Block r of a cluster owns channels [r·cb, (r+1)·cb) of the group's G
// samples: its pooled values are complete locally (pooling never crosses a
// block); only the excitation's hidden layer does, and it crosses through
// distributed shared memory: each block writes its partial sums over its own
// channels, the cluster synchronizes, and every block adds the K partials in
// rank order 0, 1, ... (the same sum in every block, the same every run).
// Nothing uses atomics: results are bitwise deterministic for a given plan.
//
//   forward:  load x → pooled (own channels) → fc1 partials → [cluster] hidden
//             → act → fc2 (own rows) → gate → y = x·g from shared memory
//             (one-layer SE: the pooled vector is gathered instead, and fc1
//             gives own rows directly)
//   backward: load dy, x → Σ dy·x (own channels) → dz → dW2 (own rows), fc2ᵀ
//             partials → [cluster] dh → act' → dW1 (own columns), dp (own
//             channels) → dx = dy·g + dp spread, from shared memory
//
// ECA takes the one-layer route with its 1-D convolution across channels in
// place of the [C, C] layer: the pooled vector (backward: dz) is gathered
// from the cluster, so a block's channels see their neighbours across block
// boundaries and around the ends (circular padding); the conv weight's
// gradient is summed over the block's channels, then over the cluster's
// blocks in rank order.
//
// Weight gradients sum over samples. With one group (the plan's `groups` ==
// 1, e.g. N = 1) the kernel writes them in the weights' dtype: one launch.
// With more, each group writes its partial in the accumulation type to
// [groups, ...] and the glue sums them over groups (a fixed-order reduction).
//
// The body needs sm_90 (clusters, distributed shared memory); for older
// architectures it compiles to nothing and se_fused_plan never picks it.
#include "se_kernels.cuh"

#include <cooperative_groups.h>
#include <cuda_pipeline_primitives.h>

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <numeric>
#include <string>
#include <tuple>
#include <type_traits>

namespace fused_attn::cuda {
namespace {

namespace cg = cooperative_groups;

// 256 threads, at most 128 registers each: two blocks fit on a multiprocessor (the
// planner sizes blocks so that their shared memory lets them).
constexpr int kFusedThreads = 256;
[[maybe_unused]] constexpr int kWarps = kFusedThreads / 32;

// The excitation's element functions (act_fwd, act_bwd, gate_fwd, gate_bwd) are
// se_kernels.cuh's, here in float.

template <typename T> __device__ __forceinline__ float ld(const T* p, int64_t i) { return to_acc(p[i]); }

// ---- the shared-memory plan, the same on host and device ----

__host__ __device__ inline int64_t align_up(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

// The row stride of a weight slice cut by channel columns in shared memory:
// cb rounded up to whole 16-byte packs.
__host__ __device__ inline int64_t wstride(int64_t cb) { return (cb + 7) / 8 * 8; }

// Offsets (bytes) of the arrays in dynamic shared memory.
struct Smem {
  int64_t tile_x, tile_dy;   // T[G·cb·HW] each (tile_dy: backward only)
  int64_t w_a, w_b;          // the block's weight slices, T, when staged: two layers W1[:, own]
                             // [rd][wstride] and W2[own, :] [cb][rd]; one layer W1[own, :]
                             // [cb][C] (forward) or W1[:, own] [C][wstride] (backward)
  int64_t own;               // float[4][G·cb]: per-channel scratch (pooled, gate, dz, ...)
  int64_t part;              // float[max(G·part_len, part_min)]: what other blocks read (partials, own pooled or dz)
  int64_t vec;               // float[G·vec_len]: the gathered vector (hidden, or the whole pooled / dz)
  int64_t red;               // float[2·kFusedThreads]: in-block reduction scratch
  int64_t total;
};

// part_min: the least floats `part` must hold (ECA: its k + 1 weight-gradient partials).
__host__ __device__ inline Smem smem_layout(int64_t G, int64_t cb, int64_t HW, int64_t C, int64_t rd, bool two_layer,
                                            int elem, bool backward, bool staged, int64_t part_min) {
  Smem s;
  const int64_t tile = align_up(G * cb * HW * elem, 16);
  s.tile_x = 0;
  s.tile_dy = tile;
  int64_t at = backward ? 2 * tile : tile;
  const int64_t ws = wstride(cb);
  s.w_a = at;
  if (staged) at += align_up((two_layer ? rd * ws : (backward ? C * ws : cb * C)) * elem, 16);
  s.w_b = at;
  if (staged) at += align_up(two_layer ? cb * rd * elem : 0, 16);
  s.own = at;
  at += align_up(4 * G * cb * 4, 16);
  s.part = at;
  const int64_t part_len = G * (two_layer ? rd : cb);
  at += align_up((part_len > part_min ? part_len : part_min) * 4, 16);
  s.vec = at;
  at += align_up(G * (two_layer ? rd : C) * 4, 16);
  s.red = at;
  at += 2 * kFusedThreads * 4;
  s.total = at;
  return s;
}

__host__ __device__ inline int64_t eca_part(const SeFused& p) { return p.eca ? p.rd + 1 : 0; }

// ---- the pieces both kernels share ----

// Where the block's slice of sample g sits in global memory and in the tile.
// Tile offsets are 32-bit (a tile fits in a block's shared memory), global
// ones 64-bit.
template <bool CL>
struct Slice {
  int64_t C, c0, n0;
  int HW, cb, cbn;
  // Packs of V elements in the slice of one sample.
  __device__ __forceinline__ int packs(int V) const { return cbn * HW / V; }
  // Pack i of sample g: its global and tile element offsets, and the local
  // channel and pixel of its first element.
  __device__ __forceinline__ void at(int g, int i, int V, int64_t& glob, int& loc, int& c, int& hw) const {
    if constexpr (!CL) {
      const int e = i * V;
      glob = ((n0 + g) * C + c0) * HW + e;
      loc = g * cb * HW + e;
      c = e / HW;
      hw = e - c * HW;
    } else {
      const int per_row = cbn / V;
      hw = i / per_row;
      c = (i - hw * per_row) * V;
      glob = ((n0 + g) * HW + hw) * C + c0 + c;
      loc = (g * HW + hw) * cb + c;
    }
  }
  // (c, hw) of the element after (c, hw) in the tile's order.
  __device__ __forceinline__ void next(int& c, int& hw) const {
    if constexpr (CL) {
      ++c;
    } else if (++hw == HW) {
      hw = 0;
      ++c;
    }
  }
  // The tile offset of (sample g, local channel c, pixel hw).
  __device__ __forceinline__ int elem(int g, int c, int hw) const {
    return CL ? (g * HW + hw) * cb + c : (g * cb + c) * HW + hw;
  }
};

// The slice of block `rank` of the cluster blockIdx.y.
template <bool CL>
__device__ __forceinline__ Slice<CL> block_slice(const SeFused& p, int rank) {
  Slice<CL> sl;
  sl.C = p.C;
  sl.c0 = rank * p.cb;
  sl.n0 = static_cast<int64_t>(blockIdx.y) * p.group;
  sl.HW = static_cast<int>(p.HW);
  sl.cb = static_cast<int>(p.cb);
  sl.cbn = static_cast<int>(max(int64_t{0}, min(p.cb, p.C - sl.c0)));
  return sl;
}

// Starts copying the block's slices of G samples of src into the tile:
// 16-byte asynchronous copies when V > 1 (the plan checked alignment), else
// plain loads. tiles_ready() waits for every copy the block started.
template <typename T, bool CL, int V>
__device__ void load_tile(const Slice<CL>& sl, int64_t G, const T* __restrict__ src, T* tile) {
  const int per = sl.packs(V), total = static_cast<int>(G) * per;
  for (int i = threadIdx.x; i < total; i += kFusedThreads) {
    const int g = i / per;
    int64_t glob;
    int loc, c, hw;
    sl.at(g, i - g * per, V, glob, loc, c, hw);
    if constexpr (V > 1) {
      __pipeline_memcpy_async(tile + loc, src + glob, sizeof(T) * V);
    } else {
      tile[loc] = src[glob];
    }
  }
  if constexpr (V > 1) __pipeline_commit();
}

// Starts copying a weight slice into shared memory: rows × len elements, row
// r at src + r·stride, to dst + r·dst_stride; 16-byte asynchronous copies
// where the pointers and strides allow, else plain loads.
template <typename T>
__device__ void stage(T* dst, int64_t dst_stride, const T* __restrict__ src, int64_t stride, int64_t rows,
                      int64_t len) {
  constexpr int V = kVec<T>;
  const bool vec = reinterpret_cast<uintptr_t>(src) % 16 == 0 && len % V == 0 && stride % V == 0 &&
                   dst_stride % V == 0;
  if (vec) {
    const int64_t per = len / V, total = rows * per;
    for (int64_t i = threadIdx.x; i < total; i += kFusedThreads) {
      const int64_t r = i / per, j = (i - r * per) * V;
      __pipeline_memcpy_async(dst + r * dst_stride + j, src + r * stride + j, 16);
    }
    __pipeline_commit();
  } else {
    for (int64_t i = threadIdx.x; i < rows * len; i += kFusedThreads) {
      const int64_t r = i / len, j = i - r * len;
      dst[r * dst_stride + j] = src[r * stride + j];
    }
  }
}

// A block's slice of a weight matrix, element (r, i) at g[r·g_stride + i]
// in global memory, or, staged (s not null), at s[r·s_stride + i] in shared
// memory, where slice() started copying it (rows × len of it).
template <typename T>
struct WSlice {
  const T* s;
  int64_t s_stride;
  const T* g;
  int64_t g_stride;
  __device__ __forceinline__ float operator()(int64_t r, int64_t i) const {
    return to_acc(s != nullptr ? s[r * s_stride + i] : g[r * g_stride + i]);
  }
};

template <typename T>
__device__ WSlice<T> slice(bool staged, T* smem, int64_t s_stride, const T* g, int64_t g_stride, int64_t rows,
                           int64_t len) {
  if (staged) stage(smem, s_stride, g, g_stride, rows, len);
  return WSlice<T>{staged ? smem : nullptr, s_stride, g, g_stride};
}

// Waits for every copy the block started (tiles and weights) and makes them
// visible to the whole block.
[[maybe_unused]] __device__ __forceinline__ void tiles_ready() {
  __pipeline_wait_prior(0);
  __syncthreads();
}

// Per (g, c) of the block, with items = G·cbn: reduces over H·W the values
// f(g, c, hw) read from the tiles into (sum, ext) — ext a max (forward) or a
// count (backward, of x == ref(g, c)) — and hands each result to done(g, c,
// sum, ext). Every item is split over `parts` threads (consecutive threads
// take consecutive pixels in NCHW, consecutive channels in channels_last, so
// the tile reads are conflict-free), whose partials are combined in order.
template <bool CL, bool BWD, typename Val, typename Ref, typename Done>
__device__ void reduce_tile(const Slice<CL>& sl, int64_t G, bool with_max, float* red, Val val, Ref ref, Done done) {
  const int64_t items = G * sl.cbn;
  for (int64_t first = 0; first < items; first += kFusedThreads) {
    const int64_t n_items = min(items - first, int64_t{kFusedThreads});
    const int64_t parts = max(int64_t{1}, min(int64_t{sl.HW}, int64_t{kFusedThreads} / n_items));
    const int64_t t = threadIdx.x;
    if (t < n_items * parts) {
      const int64_t item = first + (CL ? t % n_items : t / parts);
      const int64_t part = CL ? t / n_items : t % parts;
      const int64_t g = item / sl.cbn, c = item - g * sl.cbn;
      const float r = (BWD && with_max) ? ref(g, c) : 0.f;
      float sum = 0.f, ext = BWD ? 0.f : neg_inf<float>();
      for (int64_t hw = part; hw < sl.HW; hw += parts) {
        float xv, dv;
        val(g, c, hw, xv, dv);
        if constexpr (BWD) {
          sum += dv * xv;
          ext += xv == r ? 1.f : 0.f;
        } else {
          sum += xv;
          ext = nan_max(ext, xv);
        }
      }
      red[part * n_items + (item - first)] = sum;
      red[kFusedThreads + part * n_items + (item - first)] = ext;
    }
    __syncthreads();
    if (t < n_items) {
      float sum = red[t], ext = red[kFusedThreads + t];
      for (int64_t q = 1; q < parts; ++q) {
        sum += red[q * n_items + t];
        const float e = red[kFusedThreads + q * n_items + t];
        ext = BWD ? ext + e : nan_max(ext, e);
      }
      const int64_t item = first + t, g = item / sl.cbn;
      done(g, item - g * sl.cbn, sum, ext);
    }
    __syncthreads();
  }
}

// out[g][j] = Σ_{i < len} w(j, i) · v[g][i] for j < rows, g < G: a warp per
// j, lanes over i (so w(j, ·) should be contiguous in i), a butterfly over the
// warp; store(g, j, value) gets each result.
template <typename W, typename Store>
__device__ void warp_rows(int64_t rows, int64_t len, int64_t G, const float* v, int64_t v_stride, W w, Store store) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t j = warp; j < rows; j += kWarps) {
    float acc[kMaxFusedGroup];
#pragma unroll
    for (int g = 0; g < kMaxFusedGroup; ++g) acc[g] = 0.f;
    for (int64_t i = lane; i < len; i += 32) {
      const float wi = w(j, i);
#pragma unroll
      for (int g = 0; g < kMaxFusedGroup; ++g)
        if (g < G) acc[g] += wi * v[g * v_stride + i];
    }
#pragma unroll
    for (int g = 0; g < kMaxFusedGroup; ++g) {
      if (g >= G) break;
      float a = acc[g];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) a += __shfl_xor_sync(0xffffffffu, a, off);
      if (lane == 0) store(g, j, a);
    }
  }
}

// out[g][j] = Σ_{i < len} w(i, j) · v[g][i] for j < cols: a thread per j
// (so w(·, j) should be contiguous in j), the i split over as many threads as
// the block has to spare, partials combined in order through red.
template <typename W, typename Store>
__device__ void thread_cols(int64_t cols, int64_t len, int64_t G, const float* v, int64_t v_stride, float* red, W w,
                            Store store) {
  for (int64_t first = 0; first < cols; first += kFusedThreads) {
    const int64_t n_cols = min(cols - first, int64_t{kFusedThreads});
    const int64_t parts = max(int64_t{1}, min(len, int64_t{kFusedThreads} / n_cols));
    // red holds 2·kFusedThreads floats: parts·n_cols partials for each of up
    // to two samples at a time.
    for (int64_t g0 = 0; g0 < G; g0 += 2) {
      const int64_t t = threadIdx.x;
      if (t < n_cols * parts) {
        const int64_t j = first + t % n_cols, q = t / n_cols;
        float a0 = 0.f, a1 = 0.f;
        for (int64_t i = q; i < len; i += parts) {
          const float wi = w(i, j);
          a0 += wi * v[g0 * v_stride + i];
          if (g0 + 1 < G) a1 += wi * v[(g0 + 1) * v_stride + i];
        }
        red[t] = a0;
        red[kFusedThreads + t] = a1;
      }
      __syncthreads();
      if (t < n_cols) {
        float a0 = red[t], a1 = red[kFusedThreads + t];
        for (int64_t q = 1; q < parts; ++q) {
          a0 += red[q * n_cols + t];
          a1 += red[kFusedThreads + q * n_cols + t];
        }
        store(g0, first + t, a0);
        if (g0 + 1 < G) store(g0 + 1, first + t, a1);
      }
      __syncthreads();
    }
  }
}

// Every block's own values (own[g·cb + c], c < cbn) gathered into
// vec[g·C + channel] in every block of the cluster, through part (which the
// other blocks read). Two cluster barriers: after the copy into part, and
// after the reads (so part may be reused, and no block exits while another
// still reads its shared memory).
// (A template over the cluster type: cg::cluster_group exists only when
// compiling for sm_90 and newer, where the kernels that call it have bodies.)
template <typename Cluster>
__device__ void gather_cluster(Cluster& cluster, const float* own, float* part, float* vec, int64_t G, int64_t cb,
                               int64_t cbn, int64_t C) {
  for (int64_t idx = threadIdx.x; idx < G * cb; idx += kFusedThreads) {
    if (idx % cb < cbn) part[idx] = own[idx];
  }
  cluster.sync();
  for (int64_t idx = threadIdx.x; idx < G * C; idx += kFusedThreads) {
    const int64_t g = idx / C, c = idx - g * C;
    const int r = static_cast<int>(c / cb);
    vec[idx] = cluster.map_shared_rank(part, r)[g * cb + (c - r * cb)];
  }
  cluster.sync();
}

// Writes tile-shaped output, V elements per load and store: out = f(g, c,
// a, b) of the elements a of tile ta and b of tile tb (0 without one).
template <typename T, bool CL, int V, typename F>
__device__ void store_tile(const Slice<CL>& sl, int64_t G, T* __restrict__ out, const T* ta, const T* tb, F f) {
  const int per = sl.packs(V), total = static_cast<int>(G) * per;
  for (int i = threadIdx.x; i < total; i += kFusedThreads) {
    const int g = i / per;
    int64_t glob;
    int loc, c, hw;
    sl.at(g, i - g * per, V, glob, loc, c, hw);
    const Pack<T, V> a = load_pack<T, V>(ta + loc);
    Pack<T, V> b;
    if (tb != nullptr) b = load_pack<T, V>(tb + loc);
    Pack<T, V> r;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      r.v[k] = from_acc<T>(f(g, c, to_acc(a.v[k]), tb != nullptr ? to_acc(b.v[k]) : 0.f));
      sl.next(c, hw);
    }
    store_pack<T, V>(out + glob, r);
  }
}

// ---- forward ----

template <typename T, bool CL, int V>
__global__ void __launch_bounds__(kFusedThreads, 2) se_fused_forward_kernel(const SeFused p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) unsigned char smem_raw[];
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  const int K = p.cluster;
  const int64_t C = p.C, HW = p.HW, rd = p.rd;
  const Slice<CL> sl = block_slice<CL>(p, rank);
  const int64_t G = min(p.group, p.N - sl.n0);
  const Smem lay = smem_layout(p.group, p.cb, HW, C, rd, p.two_layer, sizeof(T), false, p.staged, eca_part(p));
  T* tile = reinterpret_cast<T*>(smem_raw + lay.tile_x);
  float* own = reinterpret_cast<float*>(smem_raw + lay.own);  // [0]: pooled, [1]: gate
  float* part = reinterpret_cast<float*>(smem_raw + lay.part);
  float* vec = reinterpret_cast<float*>(smem_raw + lay.vec);
  float* red = reinterpret_cast<float*>(smem_raw + lay.red);
  const int64_t ocb = p.group * p.cb;  // stride between the own arrays
  const T* w1 = static_cast<const T*>(p.w1);
  const T* b1 = static_cast<const T*>(p.b1);
  const T* w2 = static_cast<const T*>(p.w2);
  const T* b2 = static_cast<const T*>(p.b2);
  float* pooled = static_cast<float*>(p.pooled);
  float* maxv = static_cast<float*>(p.maxv);

  const int64_t ws = wstride(p.cb);
  T* sw1 = reinterpret_cast<T*>(smem_raw + lay.w_a);
  T* sw2 = reinterpret_cast<T*>(smem_raw + lay.w_b);
  load_tile<T, CL, V>(sl, G, static_cast<const T*>(p.x), tile);
  // W1[:, own] and W2[own, :], or for one layer W1[own, :].
  const WSlice<T> W1 = p.eca         ? WSlice<T>{nullptr, 0, w1, 0}  // ECA reads its k taps directly
                       : p.two_layer ? slice(p.staged, sw1, ws, w1 + sl.c0, C, rd, sl.cbn)
                                     : slice(p.staged, sw1, C, w1 + sl.c0 * C, C, sl.cbn, C);
  const WSlice<T> W2 = p.two_layer ? slice(p.staged, sw2, rd, w2 + sl.c0 * rd, rd, sl.cbn, rd) : W1;
  tiles_ready();

  // Pooled values of the own channels, to global (saved for the backward) and to own[0].
  reduce_tile<CL, false>(
      sl, G, p.with_max, red,
      [&](int64_t g, int64_t c, int64_t hw, float& xv, float& dv) { xv = to_acc(tile[sl.elem(g, c, hw)]); dv = 0.f; },
      [](int64_t, int64_t) { return 0.f; },
      [&](int64_t g, int64_t c, float sum, float mx) {
        const float mean = sum / static_cast<float>(HW);
        const float v = p.with_max ? 0.5f * mean + 0.5f * mx : mean;
        const int64_t nc = (sl.n0 + g) * C + sl.c0 + c;
        pooled[nc] = v;
        if (p.with_max) maxv[nc] = mx;
        own[g * p.cb + c] = v;
      });

  const float* own_pooled = own;
  float* own_gate = own + ocb;
  if (p.two_layer) {
    // fc1 over the own channels: part[g][j], then the cluster's sum.
    warp_rows(rd, sl.cbn, G, own_pooled, p.cb,
              [&](int64_t j, int64_t i) { return W1(j, i); },
              [&](int64_t g, int64_t j, float v) { part[g * rd + j] = v; });
    cluster.sync();
    for (int64_t idx = threadIdx.x; idx < G * rd; idx += kFusedThreads) {
      float h = 0.f;
      for (int r = 0; r < K; ++r) h += cluster.map_shared_rank(part, r)[idx];
      const int64_t g = idx / rd, j = idx - g * rd;
      if (b1 != nullptr) h += ld(b1, j);
      if (rank == 0) static_cast<float*>(p.hidden)[(sl.n0 + g) * rd + j] = h;
      vec[idx] = act_fwd(p.act, h);
    }
    cluster.sync();  // every block has read the partials it needs; part may be left
    // fc2, own rows.
    warp_rows(sl.cbn, rd, G, vec, rd,
              [&](int64_t c, int64_t j) { return W2(c, j); },
              [&](int64_t g, int64_t c, float z) {
                if (b2 != nullptr) z += ld(b2, sl.c0 + c);
                static_cast<float*>(p.logits)[(sl.n0 + g) * C + sl.c0 + c] = z;
                own_gate[g * p.cb + c] = gate_fwd(p.gate, z);
              });
  } else {
    // One layer [C, C], or ECA's conv: gather every block's pooled values,
    // then own rows / own channels.
    gather_cluster(cluster, own_pooled, part, vec, G, p.cb, sl.cbn, C);
    if (p.eca) {
      const int64_t k = rd, pad = (k - 1) / 2;
      for (int64_t idx = threadIdx.x; idx < G * sl.cbn; idx += kFusedThreads) {
        const int64_t g = idx / sl.cbn, c = idx - g * sl.cbn;
        float z = 0.f;
        for (int64_t j = 0; j < k; ++j) z += ld(w1, j) * padded(vec + g * C, C, sl.c0 + c + j - pad, p.circular);
        if (b1 != nullptr) z += ld(b1, 0);
        static_cast<float*>(p.logits)[(sl.n0 + g) * C + sl.c0 + c] = z;
        own_gate[g * p.cb + c] = gate_fwd(p.gate, z);
      }
    } else {
      warp_rows(sl.cbn, C, G, vec, C,
                [&](int64_t c, int64_t i) { return W1(c, i); },
                [&](int64_t g, int64_t c, float z) {
                  if (b1 != nullptr) z += ld(b1, sl.c0 + c);
                  static_cast<float*>(p.logits)[(sl.n0 + g) * C + sl.c0 + c] = z;
                  own_gate[g * p.cb + c] = gate_fwd(p.gate, z);
                });
    }
  }
  __syncthreads();

  store_tile<T, CL, V>(sl, G, static_cast<T*>(p.y), tile, nullptr,
                       [&](int64_t g, int64_t c, float xv, float) { return xv * own_gate[g * p.cb + c]; });
#elif defined(__CUDA_ARCH__)
  __trap();  // no cluster support in this architecture's code: se_fused_plan never launches it
#endif
}

// ---- backward ----

template <typename T, bool CL, int V>
__global__ void __launch_bounds__(kFusedThreads, 2) se_fused_backward_kernel(const SeFused p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) unsigned char smem_raw[];
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  const int K = p.cluster;
  const int64_t C = p.C, HW = p.HW, rd = p.rd;
  const Slice<CL> sl = block_slice<CL>(p, rank);
  const int64_t G = min(p.group, p.N - sl.n0);
  const int64_t grp = blockIdx.y;
  const Smem lay = smem_layout(p.group, p.cb, HW, C, rd, p.two_layer, sizeof(T), true, p.staged, eca_part(p));
  T* tx = reinterpret_cast<T*>(smem_raw + lay.tile_x);
  T* tdy = reinterpret_cast<T*>(smem_raw + lay.tile_dy);
  float* own = reinterpret_cast<float*>(smem_raw + lay.own);
  float* part = reinterpret_cast<float*>(smem_raw + lay.part);
  float* vec = reinterpret_cast<float*>(smem_raw + lay.vec);
  float* red = reinterpret_cast<float*>(smem_raw + lay.red);
  const int64_t ocb = p.group * p.cb;
  float* own_gate = own;            // g
  float* own_dz = own + ocb;        // dL/dlogits
  float* own_pool = own + 2 * ocb;  // the saved pooled values, then dL/dpooled
  float* own_cnt = own + 3 * ocb;   // #{x == max}
  const T* w1 = static_cast<const T*>(p.w1);
  const T* w2 = static_cast<const T*>(p.w2);
  const float* pooled = static_cast<const float*>(p.saved_pooled);
  const float* maxv = static_cast<const float*>(p.saved_maxv);
  const float* hidden = static_cast<const float*>(p.saved_hidden);
  const float* logits = static_cast<const float*>(p.saved_logits);
  auto nc_of = [&](int64_t g, int64_t c) { return (sl.n0 + g) * C + sl.c0 + c; };
  // A weight gradient's element: the final value in T (one group), or this
  // group's partial in float.
  auto put = [&](void* dst, int64_t count, int64_t i, float v) {
    if (p.groups == 1) {
      static_cast<T*>(dst)[i] = from_acc<T>(v);
    } else {
      static_cast<float*>(dst)[grp * count + i] = v;
    }
  };

  const int64_t ws = wstride(p.cb);
  T* sw1 = reinterpret_cast<T*>(smem_raw + lay.w_a);
  T* sw2 = reinterpret_cast<T*>(smem_raw + lay.w_b);
  load_tile<T, CL, V>(sl, G, static_cast<const T*>(p.dy), tdy);
  load_tile<T, CL, V>(sl, G, static_cast<const T*>(p.x), tx);
  // W1[:, own] ([rd, own] or, for one layer, [C, own]) and W2[own, :].
  const WSlice<T> W1 = p.eca ? WSlice<T>{nullptr, 0, w1, 0}
                             : slice(p.staged, sw1, ws, w1 + sl.c0, C, p.two_layer ? rd : C, sl.cbn);
  const WSlice<T> W2 = p.two_layer ? slice(p.staged, sw2, rd, w2 + sl.c0 * rd, rd, sl.cbn, rd) : W1;
  tiles_ready();

  reduce_tile<CL, true>(
      sl, G, p.with_max, red,
      [&](int64_t g, int64_t c, int64_t hw, float& xv, float& dv) {
        const int64_t e = sl.elem(g, c, hw);
        xv = to_acc(tx[e]);
        dv = to_acc(tdy[e]);
      },
      [&](int64_t g, int64_t c) { return maxv[nc_of(g, c)]; },
      [&](int64_t g, int64_t c, float s, float cnt) {
        const int64_t nc = nc_of(g, c), o = g * p.cb + c;
        const float z = logits[nc];
        const float gv = gate_fwd(p.gate, z);
        own_gate[o] = gv;
        own_dz[o] = gate_bwd(p.gate, s, z, gv);
        own_pool[o] = pooled[nc];
        own_cnt[o] = cnt;
      });

  if (p.two_layer) {
    // act(hidden) of the group, for dW2.
    for (int64_t idx = threadIdx.x; idx < G * rd; idx += kFusedThreads) {
      const int64_t g = idx / rd;
      vec[idx] = act_fwd(p.act, hidden[(sl.n0 + g) * rd + (idx - g * rd)]);
    }
    __syncthreads();
    // dW2 (own rows) and db2 (own entries): sums over the group's samples.
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t c = warp; c < sl.cbn; c += kWarps) {
      for (int64_t j = lane; j < rd; j += 32) {
        float a = 0.f;
        for (int64_t g = 0; g < G; ++g) a += own_dz[g * p.cb + c] * vec[g * rd + j];
        put(p.dw2, C * rd, (sl.c0 + c) * rd + j, a);
      }
      if (p.db2 != nullptr && lane == 0) {
        float a = 0.f;
        for (int64_t g = 0; g < G; ++g) a += own_dz[g * p.cb + c];
        put(p.db2, C, sl.c0 + c, a);
      }
    }
    // dh partial over the own channels: part[g][j] = Σ_c dz[g][c]·W2[c, j].
    thread_cols(rd, sl.cbn, G, own_dz, p.cb, red,
                [&](int64_t c, int64_t j) { return W2(c, j); },
                [&](int64_t g, int64_t j, float v) { part[g * rd + j] = v; });
    cluster.sync();
    // vec[g][j] = dL/dh (pre-activation): the cluster's sum in rank order.
    for (int64_t idx = threadIdx.x; idx < G * rd; idx += kFusedThreads) {
      float dh = 0.f;
      for (int r = 0; r < K; ++r) dh += cluster.map_shared_rank(part, r)[idx];
      const int64_t g = idx / rd;
      vec[idx] = act_bwd(p.act, dh, hidden[(sl.n0 + g) * rd + (idx - g * rd)]);
    }
    cluster.sync();
    // db1 (block 0) and dW1 (own columns).
    if (rank == 0 && p.db1 != nullptr) {
      for (int64_t j = threadIdx.x; j < rd; j += kFusedThreads) {
        float a = 0.f;
        for (int64_t g = 0; g < G; ++g) a += vec[g * rd + j];
        put(p.db1, rd, j, a);
      }
    }
    for (int64_t idx = threadIdx.x; idx < rd * sl.cbn; idx += kFusedThreads) {
      const int64_t j = idx / sl.cbn, c = idx - j * sl.cbn;
      float a = 0.f;
      for (int64_t g = 0; g < G; ++g) a += vec[g * rd + j] * own_pool[g * p.cb + c];
      put(p.dw1, rd * C, j * C + sl.c0 + c, a);
    }
    __syncthreads();  // own_pool is overwritten with dL/dpooled next
    // dL/dpooled of the own channels: Σ_j d1[g][j]·W1[j, c].
    thread_cols(sl.cbn, rd, G, vec, rd, red,
                [&](int64_t j, int64_t c) { return W1(j, c); },
                [&](int64_t g, int64_t c, float v) { own_pool[g * p.cb + c] = v; });
  } else if (p.eca) {
    // ECA: dp of the own channels, the transposed conv of the gathered dz.
    gather_cluster(cluster, own_dz, part, vec, G, p.cb, sl.cbn, C);
    const int64_t k = rd, pad = (k - 1) / 2;
    for (int64_t idx = threadIdx.x; idx < G * sl.cbn; idx += kFusedThreads) {
      const int64_t g = idx / sl.cbn, c = idx - g * sl.cbn;
      float dp = 0.f;
      for (int64_t j = 0; j < k; ++j) dp += ld(w1, j) * padded(vec + g * C, C, sl.c0 + c - j + pad, p.circular);
      own_pool[g * p.cb + c] = dp;
    }
    // dw[j] = Σ_{g, c} P(g, c + j - pad)·dz[g][c] and db = Σ dz (item j = k)
    // over the own channels: item j over `parts` threads, combined in order.
    const int64_t items = k + 1, parts = kFusedThreads / items, n = G * sl.cbn;
    const int64_t t = threadIdx.x;
    if (t < items * parts) {
      const int64_t j = t % items, q = t / items;
      float a = 0.f;
      for (int64_t idx = q; idx < n; idx += parts) {
        const int64_t g = idx / sl.cbn, c = idx - g * sl.cbn;
        const float dz = own_dz[g * p.cb + c];
        a += j < k ? padded(pooled + (sl.n0 + g) * C, C, sl.c0 + c + j - pad, p.circular) * dz : dz;
      }
      red[q * items + j] = a;
    }
    __syncthreads();
    if (t < items) {
      float a = red[t];
      for (int64_t q = 1; q < parts; ++q) a += red[q * items + t];
      part[t] = a;  // part is free: gather_cluster's last barrier is behind us
    }
    cluster.sync();
    // The cluster's sum in rank order, by block 0.
    if (rank == 0 && t < items) {
      float a = 0.f;
      for (int r = 0; r < K; ++r) a += cluster.map_shared_rank(part, r)[t];
      if (t < k) {
        put(p.dw1, k, t, a);
      } else if (p.db1 != nullptr) {
        put(p.db1, 1, 0, a);
      }
    }
    cluster.sync();  // block 0 has read every block's partials
  } else {
    // One layer [C, C]: dW1 (own rows) = Σ_g dz[g][c]·pooled[g][·]; db1.
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t c = warp; c < sl.cbn; c += kWarps) {
      for (int64_t i = lane; i < C; i += 32) {
        float a = 0.f;
        for (int64_t g = 0; g < G; ++g) a += own_dz[g * p.cb + c] * pooled[(sl.n0 + g) * C + i];
        put(p.dw1, C * C, (sl.c0 + c) * C + i, a);
      }
      if (p.db1 != nullptr && lane == 0) {
        float a = 0.f;
        for (int64_t g = 0; g < G; ++g) a += own_dz[g * p.cb + c];
        put(p.db1, C, sl.c0 + c, a);
      }
    }
    // dp needs every channel's dz: gather them.
    gather_cluster(cluster, own_dz, part, vec, G, p.cb, sl.cbn, C);
    thread_cols(sl.cbn, C, G, vec, C, red,
                [&](int64_t i, int64_t c) { return W1(i, c); },
                [&](int64_t g, int64_t c, float v) { own_pool[g * p.cb + c] = v; });
  }
  __syncthreads();

  // dx = dy·g + dp/HW (half of it, and half of dp over the tied maxima, with
  // the max term), as input_grad_pass spreads it.
  const float share = (p.with_max ? 0.5f : 1.f) / static_cast<float>(HW);
  store_tile<T, CL, V>(sl, G, static_cast<T*>(p.dx), tdy, p.with_max ? tx : nullptr,
                       [&](int64_t g, int64_t c, float dyv, float xv) {
                         const int64_t o = g * p.cb + c;
                         const float dp = own_pool[o];
                         float d = dyv * own_gate[o] + dp * share;
                         if (p.with_max && xv == maxv[nc_of(g, c)]) d += 0.5f * dp / own_cnt[o];
                         return d;
                       });
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// ---- host: the plan and the launches ----

struct DeviceInfo {
  int device = 0, major = 0, sms = 1;
  int64_t smem_optin = 0;
};

DeviceInfo device_info() {
  static std::array<std::atomic<int>, 64> majors{}, sms{}, optins{};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return {};
  DeviceInfo info;
  info.device = dev;
  // majors[dev] is published last (release), so a reader that sees it (acquire) sees the rest.
  if (dev >= 0 && dev < 64 && majors[dev].load(std::memory_order_acquire) != 0) {
    info.major = majors[dev].load(std::memory_order_relaxed);
    info.sms = sms[dev].load(std::memory_order_relaxed);
    info.smem_optin = optins[dev].load(std::memory_order_relaxed);
    return info;
  }
  int optin = 0;
  if (cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    return {};
  }
  info.smem_optin = optin;
  if (dev >= 0 && dev < 64) {
    sms[dev].store(info.sms, std::memory_order_relaxed);
    optins[dev].store(optin, std::memory_order_relaxed);
    majors[dev].store(info.major, std::memory_order_release);
  }
  return info;
}

template <typename T>
using KernelPtr = void (*)(SeFused);

template <typename T, bool BWD>
KernelPtr<T> kernel_for(bool cl, bool vec) {
  if constexpr (BWD) {
    if (cl) return vec ? se_fused_backward_kernel<T, true, kVec<T>> : se_fused_backward_kernel<T, true, 1>;
    return vec ? se_fused_backward_kernel<T, false, kVec<T>> : se_fused_backward_kernel<T, false, 1>;
  } else {
    if (cl) return vec ? se_fused_forward_kernel<T, true, kVec<T>> : se_fused_forward_kernel<T, true, 1>;
    return vec ? se_fused_forward_kernel<T, false, kVec<T>> : se_fused_forward_kernel<T, false, 1>;
  }
}

cudaLaunchConfig_t config_of(const SeFused& p, cudaStream_t stream, cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(p.cluster), static_cast<unsigned>(p.groups), 1);
  cfg.blockDim = dim3(kFusedThreads, 1, 1);
  cfg.dynamicSmemBytes = static_cast<size_t>(p.smem);
  cfg.stream = stream;
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(p.cluster);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

// Why runnable() refused a plan on a runtime call during this thread's
// latest se_fused_plan (empty when none was), for the error a forced single
// launch raises right after: not a refusal of some earlier, other shape's.
thread_local std::string last_refusal;

std::string refusal_text(const char* call, cudaError_t err, const SeFused& p, const cudaFuncAttributes& attrs) {
  return std::string(call) + ": " + cudaGetErrorString(err) + " (cluster " + std::to_string(p.cluster) + ", " +
         std::to_string(p.smem) + " B dynamic + " + std::to_string(attrs.sharedSizeBytes) +
         " B static shared memory, ptx " + std::to_string(attrs.ptxVersion) + ")";
}

// Whether the device can run the kernel with this cluster size and shared
// memory: the first time, the function's attributes are raised (dynamic
// shared memory up to the device's opt-in limit less the kernel's static
// shared memory, which the runtime counts against the same limit; clusters
// of 16) and the occupancy calculator asked; answers are kept per (kernel,
// device, cluster, bytes), so a launch makes no extra runtime calls (and
// none during graph capture after the first eager call). The function
// attributes are raised before the key's answer is known: harmless for the
// plans it refuses. A refusal by a failed runtime call is kept with the
// answer, noted for this thread's plan (se_fused_refusal), and its error cleared.
template <typename T>
bool runnable(KernelPtr<T> k, const SeFused& p, const DeviceInfo& dev) {
  static std::mutex mu;
  // (kernel, device, cluster, bytes) → (runnable, why not when a runtime call said no)
  static std::map<std::tuple<const void*, int, int, int64_t>, std::pair<bool, std::string>> known;
  const auto key = std::make_tuple(reinterpret_cast<const void*>(k), dev.device, p.cluster, p.smem);
  const std::lock_guard<std::mutex> lock(mu);
  const auto it = known.find(key);
  if (it != known.end()) {
    if (!it->second.second.empty()) last_refusal = it->second.second;
    return it->second.first;
  }
  cudaFuncAttributes attrs{};
  bool ok = false;
  std::string why;
  auto call = [&](const char* what, cudaError_t err) {
    if (err != cudaSuccess) {
      why = refusal_text(what, err, p, attrs);
      cudaGetLastError();  // clear the error the refusal left
    }
    return err == cudaSuccess;
  };
  if (call("cudaFuncGetAttributes", cudaFuncGetAttributes(&attrs, k))) {
    const int64_t dynamic = dev.smem_optin - static_cast<int64_t>(attrs.sharedSizeBytes);
    // The code the device runs must be sm_90's or newer (a build without it
    // would JIT older PTX, whose kernel body is empty: a trap), and the plan's
    // bytes must fit beside the static shared memory.
    ok = attrs.ptxVersion >= 90 && p.smem <= dynamic &&
         call("cudaFuncSetAttribute(MaxDynamicSharedMemorySize)",
              cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dynamic))) &&
         (p.cluster <= 8 || call("cudaFuncSetAttribute(NonPortableClusterSizeAllowed)",
                                 cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1)));
    if (ok) {
      cudaLaunchAttribute attr[1];
      const cudaLaunchConfig_t cfg = config_of(p, nullptr, attr);
      int clusters = 0;
      ok = call("cudaOccupancyMaxActiveClusters", cudaOccupancyMaxActiveClusters(&clusters, k, &cfg)) &&
           clusters >= 1;
    }
  }
  if (!why.empty()) last_refusal = why;
  known.emplace(key, std::make_pair(ok, why));
  return ok;
}

// The plan for a device with `dev`'s limits; accept(p) has the last word on
// each candidate (whether the device can run it), widest cluster first.
template <typename T, bool BWD, typename Accept>
bool plan_for(SeFused& p, bool force, const DeviceInfo& dev, Accept accept) {
  if (dev.major < 9 || p.N <= 0 || p.C <= 0 || p.HW <= 0) return false;
  const int elem = sizeof(T);
  const int V = kVec<T>;
  // 16-byte copies: every slice start and length a whole number of packs.
  auto vec_ok = [&](int64_t cb) {
    const bool ptrs = vectorizes<T>(V, {p.x, BWD ? p.dy : p.y, BWD ? p.dx : nullptr});
    return ptrs && (p.channels_last ? (p.C % V == 0 && cb % V == 0) : (p.C * p.HW % V == 0 && cb * p.HW % V == 0));
  };
  // ECA: mean pool, k + 1 weight-gradient items over the block's threads.
  if (p.eca && (p.two_layer || p.with_max || p.rd + 1 > kFusedThreads)) return false;
  // The weights each group reads (in T) and, backward, the partial weight
  // gradients it writes (float): the cost of more groups.
  const int64_t wcount = p.eca ? p.rd + 1 : (p.two_layer ? 2 * p.rd * p.C : p.C * p.C);
  const int64_t per_group = wcount * elem + (BWD ? wcount * 4 : 0);
  const int64_t xbytes = p.N * p.C * p.HW * elem;
  const int64_t budget = dev.smem_optin;
  const int max_cluster = 16;
  // The channels per block for K blocks, rounded up to whole packs where that
  // gives 16-byte accesses and still leaves the last block channels.
  auto split = [&](int K, int64_t& cb, bool& vec) {
    cb = (p.C + K - 1) / K;
    vec = vec_ok(cb);
    if (!vec) {
      const int64_t step = p.channels_last ? V : V / std::gcd<int64_t>(p.HW, V);
      const int64_t cbv = align_up(cb, step);
      if ((K - 1) * cbv < p.C && vec_ok(cbv)) cb = cbv, vec = true;
    }
  };
  auto bytes = [&](int64_t G, int64_t cb, bool staged) {
    return smem_layout(G, cb, p.HW, p.C, p.rd, p.two_layer, elem, BWD, staged && !p.eca, eca_part(p)).total;
  };
  // First the plan "auto" takes; forced, then one that ignores the weights' cost.
  for (int relaxed = 0; relaxed <= (force ? 1 : 0); ++relaxed) {
    for (int64_t G = 1; G <= kMaxFusedGroup; ++G) {
      const int64_t groups = (p.N + G - 1) / G;
      if (groups > 65535) continue;
      // Extra traffic from re-reading the weights per group: at most half of
      // x (none of it for one group).
      if (!relaxed && groups > 1 && groups * per_group > xbytes / 2) continue;
      // The weights staged in shared memory with the tiles, or else read
      // from global memory (L2) where they do not fit beside them.
      for (const bool staged : {true, false}) {
        for (int K = 1; K <= max_cluster; K *= 2) {
          int64_t cb;
          bool vec;
          split(K, cb, vec);
          if (bytes(G, cb, staged) > budget) continue;
          const int k_fit = K;
          // Fits. More, smaller blocks (each keeping 8 channels or more, and
          // the 16-byte accesses) while multiprocessors would be idle, or
          // while the grid has a block for every multiprocessor, each too big
          // for two to share one (two per multiprocessor overlap one's loads
          // with the other's reduction, excitation and stores).
          while (K * 2 <= max_cluster && (p.C + K * 2 - 1) / (K * 2) >= 8) {
            const bool idle = K * 2 * groups <= dev.sms;
            const bool crowded = K * groups >= int64_t{dev.sms} && bytes(G, cb, staged) > budget / 2;
            if (!idle && !crowded) break;
            int64_t cb2;
            bool vec2;
            split(K * 2, cb2, vec2);
            if (vec && !vec2) break;
            K *= 2, cb = cb2, vec = vec2;
          }
          // The cluster the device can hold, from the widest down to the
          // first that fitted (no cluster of 16 on some parts and MIG
          // slices); blocks = ceil(C / cb), so none is left without channels.
          for (int Kt = K; Kt >= k_fit; Kt /= 2) {
            split(Kt, cb, vec);
            p.cluster = static_cast<int>((p.C + cb - 1) / cb);
            p.group = G;
            p.groups = groups;
            p.cb = cb;
            p.vec = vec;
            p.staged = !p.eca && (staged || bytes(G, cb, true) <= budget);  // ECA reads its k weights directly
            p.smem = bytes(G, cb, p.staged);
            if (p.smem > budget) continue;  // (a wider split's rounding to whole packs can grow a block)
            if (accept(p)) return true;
          }
          // The device holds none of these clusters: go on with wider ones
          // (smaller blocks), then unstaged weights and other groupings,
          // rather than give up on the fused path.
        }
      }
    }
  }
  return false;
}

template <typename T, bool BWD>
cudaError_t launch_fused(const SeFused& p, cudaStream_t stream) {
  // se_fused_plan ran runnable() for this kernel and plan, which raised its attributes.
  const KernelPtr<T> k = kernel_for<T, BWD>(p.channels_last, p.vec);
  cudaLaunchAttribute attr[1];
  const cudaLaunchConfig_t cfg = config_of(p, stream, attr);
  const cudaError_t err = cudaLaunchKernelEx(&cfg, k, p);
  return err != cudaSuccess ? err : cudaGetLastError();
}

template <typename F>
auto dispatch_fused(DType dt, F&& f) {
  switch (dt) {
    case DType::F32: return f(float{});
    case DType::F16: return f(__half{});
    case DType::BF16: return f(__nv_bfloat16{});
    default: break;
  }
  return f(nullptr);
}

// launch_fused for p's element type (float64 has no single launch).
template <bool BWD>
cudaError_t launch_planned(const SeFused& p, cudaStream_t stream) {
  return dispatch_fused(p.dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, std::nullptr_t>) {
      return cudaErrorInvalidValue;
    } else {
      return launch_fused<T, BWD>(p, stream);
    }
  });
}

// plan_for on `dev`, each candidate checked by runnable() (check) or taken as it is.
bool plan_on(SeFused& p, bool backward, bool force, const DeviceInfo& dev, bool check) {
  if (p.dtype == DType::F64) return false;  // float64 keeps the two-phase path (double accumulation)
  auto plan = [&](auto tag) -> bool {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, std::nullptr_t>) {
      return false;
    } else {
      auto accept = [&](const SeFused& q) {
        if (!check) return true;
        return runnable<T>(backward ? kernel_for<T, true>(q.channels_last, q.vec)
                                    : kernel_for<T, false>(q.channels_last, q.vec),
                           q, dev);
      };
      return backward ? plan_for<T, true>(p, force, dev, accept) : plan_for<T, false>(p, force, dev, accept);
    }
  };
  return dispatch_fused(p.dtype, plan);
}

}  // namespace

bool se_fused_plan(SeFused& p, bool backward, bool force) {
  last_refusal.clear();
  return plan_on(p, backward, force, device_info(), true);
}

bool se_fused_plan_for(SeFused& p, bool backward, bool force, int sms, int64_t smem_optin) {
  DeviceInfo dev;
  dev.major = 9;
  dev.sms = sms;
  dev.smem_optin = smem_optin;
  return plan_on(p, backward, force, dev, false);
}

std::string se_fused_refusal() { return last_refusal; }

cudaError_t se_fused_forward(const SeFused& p, cudaStream_t stream) { return launch_planned<false>(p, stream); }

cudaError_t se_fused_backward(const SeFused& p, cudaStream_t stream) { return launch_planned<true>(p, stream); }

}  // namespace fused_attn::cuda
