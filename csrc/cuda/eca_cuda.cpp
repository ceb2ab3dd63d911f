// Efficient Channel Attention on CUDA: fused_attn::eca_forward / eca_backward
// for the CUDA dispatch key. As SE (channel_gate.h): one launch per direction
// where se_fused.cu has a plan (sm_90+; the cluster gathers the pooled
// vector, so the convolution's neighbours across blocks cost no pass over x),
// else two phases: pool → the 1-D convolution across channels and the gate
// on [N, C] (eca_excite_forward, which also combines the pool's segments,
// when it has them) → rescale, three launches; Σ dy·x → the
// convolution's backward (eca_excite_backward: g, dL/dpooled and the weight
// gradients, two launches) → dx, four. Kernel sizes above kEcaMaxTaps take
// ATen ops on [N, C] for the excitation instead.
#include "../eca.h"
#include "channel_gate.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

namespace fused_attn::cuda {
namespace {

// The single launch's variant fields for this ECA (k = rd).
SeFused eca_variant(const at::Tensor& w, Gate gate, Padding padding) {
  SeFused f;
  f.eca = true;
  f.circular = padding == Padding::Circular;
  f.rd = w.size(0);
  f.two_layer = false;
  f.gate = static_cast<int8_t>(gate);
  return f;
}

// The two-phase excitation's fields for this ECA (the caller sets the rows).
EcaExcite eca_excite_of(const Geometry& geo, const at::Tensor& w, Gate gate, Padding padding) {
  const SePass pass = pass_of<SePass>(geo);  // the dtype and the device's multiprocessors
  EcaExcite e;
  e.dtype = pass.dtype;
  e.sm_count = pass.sm_count;
  e.N = geo.N;
  e.C = geo.C;
  e.k = w.size(0);
  e.HW = geo.HW;
  e.circular = padding == Padding::Circular;
  e.gate = static_cast<int8_t>(gate);
  return e;
}

bool excite_kernels_take(const at::Tensor& w) { return w.size(0) <= kEcaMaxTaps; }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> eca_forward_cuda(const at::Tensor& x_in, const at::Tensor& w,
                                                                const c10::optional<at::Tensor>& b,
                                                                c10::string_view padding_name,
                                                                c10::string_view gate_name) {
  check_eca_args(x_in, w, b);
  const Padding padding = parse_padding(padding_name);
  const Gate gate = parse_gate(gate_name);
  TORCH_CHECK(x_in.is_cuda(), "fused_attn: eca_forward_cuda got x on ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Geometry geo = geometry(x_in);
  const auto acc = acc_dtype(x_in);
  EcaForwardOutputs out = eca_forward_outputs(geo);
  at::Tensor no_max = at::empty({0, 0}, out.pooled.options());
  if (geo.N == 0) return out.tuple();
  SeFused f = eca_variant(w, gate, padding);
  f.x = geo.x.const_data_ptr();
  f.y = out.y.data_ptr();
  if (plan_single_launch(f, geo, false)) {
    const at::Tensor wc = w.contiguous(), bc = b ? b->contiguous() : at::Tensor();
    f.w1 = wc.const_data_ptr();
    f.b1 = ptr_or_null(bc);
    f.pooled = out.pooled.data_ptr();
    f.logits = out.logits.data_ptr();
    C10_CUDA_CHECK(se_fused_forward(f, c10::cuda::getCurrentCUDAStream()));
    return out.tuple();
  }
  if (excite_kernels_take(w)) {
    // The pool leaves its segments' partials (if any) to the excitation's
    // threads: pool, excitation, rescale.
    const DeferredPool pool = pool_pass_deferred(geo, out.pooled, no_max);
    const at::Tensor wc = w.contiguous(), bc = b ? b->contiguous() : at::Tensor();
    at::Tensor g = at::empty({geo.N, geo.C}, out.pooled.options());
    EcaExcite e = eca_excite_of(geo, wc, gate, padding);
    e.w = wc.const_data_ptr();
    e.b = ptr_or_null(bc);
    e.pooled = out.pooled.const_data_ptr();
    e.pool_partials = pool.pass.partials;
    e.segments = pool.pass.segments;
    e.pooled_out = out.pooled.data_ptr();
    e.logits = out.logits.data_ptr();
    e.g = g.data_ptr();
    C10_CUDA_CHECK(eca_excite_forward(e, c10::cuda::getCurrentCUDAStream()));
    scale_pass(geo, g, out.y);
    return out.tuple();
  }
  pool_pass(geo, out.pooled, no_max);
  const c10::optional<at::Tensor> ba = b ? c10::optional<at::Tensor>(b->to(acc)) : c10::nullopt;
  out.logits.copy_(eca_logits(out.pooled, w.to(acc), ba, padding));
  scale_pass(geo, gate_forward(gate, out.logits).contiguous(), out.y);
  return out.tuple();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> eca_backward_cuda(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& pooled,
    const at::Tensor& logits, c10::string_view padding_name, c10::string_view gate_name, bool has_bias) {
  check_eca_backward_args(dy_in, x_in, w, pooled, logits);
  const Padding padding = parse_padding(padding_name);
  const Gate gate = parse_gate(gate_name);
  TORCH_CHECK(x_in.is_cuda(), "fused_attn: eca_backward_cuda got x on ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Geometry geo = geometry(x_in);
  const auto acc = acc_dtype(x_in);
  const auto opts = x_in.options().dtype(acc);
  const at::Tensor dy = dy_in.contiguous(geo.format);
  at::Tensor dx = at::empty_like(geo.x);
  maybe_poison(dx);
  SeFused f = eca_variant(w, gate, padding);
  f.x = geo.x.const_data_ptr();
  f.dy = dy.const_data_ptr();
  f.dx = dx.data_ptr();
  if (geo.N > 0 && plan_single_launch(f, geo, true)) {
    const at::Tensor wc = w.contiguous();
    f.w1 = wc.const_data_ptr();
    f.saved_pooled = pooled.const_data_ptr();
    f.saved_logits = logits.const_data_ptr();
    at::Tensor dw = single_launch_grad(f, w, {w.size(0)});
    at::Tensor db = has_bias ? single_launch_grad(f, w, {1}) : at::Tensor();
    f.dw1 = dw.data_ptr();
    f.db1 = ptr_or_null(db);
    C10_CUDA_CHECK(se_fused_backward(f, c10::cuda::getCurrentCUDAStream()));
    const std::vector<at::Tensor> grads = single_launch_grad_results(f, {dw, db}, w);
    return {dx, grads[0], grads[1]};
  }
  at::Tensor s = at::empty({geo.N, geo.C}, opts);
  at::Tensor no_max = at::empty({0, 0}, opts);
  maybe_poison(s);
  // (Σ dy·x's segments are combined by their own launch: read in the
  // excitation backward's staging, their sums made its kernel spill.)
  if (geo.N > 0) reduce_pass(geo, dy, no_max, s, no_max);
  if (excite_kernels_take(w)) {
    const at::Tensor wc = w.contiguous();
    at::Tensor g = at::empty({geo.N, geo.C}, opts), a = at::empty({geo.N, geo.C}, opts);
    at::Tensor dw = at::empty({w.size(0)}, w.options()), db = at::empty({has_bias ? 1 : 0}, w.options());
    maybe_poison(dw);
    maybe_poison(db);
    EcaExcite e = eca_excite_of(geo, wc, gate, padding);
    at::Tensor workspace = at::empty({eca_excite_partials(e)}, opts);
    e.w = wc.const_data_ptr();
    e.pooled = pooled.const_data_ptr();
    e.s = s.const_data_ptr();
    e.saved_logits = logits.const_data_ptr();
    e.g = g.data_ptr();
    e.a = a.data_ptr();
    e.partials = ptr_or_null(workspace);
    e.dw = dw.data_ptr();
    e.db = ptr_or_null(db);
    C10_CUDA_CHECK(eca_excite_backward(e, c10::cuda::getCurrentCUDAStream()));
    if (geo.N > 0) dx_pass(geo, dy, g, a, at::Tensor(), no_max, dx);
    return {dx, dw, db};
  }
  const at::Tensor wa = w.to(acc);
  const at::Tensor g = gate_forward(gate, logits);
  const at::Tensor dz = gate_backward(gate, s, logits, g);
  if (geo.N > 0) input_grad_pass(geo, dy, g, eca_input_grad(dz, wa, padding), no_max, no_max, dx);
  return {dx, eca_weight_grad(pooled, dz, w.size(0), padding).to(w.scalar_type()), eca_bias_grad(dz, w, has_bias)};
}

TORCH_LIBRARY_IMPL(fused_attn, CUDA, m) {
  m.impl("eca_forward", &eca_forward_cuda);
  m.impl("eca_backward", &eca_backward_cuda);
}

}  // namespace fused_attn::cuda
