// fused_attn's operator schemas and the Python module that loads them.
//
// Every backend registers its kernels for these schemas in its own file
// (csrc/cpu/*, csrc/cuda/*); autograd, one kernel per forward op for every
// device, in csrc/autograd.cpp; fake kernels are registered from Python
// (fused_attn/ops/). There is no pybind11: importing fused_attn._C runs the
// static registrations below, which is all the module is for.
#include <Python.h>
#include <torch/library.h>

#include "cpu/se_cpu_isa.h"
#include "se.h"

TORCH_LIBRARY(fused_attn, m) {
  // Squeeze-and-Excitation. Returns (y, pooled, maxv, hidden, logits): the
  // output and what the backward needs, all small except y. pooled, maxv,
  // hidden and logits are in the accumulation dtype (float64 for float64 x,
  // float32 otherwise); maxv is [0, 0] unless pool == "avgmax", hidden is
  // [0, 0] for the one-layer (effective) SE, where fc2_weight is None.
  m.def(
      "se_forward(Tensor x, Tensor fc1_weight, Tensor? fc1_bias, Tensor? fc2_weight, Tensor? fc2_bias, "
      "str act, str gate, str pool) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Returns (grad_x, grad_fc1_weight, grad_fc1_bias, grad_fc2_weight,
  // grad_fc2_bias); a gradient whose parameter does not exist is a [0] tensor.
  m.def(
      "se_backward(Tensor grad_y, Tensor x, Tensor fc1_weight, Tensor? fc2_weight, Tensor pooled, Tensor maxv, "
      "Tensor hidden, Tensor logits, str act, str gate, str pool, bool has_fc1_bias, bool has_fc2_bias) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Efficient Channel Attention. conv_weight is [k] (k odd), conv_bias [1].
  // Returns (y, pooled, logits); pooled and logits [N, C] in the
  // accumulation dtype.
  m.def("eca_forward(Tensor x, Tensor conv_weight, Tensor? conv_bias, str padding, str gate) -> (Tensor, Tensor, Tensor)");
  // Returns (grad_x, grad_conv_weight, grad_conv_bias); grad_conv_bias is a
  // [0] tensor when there is no bias.
  m.def(
      "eca_backward(Tensor grad_y, Tensor x, Tensor conv_weight, Tensor pooled, Tensor logits, str padding, "
      "str gate, bool has_bias) -> (Tensor, Tensor, Tensor)");
  // CBAM: channel gate (shared MLP on the spatial mean and max, or on their
  // average when light), then spatial gate (k×k conv on the per-pixel channel
  // mean and max of x1, BatchNorm, gate). spatial_weight is [2, k, k] in the
  // order the module stacks its map ([mean, max], or [max, mean] when
  // max_first), [1, k, k] when light. The BatchNorm normalizes with the
  // running statistics when both are given, else with the batch's (the
  // caller updates running statistics from bn_stats). Returns (y, pooled
  // [2, N, C] (spatial mean, max of x), logits [N, C] (pre-gate), smap
  // [2, N, H·W] (channel mean, max of x1), z [N, H·W] (conv output, pre-BN),
  // bn_stats [2] (the mean and biased variance used)); all but y in the
  // accumulation dtype.
  m.def(
      "cbam_forward(Tensor x, Tensor fc1_weight, Tensor? fc1_bias, Tensor fc2_weight, Tensor? fc2_bias, "
      "Tensor spatial_weight, Tensor? bn_weight, Tensor? bn_bias, Tensor? bn_running_mean, "
      "Tensor? bn_running_var, float bn_eps, str act, str gate, bool light, bool max_first) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Returns (grad_x, grad_fc1_weight, grad_fc1_bias, grad_fc2_weight,
  // grad_fc2_bias, grad_spatial_weight, grad_bn_weight, grad_bn_bias); a [0]
  // tensor where the parameter does not exist. bn_batch_stats: whether the
  // forward normalized with the batch's statistics (their gradient flows).
  m.def(
      "cbam_backward(Tensor grad_y, Tensor x, Tensor fc1_weight, Tensor? fc1_bias, Tensor fc2_weight, "
      "Tensor? fc2_bias, Tensor spatial_weight, Tensor? bn_weight, Tensor? bn_bias, Tensor pooled, Tensor logits, "
      "Tensor smap, Tensor z, Tensor bn_stats, bool bn_batch_stats, float bn_eps, str act, str gate, bool light, "
      "bool max_first) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The same gradients as differentiable graphs, for a backward that runs
  // with create_graph=True (a second derivative: gradient penalties,
  // Hessian-vector products): the eager reference's gradient taken by
  // autograd, implemented in Python for every device as
  // CompositeImplicitAutograd (fused_attn/ops/graph_backward.py). They take
  // the forward's inputs and return what the *_backward ops return.
  m.def(
      "se_backward_graph(Tensor grad_y, Tensor x, Tensor fc1_weight, Tensor? fc1_bias, Tensor? fc2_weight, "
      "Tensor? fc2_bias, str act, str gate, str pool) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "eca_backward_graph(Tensor grad_y, Tensor x, Tensor conv_weight, Tensor? conv_bias, str padding, str gate) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "cbam_backward_graph(Tensor grad_y, Tensor x, Tensor fc1_weight, Tensor? fc1_bias, Tensor fc2_weight, "
      "Tensor? fc2_bias, Tensor spatial_weight, Tensor? bn_weight, Tensor? bn_bias, Tensor? bn_running_mean, "
      "Tensor? bn_running_var, float bn_eps, str act, str gate, bool light, bool max_first) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

#ifndef FUSED_ATTN_WITH_CUDA
namespace fused_attn {
int cuda_compiled_version() { return 0; }
const char* cuda_compiled_archs() { return ""; }
}  // namespace fused_attn
#endif

// Whether the CPU kernels were compiled with OpenMP (setup.py leaves it out
// where the compiler cannot build and link it, Apple's Clang without libomp
// for one): without it at::parallel_for, an inline template, runs every
// range on the calling thread. Every source gets the same flags.
#ifdef _OPENMP
static constexpr int kBuiltWithOpenMP = 1;
#else
static constexpr int kBuiltWithOpenMP = 0;
#endif

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "fused_attn's compiled kernels; importing it registers them with torch.library.",
      -1,       // m_size
      nullptr,  // m_methods
      nullptr,  // m_slots
      nullptr,  // m_traverse
      nullptr,  // m_clear
      nullptr,  // m_free
  };
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  if (PyModule_AddIntConstant(m, "CUDA_VERSION", fused_attn::cuda_compiled_version()) < 0 ||
      PyModule_AddStringConstant(m, "CUDA_ARCHS", fused_attn::cuda_compiled_archs()) < 0 ||
      PyModule_AddStringConstant(m, "CPU_ISA", fused_attn::cpu::isa_name()) < 0 ||
      PyModule_AddIntConstant(m, "CPU_OPENMP", kBuiltWithOpenMP) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
