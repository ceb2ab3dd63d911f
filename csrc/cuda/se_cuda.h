// The SE passes over the big tensors on CUDA: a params struct and one launcher
// per pass. No torch headers: the .cu files that implement these compile with
// the CUDA runtime alone (se_cuda.cpp is the torch glue).
//
//   forward:  se_pool  (read x)        -> excitation on [N, C] (se_excite_forward,   -> se_scale (read x, write y)
//                                         eca_excite_forward)
//   backward: se_reduce (read dy, x)   -> excitation backward (se_excite_backward,      -> se_dx (read dy [, x], write dx)
//                                         eca_excite_backward)
//
// Every launcher returns the launch's cudaError_t (cudaGetLastError), which
// the glue checks; none synchronizes or allocates.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

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
  bool defer_combine = false;   // se_pool: leave the partials for se_excite_forward_pooled to combine

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

  // se_scale / se_dx: walk the tensor from its last element back, so that
  // the pass starts on what the reduction before it read last, which L2 may
  // still hold (channel_gate.cpp's alternate_order). The same bits either way.
  bool reverse = false;
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

// ---- SE's excitation on the two-phase path (se_forward.cu) --------------------
//
// The forward's MLP on the pooled [N, C] rows as kernels of our own, one tiled
// linear kernel launched once per layer, reading the weights in x's dtype:
// fc1 split over C into partial sums (enough blocks to fill the GPU), then
// fc2, which adds fc1's partials in a fixed order with the bias, writes the
// hidden layer, applies the activation, and ends with fc2's bias and the
// gate; effective SE's one [C, C] layer ends with the gate directly. So the
// two-phase SE forward is pool, two excitation launches, rescale (four),
// where cuBLAS through ATen took two GEMMs, the activation, the gate, and in
// float16 / bfloat16 a conversion of each weight. Deterministic: every sum
// has a fixed order for a given device.
struct SeExcite {
  DType dtype = DType::F32;     // x's, and the weights'; the [N, ...] rows are double for F64, float otherwise
  int64_t N = 0, C = 0, rd = 0; // rd == C without fc2 (effective SE)
  bool two_layer = true;
  int8_t act = 0, gate = 0;     // FusedAct, FusedGate
  int sm_count = 1;

  const void* w1 = nullptr;     // [rd, C], contiguous
  const void* b1 = nullptr;     // [rd] or null
  const void* w2 = nullptr;     // [C, rd] (two layers)
  const void* b2 = nullptr;     // [C] or null

  const void* pooled = nullptr; // [N, C]
  void* hidden = nullptr;       // [N, rd]: fc1's output before the activation (two layers)
  void* logits = nullptr;       // [N, C]
  void* g = nullptr;            // [N, C]: gate(logits)
  void* partials = nullptr;     // workspace of se_excite_partials(p) (forward) or
                                // se_excite_backward_workspace(p) (backward) accumulation-type elements

  // Backward: s = Σ_hw dy·x and the forward's saved rows → g (again, for dx),
  // dL/dpooled spread over H·W as se_dx's a and b (a = dL/dpooled / HW, or
  // with the max's tie counts cnt, a = ½·dL/dpooled / HW and b = ½·dL/dpooled
  // / cnt), and the weight gradients [rd, C], [rd], [C, rd], [C] in the
  // weights' dtype (a bias's null without that bias). pooled is read too.
  int64_t HW = 1;
  const void* s = nullptr;            // [N, C]
  const void* saved_logits = nullptr; // [N, C]
  const void* saved_hidden = nullptr; // [N, rd] (two layers)
  const void* cnt = nullptr;          // [N, C], null unless the pool is avg+max
  // With s_segments > 1: se_reduce's partials (run with defer_combine),
  // [N·C, s_segments] of Σ dy·x then of the tie counts, read in place of s
  // and cnt (cnt still non-null with the max): each row's segments added in
  // the reduce's combine order, so the same bits, and its launch saved.
  const void* s_partials = nullptr;
  int64_t s_segments = 1;
  void* a = nullptr;                  // [N, C]
  void* b = nullptr;                  // [N, C] (with cnt)
  void* dw1 = nullptr;
  void* db1 = nullptr;
  void* dw2 = nullptr;
  void* db2 = nullptr;
};

