// What every CBAM backend shares: the argument checks (cbam.h).
#include "cbam.h"

#include <c10/util/Exception.h>

#include <tuple>

namespace fused_attn {

void check_cbam_args(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                     const at::Tensor& w2, const c10::optional<at::Tensor>& b2, const at::Tensor& ws, bool light) {
  check_se_args(x, w1, b1, w2, b2);
  const int64_t maps = light ? 1 : 2;
  TORCH_CHECK_VALUE(ws.dim() == 3 && ws.size(0) == maps && ws.size(1) == ws.size(2) && ws.size(1) % 2 == 1,
                    "fused_attn: spatial_weight must have shape [", maps, ", k, k] with k odd, got ", ws.sizes());
  TORCH_CHECK_TYPE(ws.scalar_type() == x.scalar_type(), "fused_attn: spatial_weight has dtype ", ws.scalar_type(),
                   " but x has dtype ", x.scalar_type());
  TORCH_CHECK(ws.device() == x.device(), "fused_attn: spatial_weight is on ", ws.device(), " but x is on ",
              x.device());
  TORCH_CHECK_VALUE(ws.size(-1) <= kMaxSpatialKernel, "fused_attn: spatial_weight's kernel size must be at most ",
                    kMaxSpatialKernel, ", got k=", ws.size(-1));
}

void check_cbam_bn_args(const at::Tensor& x, const c10::optional<at::Tensor>& bn_w,
                        const c10::optional<at::Tensor>& bn_b, const c10::optional<at::Tensor>& bn_rm,
                        const c10::optional<at::Tensor>& bn_rv) {
  for (const auto& [t, name] : {std::pair<const c10::optional<at::Tensor>&, const char*>{bn_w, "bn_weight"},
                                {bn_b, "bn_bias"}, {bn_rm, "bn_running_mean"}, {bn_rv, "bn_running_var"}}) {
    if (!t) continue;
    TORCH_CHECK_VALUE(t->numel() == 1, "fused_attn: ", name, " must have one element, got ", t->sizes());
    TORCH_CHECK(t->device() == x.device(), "fused_attn: ", name, " is on ", t->device(), " but x is on ",
                x.device());
    TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()), "fused_attn: ", name,
                     " must be a floating-point tensor, got ", t->scalar_type());
  }
}

void check_cbam_backward_args(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& pooled,
                              const at::Tensor& logits, const at::Tensor& smap, const at::Tensor& z,
                              const at::Tensor& bn_stats) {
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type(),
                    "fused_attn: grad_y must have x's shape and dtype");
  TORCH_CHECK(grad_y.device() == x.device(), "fused_attn: grad_y is on ", grad_y.device(), " but x is on ",
              x.device());
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const auto acc = acc_dtype(x);
  for (const auto& [t, name, count] :
       {std::tuple<const at::Tensor&, const char*, int64_t>{pooled, "pooled", 2 * N * C},
        {logits, "logits", N * C}, {smap, "smap", 2 * N * HW}, {z, "z", N * HW}, {bn_stats, "bn_stats", 2}}) {
    TORCH_CHECK_VALUE(t.scalar_type() == acc && t.is_contiguous() && t.numel() == count, "fused_attn: ", name,
                      " must be a contiguous ", acc, " tensor of ", count, " elements, got ", t.scalar_type(), " ",
                      t.sizes());
    TORCH_CHECK(t.device() == x.device(), "fused_attn: ", name, " is on ", t.device(), " but x is on ", x.device());
  }
}

}  // namespace fused_attn
