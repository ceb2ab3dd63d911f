// Efficient Channel Attention on the CPU: fused_attn::eca_forward /
// eca_backward for the CPU dispatch key. The passes over x are the channel
// gate's (channel_gate.h: x read from DRAM once per direction, chunk by
// chunk); the 1-D convolution across channels runs per chunk on its pooled
// rows, which are complete when it runs, so the cross-channel step costs no
// extra pass over x. The weight gradient is formed once for the whole batch.
#include "../eca.h"
#include "channel_gate.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

namespace fused_attn::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> eca_forward_cpu(const at::Tensor& x_in, const at::Tensor& w,
                                                               const c10::optional<at::Tensor>& b,
                                                               c10::string_view padding_name,
                                                               c10::string_view gate_name) {
  check_eca_args(x_in, w, b);
  const Padding padding = parse_padding(padding_name);
  const Gate gate = parse_gate(gate_name);
  TORCH_CHECK(x_in.device().is_cpu(), "fused_attn: eca_forward_cpu got x on ", x_in.device());
  const Geometry geo = geometry(x_in);
  const int64_t N = geo.N, C = geo.C;
  const auto acc = acc_dtype(x_in);
  const auto opts = x_in.options().dtype(acc);
  at::Tensor y = at::empty_like(geo.x);
  at::Tensor pooled = at::empty({N, C}, opts);
  at::Tensor logits = at::empty({N, C}, opts);
  at::Tensor no_max = at::empty({0, 0}, opts);
  for (at::Tensor* t : {&y, &pooled, &logits}) maybe_poison(*t);
  const at::Tensor wa = w.to(acc);
  const c10::optional<at::Tensor> ba = b ? c10::optional<at::Tensor>(b->to(acc)) : c10::nullopt;
  gate_forward_cpu(geo, y, pooled, no_max, [&](int64_t n0, int64_t nb, at::Tensor& g) {
    const at::Tensor z = eca_logits(pooled.narrow(0, n0, nb), wa, ba, padding);
    logits.narrow(0, n0, nb).copy_(z);
    g.copy_(gate_forward(gate, z));
  });
  return {y, pooled, logits};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> eca_backward_cpu(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& pooled,
    const at::Tensor& logits, c10::string_view padding_name, c10::string_view gate_name, bool has_bias) {
  check_eca_backward_args(dy_in, x_in, w, pooled, logits);
  const Padding padding = parse_padding(padding_name);
  const Gate gate = parse_gate(gate_name);
  TORCH_CHECK(x_in.device().is_cpu(), "fused_attn: eca_backward_cpu got x on ", x_in.device());
  const Geometry geo = geometry(x_in);
  const auto acc = acc_dtype(x_in);
  const at::Tensor dy = dy_in.contiguous(geo.format);
  at::Tensor dx = at::empty_like(geo.x);
  maybe_poison(dx);
  const at::Tensor wa = w.to(acc);
  at::Tensor dz = at::zeros({geo.N, geo.C}, x_in.options().dtype(acc));  // dL/dlogits of every sample
  at::Tensor no_max = at::empty({0, 0}, dz.options());
  gate_backward_cpu(geo, dy, no_max, dx, [&](int64_t n0, int64_t nb, const at::Tensor& s, at::Tensor& g, at::Tensor& dp) {
    const at::Tensor z = logits.narrow(0, n0, nb);
    g.copy_(gate_forward(gate, z));
    const at::Tensor dz_c = gate_backward(gate, s, z, g);
    dz.narrow(0, n0, nb).copy_(dz_c);
    dp.copy_(eca_input_grad(dz_c, wa, padding));
  });
  const at::Tensor dw = eca_weight_grad(pooled, dz, w.size(0), padding).to(w.scalar_type());
  const at::Tensor db = has_bias ? dz.sum().reshape({1}).to(w.scalar_type()) : at::empty({0}, w.options());
  return {dx, dw, db};
}

TORCH_LIBRARY_IMPL(fused_attn, CPU, m) {
  m.impl("eca_forward", &eca_forward_cpu);
  m.impl("eca_backward", &eca_backward_cpu);
}

}  // namespace fused_attn::cpu