int64_t se_excite_partials(const SeExcite& p);
cudaError_t se_excite_forward(const SeExcite& p, cudaStream_t stream);
// The excitation straight after se_pool(pool) run with defer_combine
// (pool.sum is p.pooled): the pool's partials are combined first when
// pool.segments > 1 (pooled, and maxv with pool.ext), then se_excite_forward's
// layers. With `cooperative`, on a device that has cooperative launches, all
// of it is one launch (SE's forward then takes three: pool, this, rescale):
// the combine, fc1 and fc2 as phases between grid.sync()s, each phase the
// very tiles of its own launch, so the results are the same bits. Otherwise
// (or should the device refuse the launch) the combine's launch and
// se_excite_forward's. Needs C > 0 and rd > 0.
cudaError_t se_excite_forward_pooled(const SeExcite& p, const SePass& pool, bool cooperative, cudaStream_t stream);
// CBAM's channel MLP (cbam_cuda.cpp's two-phase forward) on the same kernel:
// pooled is the two pools' rows [2, N, C] (the spatial means, then the
// maxima); fc1 runs on all 2N rows (light: on ½mean + ½max), fc2 on the sum
// of each sample's two activated hidden rows (the MLP is linear after the
// activation) with its bias once per pool, then the gate: logits and g. Two
// launches where cuBLAS and ATen took five or six. hidden is not written,
// nor g when it is null.
int64_t cbam_mlp_partials(const SeExcite& p, bool light);
cudaError_t cbam_mlp_forward(const SeExcite& p, bool light, cudaStream_t stream);
// The backward (se_backward.cu) as kernels of ours too, in place of cuBLAS
// GEMMs and ATen's elementwise ops: the first layer's backward (dz from s and
// the gate, times W2ᵀ, split over C), the second (through the activation's
// derivative, times W1ᵀ: dL/dpooled), and both weight gradients (each a sum
// over the samples in order, the bias's as a row of ones) in one launch:
// three launches, two for effective SE. Deterministic. N = 0 writes zero
// weight gradients.
int64_t se_excite_backward_workspace(const SeExcite& p);
cudaError_t se_excite_backward(const SeExcite& p, cudaStream_t stream);
// CBAM's channel MLP backward on the same kernels, in place of cuBLAS GEMMs
// and a dozen ATen ops: s = dL/dg [N, C] (the channel reduction's), the
// saved logits, pooled [2, N, C] and the spatial maxima's tie counts cnt →
// the dx pass's a (the means' share per pixel, dL/dmean / HW) and b (the
// maxima's per tie, dL/dmax / cnt), and the weight gradients in the weights'
// dtype (db1 / db2 null without that bias). fc1 is recomputed by the
// forward's own launch, so the pre-activations the activation's derivative
// sees have the forward's bits. Four launches; g is written when set. N = 0
// launches nothing (the glue returns zeros).
int64_t cbam_mlp_backward_workspace(const SeExcite& p, bool light);
cudaError_t cbam_mlp_backward(const SeExcite& p, bool light, cudaStream_t stream);

// ---- ECA's excitation on the two-phase path (se_forward.cu / se_backward.cu) --
//
// The 1-D convolution across channels and the gate on the pooled [N, C] rows,
// and its backward, as kernels of our own instead of ATen ops on windows of
// the rows: the two-phase ECA forward is three launches (pool, this,
// rescale) and its backward four (Σ dy·x, this with the weight gradient's
// sum, dx). The weight gradient sums per-block partials in a fixed order:
// deterministic for a given device.

// The largest kernel size the excitation kernels take (the glue keeps the ATen
// ops for larger k; timm's k chosen from C stays below it for any C < 2^30).
constexpr int kEcaMaxTaps = 15;

struct EcaExcite {
  DType dtype = DType::F32;     // x's, and the weights'; the [N, C] rows are double for F64, float otherwise
  int64_t N = 0, C = 0, k = 1;  // k odd, 1..kEcaMaxTaps
  int64_t HW = 1;               // backward: a = dL/dpooled / HW
  bool circular = false;        // padding: circular, else zeros
  int8_t gate = 0;              // FusedGate
  int sm_count = 1;

  const void* w = nullptr;      // [k], contiguous
  const void* b = nullptr;      // [1], or null without a bias (forward)

  // Forward: pooled → logits = conv(pooled) + b, g = gate(logits).
  const void* pooled = nullptr; // also read by the backward (the weight gradient)
  void* logits = nullptr;
  void* g = nullptr;
  // Forward straight after se_pool run with defer_combine and segments > 1:
  // the pool's partials [N·C, segments] (its sums: ECA pools by the mean),
  // which each thread combines in the pool's own order for every pooled value
  // its window reads (pooled is not read), writing its own to pooled_out:
  // the combine's launch saved, the same bits.
  const void* pool_partials = nullptr;
  int64_t segments = 1;
  void* pooled_out = nullptr;

  // Backward: s = Σ_hw dy·x and the saved logits → g (again), a = dL/dpooled / HW,
  // dw [k] and db [1] (null: no bias) in the weights' dtype, through a
  // workspace of eca_excite_partials(p) accumulation-type elements.
  const void* s = nullptr;
  const void* saved_logits = nullptr;
  void* a = nullptr;
  void* partials = nullptr;
  void* dw = nullptr;
  void* db = nullptr;
};

// Elements (accumulation type) of the backward's workspace.
int64_t eca_excite_partials(const EcaExcite& p);
cudaError_t eca_excite_forward(const EcaExcite& p, cudaStream_t stream);
cudaError_t eca_excite_backward(const EcaExcite& p, cudaStream_t stream);

