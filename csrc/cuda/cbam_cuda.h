// The CBAM passes on CUDA: params structs and one launcher per pass. No torch
// headers (cbam_kernels.cu compiles with the CUDA runtime alone; cbam_cuda.cpp
// is the torch glue). x1 = x·g rounded to x's dtype is never stored: every
// pass recomputes it from x and the channel gate g, so the backward sees the
// forward's values and ties.
//
//   forward:  spatial mean, max per (n, c)     se_pool (se_cuda.h)   read x
//             channel mean, max of x1 per pixel cbam_channel_pool    read x
//             y = x1·s                          cbam_rescale          read x, write y
//   backward: Σ_c dy·x1, channel-max ties       cbam_pixel_reduce     read dy, x
//             Σ_hw dx1·x, spatial-max ties      cbam_channel_reduce   read dy, x
//             dx                                cbam_input_grad       read dy, x, write dx
//
// plus the spatial gate on the [N, H·W] maps (cbam_spatial_gate, cbam_spatial_grad).
// Reductions run in an order fixed by the shape (no float atomics), so the
// results are bitwise identical run to run. Every launcher returns the
// launch's cudaError_t; none synchronizes or allocates.
#pragma once

#include "se_cuda.h"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fused_attn::cuda {

// One pass over a batch. x, dy and out are dense with one layout (NCHW or
// channels_last); every small array is contiguous in the accumulation type
// (double for F64, float otherwise): per-(n, c) ones are [N, C], per-pixel
// ones [N, H·W].
struct CbamPass {
  DType dtype = DType::F32;
  int64_t N = 0, C = 0, HW = 0;
  bool channels_last = false;
  int sm_count = 1;

  const void* x = nullptr;
  const void* dy = nullptr;
  void* out = nullptr;          // y or dx

  // per (n, c)
  const void* g = nullptr;      // the channel gate
  const void* mx = nullptr;     // max_hw x (the spatial max pool)
  const void* a = nullptr;      // cbam_input_grad: the spatial mean's share of dL/dx
  const void* b = nullptr;      // cbam_input_grad: the spatial max's share, per tie
  // per pixel
  const void* s = nullptr;      // the spatial gate
  const void* cmax = nullptr;   // max_c x1 (the channel max pool)
  const void* dcmean = nullptr; // dL/d(mean_c x1) / C
  const void* dcmax = nullptr;  // dL/d(max_c x1) / ties

  // Outputs of the reductions: channel_pool: mean_c x1, max_c x1;
  // pixel_reduce: Σ_c dy·x1, #{c : x1 == cmax}; channel_reduce: Σ_hw dx1·x,
  // #{p : x == mx}.
  void* sum = nullptr;
  void* ext = nullptr;

  // The reductions may split their reduced axis into `segments` pieces
  // (cbam_reduce_segments says how many) whose partials ([2, segments, rows]
  // in the accumulation type) a second kernel combines in order.
  int64_t segments = 1;
  void* partials = nullptr;

  // The order the channel pool and the channel reduce walk the batch: from
  // the first sample to the last (as SE's pool and the elementwise passes
  // do), or, reversed, from the last back (segments too), so that the pass
  // starts on what the pass before it read last, which L2 may still hold
  // (cbam_cuda.cpp alternates). Each output is reduced in the same order
  // either way: the same bits. The pixel reduce ignores it.
  bool reverse = false;
};

enum class CbamReduce : int8_t { ChannelPool, PixelReduce, ChannelReduce };

// Segments for a reduction pass (1: no workspace).
int64_t cbam_reduce_segments(const CbamPass& p, CbamReduce kind);
cudaError_t cbam_reduce(const CbamPass& p, CbamReduce kind, cudaStream_t stream);
// y = x1·s.
cudaError_t cbam_rescale(const CbamPass& p, cudaStream_t stream);
// dx = dx1·g + a (+ b where x == mx), dx1 = dy·s + dcmean (+ dcmax where x1 == cmax).
cudaError_t cbam_input_grad(const CbamPass& p, cudaStream_t stream);

// The channel gate g = gate(z) on [count] values of the accumulation type
// (acc F32 or F64), by the function cbam_mlp_forward's fc2 applies (gate_fwd):
// the backward recomputes g from the saved logits with the forward's very
// bits, which the channel max's ties need (x1 = x·g is compared with the
// saved max_c x1). One launch.
cudaError_t cbam_channel_gate(DType acc, int8_t gate, int64_t count, const void* z, void* g, cudaStream_t stream);

