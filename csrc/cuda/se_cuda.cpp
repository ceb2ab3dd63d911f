// Squeeze-and-Excitation on CUDA: fused_attn::se_forward / se_backward for the
// CUDA dispatch key. The torch glue around the kernels of se_forward.cu /
// se_backward.cu: argument checks, the device guard and current stream, the
// output allocation, and the excitation on [N, C] tensors.
//
// Two phases (DESIGN.md §4): forward 3|x| (pool reads x; the rescale reads x
// and writes y), backward 4|x| (Σ dy·x reads dy and x; dx reads dy — and x
// only for the avg+max pool — and writes dx). The excitation runs once per
// batch over all N samples, so the weights are read a few times, not once
// per sample, by kernels of ours: forward se_excite_forward_pooled (the
// pool's partials combined, fc1, then fc2 with the activation and gate, in
// one cooperative launch where the device has them: three launches with the
// pool and rescale; else one per phase, as many as five in all),
// backward se_excite_backward (the layers' backward and the weight gradients;
// five launches with Σ dy·x and dx). Without hidden units (rd = 0, or C = 0)
// the excitation is ATen's (cuBLAS, on the current stream). Nothing here
// synchronizes with the host, so the ops can be captured in CUDA graphs.
// (c10/cuda only, not ATen/cuda/CUDAContext.h, which needs the cuSPARSE and
// cuBLAS headers that a minimal CUDA toolkit lacks.) The passes over x are
// channel_gate.h's, shared with ECA.
//
// Or one launch per direction (se_fused.cu): forward 2|x|, backward 3|x|,
// the excitation on chip; channel_gate.h's plan_single_launch decides
// (FUSED_ATTN_CUDA_PATH).
#include "../se.h"
#include "channel_gate.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

