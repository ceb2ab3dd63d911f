// The big-tensor passes every channel gate shares on the CPU (SE, ECA):
// pool → excitation on [N, C] → rescale, and Σ dy·x → excitation backward →
// dx, walked in cache-sized chunks of whole samples (se_kernel.cpp). Each op
// supplies only its excitation, per chunk.
#pragma once

#include "../se.h"

#include <cstdint>
#include <functional>

namespace fused_attn::cpu {

// Fills g [nb, C] (the gate of samples n0 .. n0 + nb, accumulation dtype)
// from the pooled rows of those samples, which are final when it is called.
using ExciteForward = std::function<void(int64_t n0, int64_t nb, at::Tensor& g)>;
// From s = Σ_hw dy·x [nb, C] of samples n0 .. n0 + nb: fills g (the gate) and
// dp = dL/dpooled [nb, C].
using ExciteBackward =
    std::function<void(int64_t n0, int64_t nb, const at::Tensor& s, at::Tensor& g, at::Tensor& dp)>;

// y = x · g. pooled [N, C] (acc dtype) receives the pool: mean, or
// 0.5·mean + 0.5·max with maxv [N, C] receiving the max when maxv is not
// empty. y is dense like geo.x. excite_bytes: what one call of the
// excitation reads whatever the chunk's size (its weights), which sets the
// chunk size with the rest of pipeline_chunk's model.
void gate_forward_cpu(const Geometry& geo, at::Tensor& y, at::Tensor& pooled, at::Tensor& maxv,
                      int64_t excite_bytes, const ExciteForward& excite);

// dx = dy·g + dL/dpooled spread over H·W (the max's share over its tied
// maxima when maxv is not empty). dy is dense like geo.x.
void gate_backward_cpu(const Geometry& geo, const at::Tensor& dy, const at::Tensor& maxv, at::Tensor& dx,
                       int64_t excite_bytes, const ExciteBackward& excite);

// Samples per cache-resident chunk when each touches bytes_per_sample of the
// big tensors: as many as fit half the last-level cache (4-32 MiB;
// FUSED_ATTN_CPU_CHUNK_BYTES overrides), at least one.
int64_t chunk_samples(int64_t N, int64_t bytes_per_sample);

// Samples per chunk of the pipelined channel-gate passes, where chunk k's
// writing pass runs beside chunk k + 1's reading pass. What that leaves
// unoverlapped is the first chunk's reading pass (nb · first_read_bytes from
// DRAM) and, per chunk, a fixed cost plus the excitation's excite_bytes:
// about nb·R + (N / nb)·(F + E) in bytes moved, least at
// nb = sqrt(N (F + E) / R). Capped by chunk_samples(N, cached_bytes), and
// evened out over the chunks it takes. (One chunk of the whole batch, which
// the cache alone would allow, leaves nothing to overlap: 1.2-1.4x slower
// forwards at N=8 on a 2-core Xeon VM.) FUSED_ATTN_CPU_CHUNK_SAMPLES
// overrides the whole choice.
int64_t pipeline_chunk(int64_t N, int64_t first_read_bytes, int64_t cached_bytes, int64_t excite_bytes);

// Whether to write `out` (rows of row_elems elements) with streaming stores:
// large outputs (FUSED_ATTN_CPU_STREAM_BYTES, default 8 MiB) whose rows are
// whole cache lines.
bool stream_output(const at::Tensor& out, int64_t row_elems);

// out[n·ldo + m] = Σ_k a[m·K + k]·b[n·K + k] + bias_scale·bias[m] (no bias
// term when bias is null) for m < M, n < nb (a [M, K] and b [nb, K]
// contiguous): the excitation MLPs' products of a few pooled rows with a
// weight matrix, where BLAS GEMMs are slow (2-5x at 2-8 rows, measured with
// MKL). Threads split the rows of a; each element is one thread's
// fixed-order dot product, the bias added last.
template <typename A, typename Tw = A>
void rows_dot(const Tw* a, const A* b, int64_t M, int64_t K, int64_t nb, A* out, int64_t ldo,
              const A* bias = nullptr, A bias_scale = A(1));
// The same with the weights a as a tensor ([M, K], contiguous): in A, or,
// when A is float, in float16 or bfloat16, widened as they load (a model cast
// to 16 bits then reads half the bytes, and converts no copy of its weights
// per call).
template <typename A>
void rows_dot(const at::Tensor& a, const A* b, int64_t M, int64_t K, int64_t nb, A* out, int64_t ldo,
              const A* bias = nullptr, A bias_scale = A(1));

// out = a·b, a·b and aᵀ·b (2-D, accumulation dtype): the excitations' other
// small products (their backward's, and the weight gradients), through
// fixed-order row kernels where BLAS is slow (a·b of at most 16 rows, aᵀ·b
// summing at most 32 terms), BLAS beyond (cbam_kernel.cpp).
void small_mm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b);
at::Tensor small_mm(const at::Tensor& a, const at::Tensor& b);
at::Tensor small_mm_tn(const at::Tensor& a, const at::Tensor& b);

}  // namespace fused_attn::cpu
