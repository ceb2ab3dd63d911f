// What every SE backend shares: parsing the variant names, the argument checks
// run before any memory is touched, the weights in the accumulation dtype.
#include "se.h"

#include <ATen/ops/div.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/hardswish.h>
#include <ATen/ops/hardswish_backward.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/silu_backward.h>
#include <ATen/ops/threshold_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/add.h>
#include <ATen/ops/relu6.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/neg.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/sigmoid_backward.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <limits>

namespace fused_attn {

Act parse_act(c10::string_view name) {
  if (name == "relu") return Act::ReLU;
  if (name == "silu" || name == "swish") return Act::SiLU;
  if (name == "gelu") return Act::GELU;
  if (name == "gelu_tanh") return Act::GELUTanh;
  if (name == "hard_swish") return Act::HardSwish;
  TORCH_CHECK_VALUE(false, "fused_attn: act must be one of relu, silu, gelu, gelu_tanh, hard_swish; got '",
                    std::string(name.data(), name.size()), "'");
}

Gate parse_gate(c10::string_view name) {
  if (name == "sigmoid") return Gate::Sigmoid;
  if (name == "hard_sigmoid") return Gate::HardSigmoid;
  TORCH_CHECK_VALUE(false, "fused_attn: gate must be one of sigmoid, hard_sigmoid; got '",
                    std::string(name.data(), name.size()), "'");
}

Pool parse_pool(c10::string_view name) {
  if (name == "avg") return Pool::Avg;
  if (name == "avgmax") return Pool::AvgMax;
  TORCH_CHECK_VALUE(false, "fused_attn: pool must be one of avg, avgmax; got '",
                    std::string(name.data(), name.size()), "'");
}

static void check_param(const at::Tensor& x, const at::Tensor& t, const char* name,
                        std::initializer_list<int64_t> shape) {
  TORCH_CHECK(t.device() == x.device(), "fused_attn: ", name, " is on ", t.device(),
              " but x is on ", x.device());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), "fused_attn: ", name, " has dtype ",
                   t.scalar_type(), " but x has dtype ", x.scalar_type(),
                   "; the weights must have the input's dtype");
  TORCH_CHECK_VALUE(t.sizes().equals(shape), "fused_attn: ", name, " must have shape ",
                    c10::IntArrayRef(shape), ", got ", t.sizes());
}

void check_se_args(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                   const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& b2) {
  check_x(x);
  const int64_t C = x.size(1);
  TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(1) == C, "fused_attn: fc1_weight must have shape [rd, ", C,
                    "] for x with C=", C, ", got ", w1.sizes());
  const int64_t rd = w1.size(0);
  check_param(x, w1, "fc1_weight", {rd, C});
  if (b1) check_param(x, *b1, "fc1_bias", {rd});
  if (w2) {
    check_param(x, *w2, "fc2_weight", {C, rd});
    if (b2) check_param(x, *b2, "fc2_bias", {C});
  } else {
    TORCH_CHECK_VALUE(rd == C, "fused_attn: without fc2_weight (effective SE) fc1_weight must be [C, C] = [",
                      C, ", ", C, "], got ", w1.sizes());
    TORCH_CHECK_VALUE(!b2, "fused_attn: fc2_bias given without fc2_weight");
  }
}

bool rows_dot_widens(at::ScalarType w, at::ScalarType acc) {
  return acc == at::kFloat && (w == at::kHalf || w == at::kBFloat16);
}

SeWeights se_weights(const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                     const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& b2,
                     at::ScalarType acc, bool keep_16bit) {
  auto cvt = [acc](const at::Tensor& t) { return t.to(acc).contiguous(); };
  auto matrix = [&](const at::Tensor& t) {
    return keep_16bit && rows_dot_widens(t.scalar_type(), acc) ? t.contiguous() : cvt(t);
  };
  SeWeights w;
  w.w1 = matrix(w1);
  if (b1) w.b1 = cvt(*b1);
  if (w2) w.w2 = matrix(*w2);
  if (b2) w.b2 = cvt(*b2);
  return w;
}

