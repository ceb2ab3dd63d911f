// Squeeze-and-Excitation: what the backends share.
//
//   p = pool(x)                       N×C   mean over H·W, or 0.5·mean + 0.5·max
//   z = W2·act(W1·p + b1) + b2        N×C   (one-layer "effective SE": z = W1·p + b1)
//   y = x · gate(z)[:, :, None, None]
//
// Each backend (csrc/cpu, csrc/cuda) implements the big-tensor passes (pool,
// rescale, their backward) and the excitation on N×C tensors, which it
// computes for a whole batch or chunk of samples at a time (a GEMM: the
// weights are read once per chunk, not once per sample), in the accumulation
// dtype: float, or double for double inputs.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <string>
#include <tuple>

namespace fused_attn {

enum class Act : int8_t { ReLU, SiLU, GELU, GELUTanh, HardSwish };
enum class Gate : int8_t { Sigmoid, HardSigmoid };
enum class Pool : int8_t { Avg, AvgMax };

// Parse the string arguments of the op schema; unknown names raise with the
// list of accepted ones.
Act parse_act(c10::string_view name);
Gate parse_gate(c10::string_view name);
Pool parse_pool(c10::string_view name);

// Excitation weights, converted once per call to the accumulation dtype.
struct SeWeights {
  at::Tensor w1;                  // [rd, C], or [C, C] for effective SE
  c10::optional<at::Tensor> b1;   // [rd]
  c10::optional<at::Tensor> w2;   // [C, rd]; absent for effective SE
  c10::optional<at::Tensor> b2;   // [C]
  bool two_layer() const { return w2.has_value(); }
};

// Whether weights of dtype w may stay as they are for accumulation in acc:
// float16 / bfloat16 under float, which the CPU forward's row kernels
// (rows_dot) widen as they load.
bool rows_dot_widens(at::ScalarType w, at::ScalarType acc);

// Contiguous, in acc_dtype; with keep_16bit, w1 and w2 stay as they are where
// rows_dot_widens them.
SeWeights se_weights(const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                     const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& b2,
                     at::ScalarType acc_dtype, bool keep_16bit = false);

// Validates x and the weights (rank, shapes that chain to C, dtype, device) and
// raises with a message naming the argument. Shared by every backend.
void check_se_args(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                   const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& b2);

// The backward's saved tensors: accumulation dtype, [rows, cols], contiguous.
// Raises naming the argument; shared by every backend.
void check_se_backward_args(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w1,
                            const c10::optional<at::Tensor>& w2, const at::Tensor& pooled, const at::Tensor& maxv,
                            const at::Tensor& hidden, const at::Tensor& logits, Pool pool);

// The accumulation dtype: double for double x, float otherwise.
at::ScalarType acc_dtype(const at::Tensor& x);

// Whether t is one of the four dtypes the kernels take: float32, float64,
// float16, bfloat16.
bool kernel_dtype(at::ScalarType t);

// x is 4-D [N, C, H, W] of one of those dtypes (SE's and ECA's first check).
void check_x(const at::Tensor& x);

// x as the kernels see it: dense in its suggested memory format, either N
// rows of C·HW (NCHW: C rows of HW per sample) or N·HW rows of C
// (channels_last, and any layout when H·W == 1, where both are the same N×C
// matrix).
struct Geometry {
  at::Tensor x;          // contiguous in `format`
  at::MemoryFormat format;
  int64_t N, C, HW;
  bool cl;               // rows are the C channels of a pixel
  int64_t row() const { return cl ? C : HW; }  // elements per contiguous row
};
Geometry geometry(const at::Tensor& x);

// The gates on [N, C] tensors, in ATen ops (any device): g = gate(z), and
// dL/dz from dL/dg. The hard-sigmoid's slope is written out as 1/6 in z's
// dtype (the reference's definition).
at::Tensor gate_forward(Gate gate, const at::Tensor& z);
at::Tensor gate_backward(Gate gate, const at::Tensor& grad, const at::Tensor& z, const at::Tensor& g);

// The MLP's hidden activation in ATen ops (any device), and dL/dh from
// dL/dact(h).
at::Tensor activation(Act act, const at::Tensor& h);
at::Tensor activation_backward(Act act, const at::Tensor& grad, const at::Tensor& h);

// The outputs of se_forward, allocated for every backend the same way (and
// poisoned under FUSED_ATTN_DEBUG_POISON): y dense like geo.x; pooled and
// logits [N, C]; maxv [N, C] only for the avg+max pool; hidden [N, rd] only
// for the two-layer SE; all but y in the accumulation dtype.
struct SeForwardOutputs {
  at::Tensor y, pooled, maxv, hidden, logits;
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tuple() const {
    return {y, pooled, maxv, hidden, logits};
  }
};
SeForwardOutputs se_forward_outputs(const Geometry& geo, const at::Tensor& w1, bool two_layer, Pool pool);

// A weight gradient as the backward ops return it: in the weight's dtype,
// or a [0] tensor when the parameter does not exist (t undefined).
at::Tensor weight_grad_or_empty(const at::Tensor& t, const at::Tensor& like);

// Debug aid for tests: when FUSED_ATTN_DEBUG_POISON is set, freshly allocated
// outputs are filled with NaN before a kernel writes them, so an element the
// kernel forgets to write shows up as a mismatch.
bool poison_enabled();
void maybe_poison(at::Tensor& t);

// Build information (0 / "" when built without CUDA).
int cuda_compiled_version();
const char* cuda_compiled_archs();

}  // namespace fused_attn
