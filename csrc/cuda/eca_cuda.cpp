// Efficient Channel Attention on CUDA: fused_attn::eca_forward / eca_backward
// for the CUDA dispatch key. Two phases like SE (channel_gate.h): pool →
// the 1-D convolution across channels on [N, C] (ATen, the current stream) →
// rescale; Σ dy·x → the convolution's backward → dx. The cross-channel step
// works on the pooled [N, C] tensor, so it costs no pass over x.
#include "../eca.h"
#include "channel_gate.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

namespace fused_attn::cuda {

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
  at::Tensor s = at::empty({geo.N, geo.C}, opts);
  at::Tensor no_max = at::empty({0, 0}, opts);
  maybe_poison(s);
  if (geo.N > 0) reduce_pass(geo, dy, no_max, s, no_max);
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
