// The SE excitation on the CPU: N×C and N×rd tensors only.
//
// The forward's two matrix products are row dot products (channel_gate.h's
// rows_dot) for chunks of up to 16 samples, BLAS GEMMs beyond; the
// backward's go to ATen (BLAS). The activations,
// gates and their derivatives are plain loops here, one call per chunk of
// samples instead of a dozen small ATen ops (each costs microseconds of
// dispatch and allocation, which at small H·W rivals the whole pass over x).
// The formulas are PyTorch's (aten/src/ATen/native/cpu/Activation.cpp).
#include "se_excite.h"

#include "channel_gate.h"
#include "gate_math.h"

#include <ATen/Dispatch.h>

#include <ATen/ops/addmm.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <cmath>

namespace fused_attn::cpu {
namespace {

template <typename A, typename F>
void map_into(at::Tensor& out, const at::Tensor& in, F&& f) {
  const A* src = in.data_ptr<A>();
  A* dst = out.data_ptr<A>();
  const int64_t n = in.numel();
  for (int64_t i = 0; i < n; ++i) dst[i] = f(src[i], i);
}

// out = a·wᵀ (+ b): a few pooled rows through our row dot products (w may
// be float16 / bfloat16 there, widened as it loads), many through BLAS
// (which is then the faster).
void linear_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  const auto dt = a.scalar_type();
  const auto wt = w.scalar_type();
  const bool w_ok = wt == dt || rows_dot_widens(wt, dt);
  const bool few = a.size(0) <= kExciteFewRows && a.is_contiguous() && w.is_contiguous() && out.is_contiguous() && w_ok &&
                   out.scalar_type() == dt && (!b || (b->is_contiguous() && b->scalar_type() == dt)) &&
                   (dt == at::kFloat || dt == at::kDouble);
  if (!few) {
    const at::Tensor wa = wt == dt ? w : w.to(dt);
    if (b) at::addmm_out(out, *b, a, wa.t());
    else at::mm_out(out, a, wa.t());
    return;
  }
  const int64_t nb = a.size(0), M = w.size(0), K = w.size(1);
  AT_DISPATCH_FLOATING_TYPES(dt, "linear_into", [&] {
    rows_dot<scalar_t>(w, a.const_data_ptr<scalar_t>(), M, K, nb, out.data_ptr<scalar_t>(), M,
                       b ? b->const_data_ptr<scalar_t>() : nullptr);
  });
}

// act(hidden), elementwise, in hidden's (accumulation) dtype.
at::Tensor activate(const at::Tensor& hidden, Act act) {
  at::Tensor a = at::empty_like(hidden);
  if (hidden.scalar_type() == at::kDouble) map_into<double>(a, hidden, [act](double h, int64_t) { return act_forward(act, h); });
  else map_into<float>(a, hidden, [act](float h, int64_t) { return act_forward(act, h); });
  return a;
}

template <typename A>
void forward_impl(const SeWeights& w, Act act, Gate gate, const at::Tensor& p, at::Tensor& hidden, at::Tensor& logits,
                  at::Tensor& g) {
  if (w.two_layer()) {
    linear_into(hidden, p, w.w1, w.b1);
    linear_into(logits, activate(hidden, act), *w.w2, w.b2);
  } else {
    linear_into(logits, p, w.w1, w.b1);
  }
  gate_into(gate, logits.data_ptr<A>(), g.data_ptr<A>(), logits.numel());
}

template <typename A>
void backward_impl(const SeWeights& w, Act act, Gate gate, const at::Tensor& s, const at::Tensor& hidden,
                   const at::Tensor& logits, at::Tensor& g, at::Tensor& dz, at::Tensor& dh, at::Tensor& dp) {
  gate_into(gate, logits.data_ptr<A>(), g.data_ptr<A>(), logits.numel());
  const A* sp = s.data_ptr<A>();
  const A* gp = g.data_ptr<A>();
  map_into<A>(dz, logits, [&](A z, int64_t i) { return gate_grad(gate, sp[i], z, gp[i]); });
  if (!w.two_layer()) {
    small_mm_out(dp, dz, w.w1);
    return;
  }
  small_mm_out(dh, dz, *w.w2);  // dL/da, turned into dL/dh in place
  const A* hp = hidden.data_ptr<A>();
  map_into<A>(dh, dh, [&](A da, int64_t i) { return act_backward(act, da, hp[i]); });
  small_mm_out(dp, dh, w.w1);
}

}  // namespace

void excite_forward(const SeWeights& w, Act act, Gate gate, const at::Tensor& p, at::Tensor& hidden,
                    at::Tensor& logits, at::Tensor& g) {
  if (p.scalar_type() == at::kDouble) forward_impl<double>(w, act, gate, p, hidden, logits, g);
  else forward_impl<float>(w, act, gate, p, hidden, logits, g);
}

void excite_backward(const SeWeights& w, Act act, Gate gate, const at::Tensor& s, const at::Tensor& hidden,
                     const at::Tensor& logits, at::Tensor& g, at::Tensor& dz, at::Tensor& dh, at::Tensor& dp) {
  if (s.scalar_type() == at::kDouble) backward_impl<double>(w, act, gate, s, hidden, logits, g, dz, dh, dp);
  else backward_impl<float>(w, act, gate, s, hidden, logits, g, dz, dh, dp);
}

ExciteWeightGrads excite_weight_grads(const SeWeights& w, Act act, const at::Tensor& pooled,
                                      const at::Tensor& hidden, const at::Tensor& dz, const at::Tensor& dh,
                                      bool has_b1, bool has_b2) {
  ExciteWeightGrads out;
  // fc1's output gradient: dL/dhidden with two layers, dL/dlogits with one.
  const at::Tensor& d_first = w.two_layer() ? dh : dz;
  out.dw1 = small_mm_tn(d_first, pooled);
  if (has_b1) out.db1 = d_first.sum(0);
  if (w.two_layer()) {
    out.dw2 = small_mm_tn(dz, activate(hidden, act));
    if (has_b2) out.db2 = dz.sum(0);
  }
  return out;
}

}  // namespace fused_attn::cpu
