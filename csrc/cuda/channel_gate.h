// The big-tensor passes every channel gate shares on CUDA (SE, ECA), as torch
// glue over the kernels of se_forward.cu / se_backward.cu: each launches one
// kernel on the current stream of x's device (the caller holds a device
// guard), checks the launch, and neither synchronizes nor allocates outside
// the caching allocator.
#pragma once

#include "../se.h"
#include "se_cuda.h"

#include <vector>

namespace fused_attn::cuda {

// The kernels' name for a tensor dtype (raises for one they lack), and the
// multiprocessors of a device (read once per device).
DType dtype_of(at::ScalarType t);
int sm_count(int device);

// A kernels' params struct (SePass, CbamPass) with the batch's geometry and x filled in.
template <class Pass>
Pass pass_of(const Geometry& geo) {
  Pass p;
  p.dtype = dtype_of(geo.x.scalar_type());
  p.N = geo.N;
  p.C = geo.C;
  p.HW = geo.HW;
  p.channels_last = geo.cl;
  p.sm_count = sm_count(geo.x.get_device());
  p.x = geo.x.const_data_ptr();
  return p;
}

// SE's and ECA's two CUDA paths: the single launch (se_fused.cu) and the
// two-phase passes below. FUSED_ATTN_CUDA_PATH picks: "auto" (the default:
// the single launch wherever se_fused_plan finds one), "fused" (the single
// launch, or an error saying it has none for this shape), "two_phase".
// plan_single_launch fills f's geometry (f's variant fields — two_layer,
// with_max, act, gate, rd, eca, circular — and its x / y or dy / dx
// pointers set by the caller) and plans it: true when the single launch
// runs this call.
bool plan_single_launch(SeFused& f, const Geometry& geo, bool backward);

// A weight gradient the single launch writes (planned in f): [*shape] in
// like's dtype with one group, else float partials [groups, *shape]; and the
// gradients as the backward op returns them: with more than one group, the
// partials summed over the groups in order and written in like's dtype, all
// of them in one launch (sum_partials); an undefined one as
// weight_grad_or_empty gives it, [0].
at::Tensor single_launch_grad(const SeFused& f, const at::Tensor& like, c10::IntArrayRef shape);
std::vector<at::Tensor> single_launch_grad_results(const SeFused& f, const std::vector<at::Tensor>& grads,
                                                   const at::Tensor& like);

// A tensor's data, or null when it is undefined or empty (absent outputs and
// optional weights).
void* ptr_or_null(at::Tensor& t);
const void* ptr_or_null(const at::Tensor& t);

// pooled [N, C] = mean_hw x, or 0.5·mean + 0.5·max with maxv [N, C] = max
// (when maxv is not empty; with plain_mean, pooled is the mean itself).
// Accumulation dtype.
void pool_pass(const Geometry& geo, at::Tensor& pooled, at::Tensor& maxv, bool plain_mean = false);
// The same pass for an excitation that combines the segments' partials
// itself (se_excite_forward_pooled): its params, and the workspace, to keep
// until that excitation is launched.
struct DeferredPool {
  SePass pass;
  at::Tensor workspace;
};
DeferredPool pool_pass_deferred(const Geometry& geo, at::Tensor& pooled, at::Tensor& maxv);
// FUSED_ATTN_CUDA_EXCITE: "cooperative" (the default: SE's two-phase forward
// excitation, with the pool's combine, in one cooperative launch where the
// device has them) or "launches" (a launch per phase), for A/B runs.
bool cooperative_excite();
// FUSED_ATTN_CUDA_ORDER: "alternate" (the default) or "forward", for A/B
// runs. A pass over x (and dy) that follows another walks it the other way,
// so that it starts on what the pass before it read last, which L2 may still
// hold, rather than on what L2 evicted first: SE's and ECA's two-phase
// elementwise passes (scale_pass, dx_pass) from the last element back, CBAM's
// second pass each way (the channel pool, Σ_hw dx1·x) from the last sample
// back. Where x is larger than L2 (50 MB on an H100) that could keep up to an
// L2's worth of each such pass's reads off DRAM (bench/ab_cbam_order.py
// measures CBAM's); the results are the same bits either way.
bool alternate_order();
// reduce_pass for an excitation backward that reads the segments' partials
// itself (SeExcite / EcaExcite::s_partials): s and cnt are not written when
// the pass has segments.
DeferredPool reduce_pass_deferred(const Geometry& geo, const at::Tensor& dy, const at::Tensor& maxv, at::Tensor& s,
                                  at::Tensor& cnt);
// y = x · g, g [N, C] contiguous in the accumulation dtype; y dense like geo.x.
void scale_pass(const Geometry& geo, const at::Tensor& g, at::Tensor& y);
// s = Σ_hw dy·x, and cnt = #{x == maxv} when maxv is not empty.
void reduce_pass(const Geometry& geo, const at::Tensor& dy, const at::Tensor& maxv, at::Tensor& s, at::Tensor& cnt);
// dx = dy·g + dL/dpooled spread over H·W: dp / HW to every element (half of
// it with a max term, whose other half goes to the cnt tied maxima).
void input_grad_pass(const Geometry& geo, const at::Tensor& dy, const at::Tensor& g, const at::Tensor& dp,
                const at::Tensor& maxv, const at::Tensor& cnt, at::Tensor& dx);
// dx = dy·g + a (+ b where x == maxv, when maxv is not empty): input_grad_pass
// with the spread terms a, b [N, C] already computed (contiguous, the
// accumulation dtype; b empty without a max).
void dx_pass(const Geometry& geo, const at::Tensor& dy, const at::Tensor& g, const at::Tensor& a,
             const at::Tensor& b, const at::Tensor& maxv, at::Tensor& dx);

}  // namespace fused_attn::cuda
