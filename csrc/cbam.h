// CBAM: what the backends share (the argument checks of fused_attn::cbam_forward
// / cbam_backward; the algorithm is described in csrc/cpu/cbam_kernel.cpp and
// fused_attn/triton/cbam.py).
#pragma once

#include "se.h"

namespace fused_attn {

// Largest spatial kernel the ops take (fused_attn/ops/cbam.py: MAX_SPATIAL_KERNEL).
constexpr int64_t kMaxSpatialKernel = 15;

// x and the MLP weights as for SE (check_se_args); ws [maps, k, k] with maps
// 2 (1 when light), k odd and at most kMaxSpatialKernel, x's dtype and device. Raises naming the argument.
void check_cbam_args(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                     const at::Tensor& w2, const c10::optional<at::Tensor>& b2, const at::Tensor& ws, bool light);

// The BatchNorm2d(1) parameters and running statistics: one floating-point
// element each when given, on x's device.
void check_cbam_bn_args(const at::Tensor& x, const c10::optional<at::Tensor>& bn_w,
                        const c10::optional<at::Tensor>& bn_b, const c10::optional<at::Tensor>& bn_rm,
                        const c10::optional<at::Tensor>& bn_rv);

// The backward's inputs: grad_y like x; the forward's saved tensors
// contiguous in the accumulation dtype with pooled [2, N, C], logits [N, C],
// smap [2, N, H·W], z [N, H·W], bn_stats [2].
void check_cbam_backward_args(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& pooled,
                              const at::Tensor& logits, const at::Tensor& smap, const at::Tensor& z,
                              const at::Tensor& bn_stats);

}  // namespace fused_attn
