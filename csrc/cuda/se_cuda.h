// The SE passes over the big tensors on CUDA: a params struct and one launcher
// per pass. No torch headers: the .cu files that implement these compile with
// the CUDA runtime alone (se_cuda.cpp is the torch glue).
//
//   forward:  se_pool  (read x)        -> excitation on [N, C] (cuBLAS, in the glue) -> se_scale (read x, write y)
//   backward: se_reduce (read dy, x)   -> excitation backward                        -> se_dx (read dy [, x], write dx)
//
// Every launcher returns the launch's cudaError_t (cudaGetLastError), which
// the glue checks; none synchronizes or allocates.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fused_attn::cuda {

enum class DType : int8_t { F32, F64, F16, BF16 };

// One pass over a batch. The big tensors (x, dy, out) are dense with the same
// layout: NCHW (rows of H·W elements, one per (n, c)) or channels_last (rows
// of C elements, one per (n, pixel)). Per-(n, c) arrays are [N, C],
// contiguous, in the accumulation type: double for F64, float otherwise.
// Indices are 64-bit throughout.
struct SePass {
  DType dtype = DType::F32;
  int64_t N = 0, C = 0, HW = 0;
  bool channels_last = false;
  int sm_count = 1;             // multiprocessors of the device, for grid sizes

  // The reductions (se_pool, se_reduce) split H·W into `segments` pieces
  // when N·C alone would leave the GPU idle (few samples or channels, large
  // H·W). Each piece writes a partial to `partials` ([N·C, segments] × 2 in
  // the accumulation type: sums, then max / counts), and a second small
  // kernel combines them in a fixed order: deterministic for a given device.
  // se_reduce_segments says how many; the caller allocates the workspace.
  int64_t segments = 1;
  void* partials = nullptr;

  const void* x = nullptr;
  const void* dy = nullptr;     // backward passes
  void* out = nullptr;          // y (se_scale) or dx (se_dx)

  // Outputs of the reductions (se_pool, se_reduce).
  void* sum = nullptr;          // se_pool: pooled (finalized); se_reduce: Σ_hw dy·x
  void* ext = nullptr;          // se_pool: max over H·W; se_reduce: #{x == maxv}; null unless pool is avg+max
  bool plain_mean = false;      // se_pool with ext: sum gets the mean itself, not 0.5·mean + 0.5·max (CBAM)

  // Per-(n, c) coefficients of the elementwise passes (se_scale, se_dx).
  const void* g = nullptr;      // the gate
  const void* a = nullptr;      // se_dx: added to every element
  const void* b = nullptr;      // se_dx: added where x == maxv
  const void* maxv = nullptr;   // se_reduce / se_dx: the forward's max; null unless avg+max
};

// The number of H·W segments se_pool (backward = false) or se_reduce
// (backward = true) will use for this pass (1: no workspace needed). Depends
// on N, C, HW, the layout, the dtype, sm_count and the pointers' alignment.
int64_t se_reduce_segments(const SePass& p, bool backward);

// pooled = mean_hw x, or 0.5·mean + 0.5·max with ext = max (ext set).
cudaError_t se_pool(const SePass& p, cudaStream_t stream);
// out = x · g.
cudaError_t se_scale(const SePass& p, cudaStream_t stream);
// sum = Σ_hw dy·x; ext = #{hw : x == maxv} (ext set).
cudaError_t se_reduce(const SePass& p, cudaStream_t stream);
// out = dy·g + a (+ b where x == maxv, when maxv is set).
cudaError_t se_dx(const SePass& p, cudaStream_t stream);

}  // namespace fused_attn::cuda