// The forward's spatial gate in two launches instead of about twenty small
// ATen ops on [N, H·W] maps (on a GPU those cost more than the passes over x
// at the ResNet-50 sites): the k×k convolution of the maps read straight from
// smap (light: ½mean + ½max formed on the fly), each block also reducing its
// pixels of z to BatchNorm statistics (count, mean, M2 in double: Welford per
// thread, Chan's merge up a fixed tree); then every block merges the blocks'
// statistics in the same fixed order and writes its pixels of
// s = gate((z − mu)·gamma·invstd + beta), each op rounded in the accumulation
// type as the ATen expression of the other backends rounds it. With running
// statistics (batch_stats false) the merge is skipped and the BatchNorm's
// running buffers are read in their own dtype.
//
// The backward (cbam_spatial_grad) in four launches instead of about forty
// ATen ops: s again and the BatchNorm's gradient with each block's sums of
// dbn and dbn·ẑ (in double); every block merges those in one fixed order and
// writes dz (through the batch mean and variance when they were the batch's);
// the maps' gradients through the flipped kernel, already divided as the
// channel pool's backward needs them (dcmean = dmean / C, dcmax = dmax / ties);
// and each sample's weight gradient (one block per (sample, tap), a fixed
// tree), which the caller sums over the samples.
struct CbamSpatial {
  DType acc = DType::F32;       // F32 or F64: every array but stats and partials
  int64_t N = 0, H = 0, W = 0;
  int k = 1;
  bool light = false;           // one map, ½mean + ½max
  bool max_first = false;       // two maps in the order [max, mean] (the official CBAM)
  int8_t gate = 0;              // FusedGate
  bool batch_stats = true;
  double eps = 1e-5;

  const void* smap = nullptr;   // [2, N, H·W]: the channel mean, the channel max of x1
  const void* w = nullptr;      // [maps, k, k] of w_dtype (x's), k at most kCbamMaxSpatialK
  const void* gamma = nullptr;  // scalar of gamma_dtype, or null for 1
  const void* beta = nullptr;   // scalar of beta_dtype, or null for 0
  // The parameters' own dtypes: the kernels convert them to acc as they read
  // them (exactly, or rounded to nearest from float64 to float32, as a
  // conversion launch before would), instead of one launch per parameter.
  DType w_dtype = DType::F32, gamma_dtype = DType::F32, beta_dtype = DType::F32;
  void* partials = nullptr;     // double [3, cbam_spatial_blocks]: forward (batch_stats) and backward

  void* z = nullptr;            // [N, H·W] the convolution (forward: written; backward: read)
  double* stats = nullptr;      // [2] the batch's mean, biased variance (batch_stats; written when not null)
  const void* running_mean = nullptr;  // scalars of running_dtype: the statistics when not batch_stats,
  const void* running_var = nullptr;   // read as they are (no conversion launches before the kernel)
  DType running_dtype = DType::F32;
  void* stats_acc = nullptr;    // [2] stats rounded to the accumulation type (forward: written; backward: read)
  void* s = nullptr;            // [N, H·W] the gate (written)

  // backward only
  int64_t C = 0;                // channels of x (the channel mean's divisor)
  const void* ds = nullptr;     // [N, H·W] dL/ds = Σ_c dy·x1
  const void* ccnt = nullptr;   // [N, H·W] #{c : x1 == max_c x1}
  void* dz = nullptr;           // [N, H·W] dL/dz
  void* dcmean = nullptr;       // [N, H·W] dL/d(mean_c x1) / C
  void* dcmax = nullptr;        // [N, H·W] dL/d(max_c x1) / ties
  void* dgamma = nullptr;       // scalar of dgamma_dtype: the sum rounded to acc, then to that dtype
  void* dbeta = nullptr;        // scalar of dbeta_dtype
  DType dgamma_dtype = DType::F32, dbeta_dtype = DType::F32;
  void* wpart = nullptr;        // [N, maps·k·k] each sample's conv weight gradient
};

// The largest spatial kernel the launchers take (the ops' kMaxSpatialKernel):
// its weights are staged in shared memory.
constexpr int kCbamMaxSpatialK = 15;

// The blocks of the per-pixel launches: the partials cbam_spatial_gate and
// cbam_spatial_grad need (3 and 2 doubles per block).
int64_t cbam_spatial_blocks(const CbamSpatial& sp);
cudaError_t cbam_spatial_gate(const CbamSpatial& sp, cudaStream_t stream);
cudaError_t cbam_spatial_grad(const CbamSpatial& sp, cudaStream_t stream);

}  // namespace fused_attn::cuda