namespace fused_attn::cuda {
namespace {

static_assert(static_cast<int>(Act::HardSwish) == static_cast<int>(FusedAct::HardSwish) &&
                  static_cast<int>(Act::GELUTanh) == static_cast<int>(FusedAct::GELUTanh) &&
                  static_cast<int>(Act::SiLU) == static_cast<int>(FusedAct::SiLU) &&
                  static_cast<int>(Gate::HardSigmoid) == static_cast<int>(FusedGate::HardSigmoid),
              "se.h's Act / Gate and se_cuda.h's FusedAct / FusedGate must agree");

// The single launch's variant fields for this SE.
SeFused se_variant(const at::Tensor& w1, bool two_layer, Act act, Gate gate, Pool pool) {
  SeFused f;
  f.rd = w1.size(0);
  f.two_layer = two_layer;
  f.with_max = pool == Pool::AvgMax;
  f.act = static_cast<int8_t>(act);
  f.gate = static_cast<int8_t>(gate);
  return f;
}

// The two-phase excitation's params for this SE (the pointers left to the
// caller), over rows in the accumulation dtype.
SeExcite se_excite_of(const Geometry& geo, const at::Tensor& w1, bool two_layer, Act act, Gate gate) {
  const SePass pass = pass_of<SePass>(geo);  // the dtype and the device's multiprocessors
  SeExcite e;
  e.dtype = pass.dtype;
  e.sm_count = pass.sm_count;
  e.N = geo.N, e.C = geo.C, e.rd = w1.size(0);
  e.two_layer = two_layer;
  e.act = static_cast<int8_t>(act);
  e.gate = static_cast<int8_t>(gate);
  return e;
}

// An optional weight, contiguous (undefined when absent).
at::Tensor contiguous_or_undefined(const c10::optional<at::Tensor>& t) { return t ? t->contiguous() : at::Tensor(); }

// out = v·wᵀ (+ b), into a preallocated output.
void linear_into(at::Tensor& out, const at::Tensor& v, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
  if (b) {
    at::addmm_out(out, *b, v, w.t());
  } else {
    at::mm_out(out, v, w.t());
  }
}

// The single-launch backward, planned in f: the weight gradients straight in
// the weights' dtype with one group, else float partials per group summed
// here (a fixed-order reduction) and converted.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_backward_fused(
    SeFused& f, const at::Tensor& w1, const c10::optional<at::Tensor>& w2, const at::Tensor& pooled,
    const at::Tensor& maxv, const at::Tensor& hidden, const at::Tensor& logits, bool has_b1, bool has_b2,
    at::Tensor& dx) {
  const at::Tensor w1c = w1.contiguous(), w2c = contiguous_or_undefined(w2);
  f.w1 = w1c.const_data_ptr();
  f.w2 = ptr_or_null(w2c);
  f.saved_pooled = pooled.const_data_ptr();
  f.saved_maxv = ptr_or_null(maxv);
  f.saved_hidden = ptr_or_null(hidden);
  f.saved_logits = logits.const_data_ptr();
  const int64_t rd = w1.size(0), C = w1.size(1);
  at::Tensor dw1 = single_launch_grad(f, w1, {rd, C});
  at::Tensor db1 = has_b1 ? single_launch_grad(f, w1, {rd}) : at::Tensor();
  at::Tensor dw2 = w2 ? single_launch_grad(f, w1, {C, rd}) : at::Tensor();
  at::Tensor db2 = (w2 && has_b2) ? single_launch_grad(f, w1, {C}) : at::Tensor();
  f.dw1 = dw1.data_ptr();
  f.db1 = ptr_or_null(db1);
  f.dw2 = ptr_or_null(dw2);
  f.db2 = ptr_or_null(db2);
  C10_CUDA_CHECK(se_fused_backward(f, c10::cuda::getCurrentCUDAStream()));
  const std::vector<at::Tensor> grads = single_launch_grad_results(f, {dw1, db1, dw2, db2}, w1);
  return {dx, grads[0], grads[1], grads[2], grads[3]};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_forward_cuda(
    const at::Tensor& x_in, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
    const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& b2, c10::string_view act_name,
    c10::string_view gate_name, c10::string_view pool_name) {
  check_se_args(x_in, w1, b1, w2, b2);
  const Act act = parse_act(act_name);
  const Gate gate = parse_gate(gate_name);
  const Pool pool = parse_pool(pool_name);
  TORCH_CHECK(x_in.is_cuda(), "fused_attn: se_forward_cuda got x on ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());

  const Geometry geo = geometry(x_in);
  SeForwardOutputs out = se_forward_outputs(geo, w1, w2.has_value(), pool);
  if (geo.N == 0) return out.tuple();

  const bool cooperative = cooperative_excite();  // (parsed here: a bad value raises whatever the path)
  SeFused f = se_variant(w1, w2.has_value(), act, gate, pool);
  f.x = geo.x.const_data_ptr();
  f.y = out.y.data_ptr();
  // The weights as they are (x's dtype), read and converted by the kernels
  // of either path.
  const at::Tensor w1c = w1.contiguous(), b1c = contiguous_or_undefined(b1);
  const at::Tensor w2c = contiguous_or_undefined(w2), b2c = contiguous_or_undefined(b2);
  if (plan_single_launch(f, geo, false)) {
    f.w1 = w1c.const_data_ptr();
    f.b1 = ptr_or_null(b1c);
    f.w2 = ptr_or_null(w2c);
    f.b2 = ptr_or_null(b2c);
    f.pooled = out.pooled.data_ptr();
    f.maxv = ptr_or_null(out.maxv);
    f.hidden = ptr_or_null(out.hidden);
    f.logits = out.logits.data_ptr();
    C10_CUDA_CHECK(se_fused_forward(f, c10::cuda::getCurrentCUDAStream()));
    return out.tuple();
  }

  if (geo.C > 0 && w1.size(0) > 0) {
    // The pool, then the excitation straight from its partials: one
    // cooperative launch (the combine, fc1, fc2), or as many as three; no
    // hidden units (rd = 0) keeps the ATen ops.
    const DeferredPool pool = pool_pass_deferred(geo, out.pooled, out.maxv);
    SeExcite e = se_excite_of(geo, w1, w2.has_value(), act, gate);
    e.w1 = w1c.const_data_ptr();
    e.b1 = ptr_or_null(b1c);
    e.w2 = ptr_or_null(w2c);
    e.b2 = ptr_or_null(b2c);
    e.pooled = out.pooled.const_data_ptr();
    e.hidden = ptr_or_null(out.hidden);
    e.logits = out.logits.data_ptr();
    at::Tensor g = at::empty({geo.N, geo.C}, out.pooled.options());
    e.g = g.data_ptr();
    at::Tensor workspace = at::empty({se_excite_partials(e)}, out.pooled.options());
    e.partials = ptr_or_null(workspace);
    C10_CUDA_CHECK(se_excite_forward_pooled(e, pool.pass, cooperative, c10::cuda::getCurrentCUDAStream()));
    scale_pass(geo, g, out.y);
    return out.tuple();
  }

  pool_pass(geo, out.pooled, out.maxv);

  const SeWeights w = se_weights(w1, b1, w2, b2, acc_dtype(x_in));
  if (w.two_layer()) {
    linear_into(out.hidden, out.pooled, w.w1, w.b1);
    linear_into(out.logits, activation(act, out.hidden), *w.w2, w.b2);
  } else {
    linear_into(out.logits, out.pooled, w.w1, w.b1);
  }
  const at::Tensor g = gate_forward(gate, out.logits).contiguous();

  scale_pass(geo, g, out.y);
  return out.tuple();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_backward_cuda(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& w1, const c10::optional<at::Tensor>& w2,
    const at::Tensor& pooled, const at::Tensor& maxv, const at::Tensor& hidden, const at::Tensor& logits,
    c10::string_view act_name, c10::string_view gate_name, c10::string_view pool_name, bool has_b1, bool has_b2) {
  const Pool pool = parse_pool(pool_name);
  check_se_backward_args(dy_in, x_in, w1, w2, pooled, maxv, hidden, logits, pool);
  const Act act = parse_act(act_name);
  const Gate gate = parse_gate(gate_name);
  TORCH_CHECK(x_in.is_cuda(), "fused_attn: se_backward_cuda got x on ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());

  const Geometry geo = geometry(x_in);
  const int64_t N = geo.N, C = geo.C;
  const auto acc = acc_dtype(x_in);
  const auto opts = x_in.options().dtype(acc);
  const bool with_max = pool == Pool::AvgMax;
  const at::Tensor dy = dy_in.contiguous(geo.format);
  at::Tensor dx = at::empty_like(geo.x);
  maybe_poison(dx);

  SeFused f = se_variant(w1, w2.has_value(), act, gate, pool);
  f.x = geo.x.const_data_ptr();
  f.dy = dy.const_data_ptr();
  f.dx = dx.data_ptr();
  if (N > 0 && plan_single_launch(f, geo, true)) {
    return se_backward_fused(f, w1, w2, pooled, maxv, hidden, logits, has_b1, has_b2, dx);
  }

  at::Tensor s = at::empty({N, C}, opts);
  at::Tensor cnt = at::empty({with_max ? N : 0, with_max ? C : 0}, opts);
  maybe_poison(s);
  maybe_poison(cnt);

  if (C > 0 && w1.size(0) > 0) {
    // Σ dy·x, its segments (if any) left to the excitation's first layer and
    // spread; the excitation backward for the whole batch as three launches
    // of ours (two for effective SE); no hidden units (rd = 0) keeps the ATen ops.
    DeferredPool red;
    if (N > 0) red = reduce_pass_deferred(geo, dy, maxv, s, cnt);
    SeExcite e = se_excite_of(geo, w1, w2.has_value(), act, gate);
    e.s_partials = red.pass.partials;
    e.s_segments = red.pass.segments;
    const at::Tensor w1c = w1.contiguous(), w2c = contiguous_or_undefined(w2);
    e.w1 = w1c.const_data_ptr();
    e.w2 = ptr_or_null(w2c);
    e.pooled = pooled.const_data_ptr();
    e.s = s.const_data_ptr();
    e.saved_logits = logits.const_data_ptr();
    e.saved_hidden = ptr_or_null(hidden);
    e.HW = geo.HW;
    e.cnt = ptr_or_null(cnt);
    at::Tensor g = at::empty({N, C}, opts), a = at::empty({N, C}, opts);
    at::Tensor b = at::empty({with_max ? N : 0, with_max ? C : 0}, opts);
    at::Tensor workspace = at::empty({se_excite_backward_workspace(e)}, opts);
    const auto wopts = w1.options().memory_format(at::MemoryFormat::Contiguous);
    at::Tensor dw1 = at::empty(w1.sizes(), wopts);
    at::Tensor db1 = at::empty({has_b1 ? w1.size(0) : 0}, wopts);
    at::Tensor dw2 = at::empty({w2 ? C : 0, w2 ? w1.size(0) : 0}, wopts);
    at::Tensor db2 = at::empty({w2 && has_b2 ? C : 0}, wopts);
    for (at::Tensor* t : {&g, &a, &b, &workspace, &dw1, &db1, &dw2, &db2}) maybe_poison(*t);
    e.g = g.data_ptr(), e.a = a.data_ptr(), e.b = ptr_or_null(b), e.partials = ptr_or_null(workspace);
    e.dw1 = dw1.data_ptr(), e.db1 = ptr_or_null(db1), e.dw2 = ptr_or_null(dw2), e.db2 = ptr_or_null(db2);
    C10_CUDA_CHECK(se_excite_backward(e, c10::cuda::getCurrentCUDAStream()));
    if (N > 0) dx_pass(geo, dy, g, a, b, maxv, dx);
    // An absent gradient as weight_grad_or_empty gives it: [0].
    return {dx, dw1, db1, w2 ? dw2 : dw2.view({0}), db2};
  }

  if (N > 0) reduce_pass(geo, dy, maxv, s, cnt);
  // The excitation backward for the whole batch: dz = dL/dlogits, then
  // through the MLP to dL/dpooled, and the weight gradients (one GEMM each).
  const SeWeights w = se_weights(w1, c10::nullopt, w2, c10::nullopt, acc);
  const at::Tensor g = gate_forward(gate, logits);
  const at::Tensor dz = gate_backward(gate, s, logits, g);
  at::Tensor dw1, db1, dw2, db2, d_first;
  if (w.two_layer()) {
    dw2 = dz.t().mm(activation(act, hidden));
    if (has_b2) db2 = dz.sum(0);
    d_first = activation_backward(act, dz.mm(*w.w2), hidden);
  } else {
    d_first = dz;
  }
  dw1 = d_first.t().mm(pooled);
  if (has_b1) db1 = d_first.sum(0);
  const at::Tensor dp = d_first.mm(w.w1);
  if (N > 0) input_grad_pass(geo, dy, g, dp, maxv, cnt, dx);

  return {dx, weight_grad_or_empty(dw1, w1), weight_grad_or_empty(db1, w1), weight_grad_or_empty(dw2, w1),
          weight_grad_or_empty(db2, w1)};
}

TORCH_LIBRARY_IMPL(fused_attn, CUDA, m) {
  m.impl("se_forward", &se_forward_cuda);
  m.impl("se_backward", &se_backward_cuda);
}

}  // namespace fused_attn::cuda
