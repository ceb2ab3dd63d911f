// Squeeze-and-Excitation on CUDA: fused_attn::se_forward / se_backward for the
// CUDA dispatch key. The torch glue around the kernels of se_forward.cu /
// se_backward.cu: argument checks, the device guard and current stream, the
// output allocation, and the excitation on [N, C] tensors.
//
// Two phases (DESIGN.md §4): forward 3|x| (pool reads x; the rescale reads x
// and writes y), backward 4|x| (Σ dy·x reads dy and x; dx reads dy — and x
// only for the avg+max pool — and writes dx). The excitation runs once per
// batch as GEMMs over all N samples (cuBLAS through ATen, on the current
// stream), so the weights are read once, not once per sample. Nothing here
// synchronizes with the host, so the ops can be captured in CUDA graphs.
// (c10/cuda only, not ATen/cuda/CUDAContext.h, which needs the cuSPARSE and
// cuBLAS headers that a minimal CUDA toolkit lacks.) The passes over x are
// channel_gate.h's, shared with ECA.
#include "../se.h"
#include "channel_gate.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

namespace fused_attn::cuda {
namespace {

// out = v·wᵀ (+ b), into a preallocated output.
void linear_into(at::Tensor& out, const at::Tensor& v, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
  if (b) {
    at::addmm_out(out, *b, v, w.t());
  } else {
    at::mm_out(out, v, w.t());
  }
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

  at::Tensor s = at::empty({N, C}, opts);
  at::Tensor cnt = at::empty({with_max ? N : 0, with_max ? C : 0}, opts);
  maybe_poison(s);
  maybe_poison(cnt);
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
