// What every ECA backend shares: checks, and the excitation on [N, C] tensors
// as ATen ops. The convolution is written through windows: for the padded
// pooled vector, windows(p)[n, c, j] = p[n, c + j - pad] (zero or wrapped),
// so z = windows(p)·w, dL/dp = windows(dz)·flip(w), dL/dw = Σ_{n,c} windows(p)·dz.
#include "eca.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/flip.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mv.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

namespace fused_attn {

Padding parse_padding(c10::string_view name) {
  if (name == "zeros") return Padding::Zeros;
  if (name == "circular") return Padding::Circular;
  TORCH_CHECK_VALUE(false, "fused_attn: padding must be one of zeros, circular; got '",
                    std::string(name.data(), name.size()), "'");
}

static void check_like_x(const at::Tensor& x, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == x.device(), "fused_attn: ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), "fused_attn: ", name, " has dtype ", t.scalar_type(),
                   " but x has dtype ", x.scalar_type(), "; the weights must have the input's dtype");
}

void check_eca_args(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
  check_x(x);
  TORCH_CHECK_VALUE(w.dim() == 1, "fused_attn: conv_weight must have shape [k], got ", w.sizes());
  TORCH_CHECK_VALUE(w.size(0) % 2 == 1, "fused_attn: conv_weight's kernel size must be odd, got k=", w.size(0));
  check_like_x(x, w, "conv_weight");
  if (b) {
    TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == 1, "fused_attn: conv_bias must have shape [1], got ",
                      b->sizes());
    check_like_x(x, *b, "conv_bias");
  }
}

void check_eca_backward_args(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                             const at::Tensor& pooled, const at::Tensor& logits) {
  check_eca_args(x, w, c10::nullopt);
  TORCH_CHECK_VALUE(dy.sizes() == x.sizes(), "fused_attn: grad_y must have x's shape ", x.sizes(), ", got ",
                    dy.sizes());
  TORCH_CHECK_TYPE(dy.scalar_type() == x.scalar_type(), "fused_attn: grad_y has dtype ", dy.scalar_type(),
                   " but x has ", x.scalar_type());
  TORCH_CHECK(dy.device() == x.device(), "fused_attn: grad_y is on ", dy.device(), " but x is on ", x.device());
  const at::ScalarType acc = acc_dtype(x);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{pooled, "pooled"}, {logits, "logits"}}) {
    TORCH_CHECK_VALUE(t.scalar_type() == acc && t.dim() == 2 && t.size(0) == x.size(0) && t.size(1) == x.size(1) &&
                          t.is_contiguous() && t.device() == x.device(),
                      "fused_attn: ", name, " must be a contiguous ", acc, " tensor of shape [", x.size(0), ", ",
                      x.size(1), "] on ", x.device(), ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
  }
}

EcaForwardOutputs eca_forward_outputs(const Geometry& geo) {
  const auto opts = geo.x.options().dtype(acc_dtype(geo.x));
  EcaForwardOutputs out;
  out.y = at::empty_like(geo.x);
  out.pooled = at::empty({geo.N, geo.C}, opts);
  out.logits = at::empty({geo.N, geo.C}, opts);
  for (at::Tensor* t : {&out.y, &out.pooled, &out.logits}) maybe_poison(*t);
  return out;
}

at::Tensor eca_bias_grad(const at::Tensor& dz, const at::Tensor& w, bool has_bias) {
  return has_bias ? dz.sum().reshape({1}).to(w.scalar_type()) : at::empty({0}, w.options());
}

// [n, C] → [n, C, k] windows of the padded rows.
static at::Tensor windows(const at::Tensor& v, int64_t k, Padding padding) {
  const int64_t pad = (k - 1) / 2, C = v.size(1);
  // No channels, no windows (the padded row would be shorter than k, and the
  // wrap-around below would take a remainder by 0: on CUDA, junk indices and
  // a device-side assert).
  if (C == 0) return at::zeros({v.size(0), 0, k}, v.options());
  at::Tensor padded;
  if (padding == Padding::Zeros) {
    padded = at::constant_pad_nd(v, {pad, pad}, 0);
  } else {
    const at::Tensor idx = at::arange(-pad, C + pad, v.options().dtype(at::kLong)).remainder_(C);
    padded = v.index_select(1, idx);
  }
  return padded.unfold(1, k, 1);
}

at::Tensor eca_logits(const at::Tensor& p, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                      Padding padding) {
  at::Tensor z = at::matmul(windows(p, w.size(0), padding), w);
  if (b) z.add_(*b);
  return z;
}

at::Tensor eca_input_grad(const at::Tensor& dz, const at::Tensor& w, Padding padding) {
  return at::matmul(windows(dz, w.size(0), padding), at::flip(w, {0}));
}

at::Tensor eca_weight_grad(const at::Tensor& p, const at::Tensor& dz, int64_t k, Padding padding) {
  return at::mv(windows(p, k, padding).reshape({-1, k}).t(), dz.reshape({-1}));
}

}  // namespace fused_attn
