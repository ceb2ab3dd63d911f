// Autograd for the compiled ops: one kernel per forward op on the Autograd
// dispatch key, shared by every device (it redispatches to the CPU or CUDA
// kernel below it, or to the fake kernel while torch.compile traces).
//
// Written in C++ rather than with torch.library.register_autograd because the
// Python layer costs more than the kernels it wraps at small sizes: measured
// on the 2-core CPU VM, SE's op took ~35 µs per call under no_grad through the
// Python autograd layer (11 µs below it) and ~95 µs with grad. The Triton ops
// (fused_attn/triton) keep their Python autograd (fused_attn/ops/*.py), with
// the same saved tensors and the same backward calls as here.
//
// Each forward saves what its backward op takes, marks the small saved
// outputs non-differentiable, and runs below autograd; each backward calls the
// backward op and returns a gradient for every tensor input (undefined where
// the parameter is absent). Autocast is excluded inside both: the ops choose
// their own precisions, so ATen calls inside a kernel must not be re-cast.
//
// A backward that runs with create_graph=True (grad mode on inside it: a
// second derivative to come) calls the *_backward_graph op instead, the
// reference's gradient as a differentiable graph (fused_attn/ops/
// graph_backward.py): the backward ops' outputs carry no autograd history,
// and a second derivative through them would silently be zero.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <string>
#include <tuple>

namespace fused_attn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;

// The op `name`, typed (each call site keeps its handle in a static).
template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

at::Tensor undefined_unless(bool keep, at::Tensor t) { return keep ? std::move(t) : at::Tensor(); }

OptTensor optional_of(const at::Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); }
bool present(const OptTensor& t) { return t.has_value() && t->defined(); }

// Whether a backward of x's op must return its gradients as a graph: it runs
// with create_graph=True, and y is not empty (when it is, nothing depends on
// the gradients: the fused backward's constants stand). The Triton ops'
// autograd asks the same of fused_attn/ops/se.py's wants_graph.
bool wants_graph(const at::Tensor& x) { return at::GradMode::is_enabled() && x.numel() > 0; }

// --- SE ---------------------------------------------------------------------

using SeForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, c10::string_view,
    c10::string_view, c10::string_view);
using SeBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, c10::string_view, c10::string_view, c10::string_view, bool, bool);
using SeBackwardGraphSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
    c10::string_view, c10::string_view, c10::string_view);

struct SeFunction : torch::autograd::Function<SeFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1,
                               const OptTensor& w2, const OptTensor& b2, c10::string_view act, c10::string_view gate,
                               c10::string_view pool) {
    auto [y, pooled, maxv, hidden, logits] = [&] {
      at::AutoDispatchBelowADInplaceOrView below;
      NoAutocast no_autocast;
      static const auto op = find_op<SeForwardSig>("fused_attn::se_forward");
      return op.call(x, w1, b1, w2, b2, act, gate, pool);
    }();
    ctx->save_for_backward({x, w1, w2.value_or(at::Tensor()), pooled, maxv, hidden, logits, b1.value_or(at::Tensor()),
                            b2.value_or(at::Tensor())});
    ctx->saved_data["act"] = std::string(act);
    ctx->saved_data["gate"] = std::string(gate);
    ctx->saved_data["pool"] = std::string(pool);
    ctx->saved_data["has_b1"] = b1.has_value() && b1->defined();
    ctx->saved_data["has_b2"] = b2.has_value() && b2->defined();
    ctx->mark_non_differentiable({pooled, maxv, hidden, logits});
    return {y, pooled, maxv, hidden, logits};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor& w2 = s[2];
    const bool has_b1 = ctx->saved_data["has_b1"].toBool(), has_b2 = ctx->saved_data["has_b2"].toBool();
    NoAutocast no_autocast;
    if (wants_graph(s[0])) {
      static const auto graph_op = find_op<SeBackwardGraphSig>("fused_attn::se_backward_graph");
      auto [dx, dw1, db1, dw2, db2] = graph_op.call(
          grads[0], s[0], s[1], optional_of(s[7]), optional_of(w2), optional_of(s[8]),
          ctx->saved_data["act"].toStringRef(), ctx->saved_data["gate"].toStringRef(),
          ctx->saved_data["pool"].toStringRef());
      return {dx, dw1, undefined_unless(has_b1, db1), undefined_unless(w2.defined(), dw2),
              undefined_unless(has_b2 && w2.defined(), db2), {}, {}, {}};
    }
    static const auto op = find_op<SeBackwardSig>("fused_attn::se_backward");
    auto [dx, dw1, db1, dw2, db2] = op.call(grads[0], s[0], s[1], w2.defined() ? OptTensor(w2) : OptTensor(), s[3],
                                              s[4], s[5], s[6], ctx->saved_data["act"].toStringRef(),
                                              ctx->saved_data["gate"].toStringRef(),
                                              ctx->saved_data["pool"].toStringRef(), has_b1, has_b2);
    return {dx, dw1, undefined_unless(has_b1, db1), undefined_unless(w2.defined(), dw2),
            undefined_unless(has_b2 && w2.defined(), db2), {}, {}, {}};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_forward_autograd(
    const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1, const OptTensor& w2, const OptTensor& b2,
    c10::string_view act, c10::string_view gate, c10::string_view pool) {
  auto out = SeFunction::apply(x, w1, b1, w2, b2, act, gate, pool);
  return {out[0], out[1], out[2], out[3], out[4]};
}

// --- ECA --------------------------------------------------------------------

using EcaForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                     const OptTensor&, c10::string_view,
                                                                     c10::string_view);
using EcaBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                      const at::Tensor&, const at::Tensor&,
                                                                      const at::Tensor&, c10::string_view,
                                                                      c10::string_view, bool);
using EcaBackwardGraphSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                           const at::Tensor&, const OptTensor&,
                                                                           c10::string_view, c10::string_view);

struct EcaFunction : torch::autograd::Function<EcaFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const OptTensor& b,
                               c10::string_view padding, c10::string_view gate) {
    auto [y, pooled, logits] = [&] {
      at::AutoDispatchBelowADInplaceOrView below;
      NoAutocast no_autocast;
      static const auto op = find_op<EcaForwardSig>("fused_attn::eca_forward");
      return op.call(x, w, b, padding, gate);
    }();
    ctx->save_for_backward({x, w, pooled, logits, b.value_or(at::Tensor())});
    ctx->saved_data["padding"] = std::string(padding);
    ctx->saved_data["gate"] = std::string(gate);
    ctx->saved_data["has_bias"] = b.has_value() && b->defined();
    ctx->mark_non_differentiable({pooled, logits});
    return {y, pooled, logits};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    NoAutocast no_autocast;
    if (wants_graph(s[0])) {
      static const auto graph_op = find_op<EcaBackwardGraphSig>("fused_attn::eca_backward_graph");
      auto [dx, dw, db] = graph_op.call(grads[0], s[0], s[1], optional_of(s[4]),
                                        ctx->saved_data["padding"].toStringRef(),
                                        ctx->saved_data["gate"].toStringRef());
      return {dx, dw, undefined_unless(has_bias, db), {}, {}};
    }
    static const auto op = find_op<EcaBackwardSig>("fused_attn::eca_backward");
    auto [dx, dw, db] = op.call(grads[0], s[0], s[1], s[2], s[3], ctx->saved_data["padding"].toStringRef(),
                                  ctx->saved_data["gate"].toStringRef(), has_bias);
    return {dx, dw, undefined_unless(has_bias, db), {}, {}};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> eca_forward_autograd(const at::Tensor& x, const at::Tensor& w,
                                                                    const OptTensor& b, c10::string_view padding,
                                                                    c10::string_view gate) {
  auto out = EcaFunction::apply(x, w, b, padding, gate);
  return {out[0], out[1], out[2]};
}

// --- CBAM -------------------------------------------------------------------

using Tensor6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensor8 =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using CbamForwardSig = Tensor6(const at::Tensor&, const at::Tensor&, const OptTensor&, const at::Tensor&,
                               const OptTensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                               const OptTensor&, const OptTensor&, double, c10::string_view, c10::string_view, bool,
                               bool);
using CbamBackwardSig = Tensor8(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                                const at::Tensor&, const OptTensor&, const at::Tensor&, const OptTensor&,
                                const OptTensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, const at::Tensor&, bool, double, c10::string_view,
                                c10::string_view, bool, bool);
using CbamBackwardGraphSig = Tensor8(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                                     const at::Tensor&, const OptTensor&, const at::Tensor&, const OptTensor&,
                                     const OptTensor&, const OptTensor&, const OptTensor&, double, c10::string_view,
                                     c10::string_view, bool, bool);

struct CbamFunction : torch::autograd::Function<CbamFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1,
                               const at::Tensor& w2, const OptTensor& b2, const at::Tensor& ws,
                               const OptTensor& bn_w, const OptTensor& bn_b, const OptTensor& bn_rm,
                               const OptTensor& bn_rv, double eps, c10::string_view act, c10::string_view gate,
                               bool light, bool max_first) {
    auto [y, pooled, logits, smap, z, stats] = [&] {
      at::AutoDispatchBelowADInplaceOrView below;
      NoAutocast no_autocast;
      static const auto op = find_op<CbamForwardSig>("fused_attn::cbam_forward");
      return op.call(x, w1, b1, w2, b2, ws, bn_w, bn_b, bn_rm, bn_rv, eps, act, gate, light, max_first);
    }();
    const auto value = [](const OptTensor& t) { return t.value_or(at::Tensor()); };
    ctx->save_for_backward({x, w1, value(b1), w2, value(b2), ws, value(bn_w), value(bn_b), pooled, logits, smap, z,
                            stats});
    ctx->saved_data["batch_stats"] = !present(bn_rm) || !present(bn_rv);
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["act"] = std::string(act);
    ctx->saved_data["gate"] = std::string(gate);
    ctx->saved_data["light"] = light;
    ctx->saved_data["max_first"] = max_first;
    ctx->mark_non_differentiable({pooled, logits, smap, z, stats});
    return {y, pooled, logits, smap, z, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    auto& d = ctx->saved_data;
    NoAutocast no_autocast;
    auto [dx, dw1, db1, dw2, db2, dws, dbnw, dbnb] = [&] {
      if (wants_graph(s[0])) {
        static const auto graph_op = find_op<CbamBackwardGraphSig>("fused_attn::cbam_backward_graph");
        // In eval mode bn_stats holds the running statistics the forward
        // normalized with (saved, so version-checked: a training forward
        // since then updated the buffers in place).
        const bool eval = !d["batch_stats"].toBool();
        const at::Tensor& stats = s[12];
        return graph_op.call(grads[0], s[0], s[1], optional_of(s[2]), s[3], optional_of(s[4]), s[5],
                             optional_of(s[6]), optional_of(s[7]),
                             eval ? OptTensor(stats.narrow(0, 0, 1)) : OptTensor(),
                             eval ? OptTensor(stats.narrow(0, 1, 1)) : OptTensor(), d["eps"].toDouble(),
                             d["act"].toStringRef(), d["gate"].toStringRef(), d["light"].toBool(),
                             d["max_first"].toBool());
      }
      static const auto op = find_op<CbamBackwardSig>("fused_attn::cbam_backward");
      return op.call(grads[0], s[0], s[1], optional_of(s[2]), s[3], optional_of(s[4]), s[5], optional_of(s[6]),
                     optional_of(s[7]), s[8], s[9], s[10], s[11], s[12], d["batch_stats"].toBool(),
                     d["eps"].toDouble(), d["act"].toStringRef(), d["gate"].toStringRef(), d["light"].toBool(),
                     d["max_first"].toBool());
    }();
    return {dx,
            dw1,
            undefined_unless(s[2].defined(), db1),
            dw2,
            undefined_unless(s[4].defined(), db2),
            dws,
            undefined_unless(s[6].defined(), dbnw),
            undefined_unless(s[7].defined(), dbnb),
            {},
            {},
            {},
            {},
            {},
            {},
            {}};
  }
};

Tensor6 cbam_forward_autograd(const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& w2,
                              const OptTensor& b2, const at::Tensor& ws, const OptTensor& bn_w, const OptTensor& bn_b,
                              const OptTensor& bn_rm, const OptTensor& bn_rv, double eps, c10::string_view act,
                              c10::string_view gate, bool light, bool max_first) {
  auto out = CbamFunction::apply(x, w1, b1, w2, b2, ws, bn_w, bn_b, bn_rm, bn_rv, eps, act, gate, light, max_first);
  return {out[0], out[1], out[2], out[3], out[4], out[5]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_attn, Autograd, m) {
  m.impl("se_forward", &se_forward_autograd);
  m.impl("eca_forward", &eca_forward_autograd);
  m.impl("cbam_forward", &cbam_forward_autograd);
}

}  // namespace fused_attn
