// Efficient Channel Attention: what the backends share.
//
//   p = mean_hw(x)                          N×C
//   z = conv1d(pad(p), w) + b               N×C   kernel k (odd) across channels, 'same' size,
//                                                 zero or circular padding
//   y = x · gate(z)[:, :, None, None]
//
// The passes over x are the channel gate's (pool, rescale; Σ dy·x, dx); the
// excitation here is on N×C tensors, in ATen ops, for every device.
#pragma once

#include "se.h"

namespace fused_attn {

enum class Padding : int8_t { Zeros, Circular };

Padding parse_padding(c10::string_view name);

// x 4-D float; w [k] with k odd, x's dtype and device; b [1] or absent.
void check_eca_args(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b);
void check_eca_backward_args(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                             const at::Tensor& pooled, const at::Tensor& logits);

// The outputs of eca_forward, allocated (and poisoned) the same way by every
// backend: y dense like geo.x; pooled and logits [N, C] in the accumulation
// dtype.
struct EcaForwardOutputs {
  at::Tensor y, pooled, logits;
  std::tuple<at::Tensor, at::Tensor, at::Tensor> tuple() const { return {y, pooled, logits}; }
};
EcaForwardOutputs eca_forward_outputs(const Geometry& geo);

// dL/dbias = Σ dz, as a [1] tensor in w's dtype; [0] when there is no bias.
at::Tensor eca_bias_grad(const at::Tensor& dz, const at::Tensor& w, bool has_bias);

// p [n, C] → z [n, C]; w [k] and b [1] in p's dtype. Circular padding wraps
// modulo C (so C < k is fine: a channel may meet itself more than once).
at::Tensor eca_logits(const at::Tensor& p, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                      Padding padding);
// dL/dp from dz = dL/dz (the transposed convolution).
at::Tensor eca_input_grad(const at::Tensor& dz, const at::Tensor& w, Padding padding);
// dL/dw [k] from the pooled rows and dz of every sample: one GEMV.
at::Tensor eca_weight_grad(const at::Tensor& p, const at::Tensor& dz, int64_t k, Padding padding);

}  // namespace fused_attn