void check_se_backward_args(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w1,
                            const c10::optional<at::Tensor>& w2, const at::Tensor& pooled, const at::Tensor& maxv,
                            const at::Tensor& hidden, const at::Tensor& logits, Pool pool) {
  check_se_args(x, w1, c10::nullopt, w2, c10::nullopt);
  TORCH_CHECK_VALUE(dy.sizes() == x.sizes(), "fused_attn: grad_y must have x's shape ", x.sizes(), ", got ",
                    dy.sizes());
  TORCH_CHECK_TYPE(dy.scalar_type() == x.scalar_type(), "fused_attn: grad_y has dtype ", dy.scalar_type(),
                   " but x has ", x.scalar_type());
  TORCH_CHECK(dy.device() == x.device(), "fused_attn: grad_y is on ", dy.device(), " but x is on ", x.device());
  const int64_t N = x.size(0), C = x.size(1);
  const bool with_max = pool == Pool::AvgMax;
  const bool two = w2.has_value();
  const at::ScalarType acc = acc_dtype(x);
  auto check_saved = [&](const at::Tensor& t, const char* name, int64_t rows, int64_t cols) {
    TORCH_CHECK_VALUE(t.scalar_type() == acc && t.dim() == 2 && t.size(0) == rows && t.size(1) == cols &&
                          t.is_contiguous() && t.device() == x.device(),
                      "fused_attn: ", name, " must be a contiguous ", acc, " tensor of shape [", rows, ", ", cols,
                      "] on ", x.device(), ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
  };
  check_saved(pooled, "pooled", N, C);
  check_saved(logits, "logits", N, C);
  check_saved(maxv, "maxv", with_max ? N : 0, with_max ? C : 0);
  check_saved(hidden, "hidden", two ? N : 0, two ? w1.size(0) : 0);
}

at::ScalarType acc_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

bool kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_x(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 4, "fused_attn: x must be 4-D [N, C, H, W], got shape ", x.sizes());
  TORCH_CHECK_TYPE(kernel_dtype(x.scalar_type()), "fused_attn: x must be float32, float64, float16 or bfloat16, got ",
                   x.scalar_type());
}

Geometry geometry(const at::Tensor& x) {
  Geometry g;
  g.format = x.suggest_memory_format();
  g.x = x.contiguous(g.format);
  g.N = x.size(0);
  g.C = x.size(1);
  g.HW = x.size(2) * x.size(3);
  g.cl = g.format == at::MemoryFormat::ChannelsLast || g.HW == 1;
  return g;
}

at::Tensor gate_forward(Gate gate, const at::Tensor& z) {
  // Written out, as the reference defines it: ATen's CUDA hardsigmoid
  // multiplies by a float 1/6 even in double.
  return gate == Gate::Sigmoid ? at::sigmoid(z) : at::relu6(z.add(3)).div(6);
}

at::Tensor gate_backward(Gate gate, const at::Tensor& grad, const at::Tensor& z, const at::Tensor& g) {
  if (gate == Gate::Sigmoid) return at::sigmoid_backward(grad, g);  // grad·(1 − g)·g in one kernel
  return at::where(z.gt(-3).logical_and_(z.lt(3)), grad.div(6), at::zeros_like(grad));
}

at::Tensor activation(Act act, const at::Tensor& h) {
  switch (act) {
    case Act::ReLU: return at::relu(h);
    case Act::SiLU: return at::silu(h);
    case Act::GELU: return at::gelu(h, "none");
    case Act::GELUTanh: return at::gelu(h, "tanh");
    case Act::HardSwish: return at::hardswish(h);
  }
  TORCH_CHECK(false, "fused_attn: unknown activation");
}

at::Tensor activation_backward(Act act, const at::Tensor& grad, const at::Tensor& h) {
  switch (act) {
    case Act::ReLU: return at::threshold_backward(grad, h, 0);
    case Act::SiLU: return at::silu_backward(grad, h);
    case Act::GELU: return at::gelu_backward(grad, h, "none");
    case Act::GELUTanh: return at::gelu_backward(grad, h, "tanh");
    case Act::HardSwish: return at::hardswish_backward(grad, h);
  }
  TORCH_CHECK(false, "fused_attn: unknown activation");
}

SeForwardOutputs se_forward_outputs(const Geometry& geo, const at::Tensor& w1, bool two_layer, Pool pool) {
  const int64_t N = geo.N, C = geo.C;
  const auto opts = geo.x.options().dtype(acc_dtype(geo.x));
  const bool with_max = pool == Pool::AvgMax;
  SeForwardOutputs out;
  out.y = at::empty_like(geo.x);
  out.pooled = at::empty({N, C}, opts);
  out.maxv = at::empty({with_max ? N : 0, with_max ? C : 0}, opts);
  out.hidden = at::empty({two_layer ? N : 0, two_layer ? w1.size(0) : 0}, opts);
  out.logits = at::empty({N, C}, opts);
  for (at::Tensor* t : {&out.y, &out.pooled, &out.maxv, &out.hidden, &out.logits}) maybe_poison(*t);
  return out;
}

at::Tensor weight_grad_or_empty(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t.to(like.scalar_type()).contiguous() : at::empty({0}, like.options());
}

bool poison_enabled() {
  const char* v = std::getenv("FUSED_ATTN_DEBUG_POISON");
  return v != nullptr && v[0] != '\0' && v[0] != '0';
}

void maybe_poison(at::Tensor& t) {
  if (t.numel() > 0 && poison_enabled()) t.fill_(std::numeric_limits<double>::quiet_NaN());
}

}  // namespace fused_attn