// ---- weight-gradient partials summed (se_backward.cu) -------------------------
//
// Float partials [groups, len] of up to four weight gradients, each summed
// over its groups in order (deterministic) and written in `dtype`, in one
// launch: the single launch's per-group partials (SE's dw1, db1, dw2, db2;
// ECA's dw, db) and CBAM's per-sample spatial weight gradients, where ATen
// took a sum and, in float16 / bfloat16, a conversion for each.
constexpr int kMaxPartialSums = 4;
struct PartialSums {
  DType dtype = DType::F32;     // the outputs'
  int64_t groups = 1;
  int count = 0;                // gradients
  const float* parts[kMaxPartialSums] = {};
  void* out[kMaxPartialSums] = {};
  int64_t len[kMaxPartialSums] = {};
};
cudaError_t sum_partials(const PartialSums& p, cudaStream_t stream);

// ---- the single-launch SE (se_fused.cu) ------------------------------------
//
// One kernel per direction instead of a pool, the excitation's GEMMs (or
// ECA's 1-D convolution across channels), a gate and a rescale: a thread-block cluster (sm_90+) per group of `group`
// samples keeps its samples' x (and, backward, dy) in shared memory, block r
// holding channels [r·cb, (r+1)·cb), and computes the excitation on chip,
// crossing blocks through distributed shared memory. Forward traffic 2|x|
// (x read once), backward 3|x|, one launch (backward: plus a sum of the
// weight-gradient partials when there is more than one group).

// The activation and gate, in the order of se.h's Act and Gate (the glue
// checks that they agree).
enum class FusedAct : int8_t { ReLU, SiLU, GELU, GELUTanh, HardSwish };
enum class FusedGate : int8_t { Sigmoid, HardSigmoid };

// The most samples one cluster takes.
constexpr int kMaxFusedGroup = 8;

struct SeFused {
  DType dtype = DType::F32;     // F32, F16 or BF16 (float64 stays on the two-phase path)
  int64_t N = 0, C = 0, HW = 0, rd = 0;
  bool channels_last = false;
  bool two_layer = true;        // false: effective SE, one [C, C] layer (rd == C)
  bool with_max = false;        // avg+max pool
  bool eca = false;             // ECA instead: w1 the conv weight [k] (k = rd), b1 its bias [1]
  bool circular = false;        // ECA: circular padding (else zeros)
  int8_t act = 0, gate = 0;     // FusedAct, FusedGate

  // The plan, filled in by se_fused_plan.
  int cluster = 1;              // blocks per cluster (1..16)
  int64_t group = 1;            // samples per cluster
  int64_t groups = 1;           // clusters: ceil(N / group)
  int64_t cb = 1;               // channels per block
  bool vec = false;             // 16-byte accesses
  bool staged = true;          // the block's weight slices copied to shared memory (else read from global)
  int64_t smem = 0;             // dynamic shared memory per block (bytes)

  // Weights, contiguous, in x's dtype; biases may be null.
  const void* w1 = nullptr;     // [rd, C]
  const void* b1 = nullptr;     // [rd]
  const void* w2 = nullptr;     // [C, rd], null for effective SE
  const void* b2 = nullptr;     // [C]

  // Forward: x → y (dense, x's layout), and the saved tensors in float:
  // pooled, logits [N, C]; maxv [N, C] (avg+max only); hidden [N, rd] (two layers only).
  const void* x = nullptr;
  void* y = nullptr;
  void* pooled = nullptr;
  void* maxv = nullptr;
  void* hidden = nullptr;
  void* logits = nullptr;

  // Backward: dy, x → dx, and the weight gradients: in x's dtype when
  // groups == 1, else float partials [groups, ...] for the caller to sum
  // (db1 / db2 null when the bias does not exist). ECA: dw1 [k], db1 [1].
  const void* dy = nullptr;
  void* dx = nullptr;
  const void* saved_pooled = nullptr;
  const void* saved_maxv = nullptr;
  const void* saved_hidden = nullptr;
  const void* saved_logits = nullptr;
  void* dw1 = nullptr;
  void* db1 = nullptr;
  void* dw2 = nullptr;
  void* db2 = nullptr;
};

// Plans the single launch for this shape on the current device (cluster,
// group, cb, vec, smem, groups) and returns whether there is one: the
// device has clusters (sm_90+), a group's slices fit in shared memory, and
// (unless `force`) re-reading the weights once per group costs at most half
// of x's bytes. Needs every field above the plan, and the x / y / dy / dx
// pointers (their alignment picks `vec`).
bool se_fused_plan(SeFused& p, bool backward, bool force);
// The same plan for an sm_90 device with these limits, without asking the
// runtime whether it can run it (no device needed: for tests of the planner).
bool se_fused_plan_for(SeFused& p, bool backward, bool force, int sms, int64_t smem_optin);
// The runtime call that said no while this thread's latest se_fused_plan
// checked whether the device can run a plan (answers are kept, so also a
// kept refusal), its error and the plan's sizes ("" when none did).
std::string se_fused_refusal();
cudaError_t se_fused_forward(const SeFused& p, cudaStream_t stream);
cudaError_t se_fused_backward(const SeFused& p, cudaStream_t stream);

}  // namespace fused_attn::cuda
