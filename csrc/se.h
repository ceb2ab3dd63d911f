// Squeeze-and-Excitation: what the backends share.
//
//   p = pool(x)                       N×C   mean over H·W, or 0.5·mean + 0.5·max
//   z = W2·act(W1·p + b1) + b2        N×C   (one-layer "effective SE": z = W1·p + b1)
//   y = x · gate(z)[:, :, None, None]
//
// The big-tensor passes (pool, rescale, their backward) are per backend
// (csrc/cpu, csrc/cuda). The excitation works on N×C tensors only, so it is
// written once here with ATen ops in the accumulation dtype (float, or double
// for double inputs) and computed for a whole batch (or chunk of samples) at a
// time: the weights are read once per batch, not once per sample.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <string>

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

SeWeights se_weights(const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                     const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& b2,
                     at::ScalarType acc_dtype);

// Weight gradients accumulated across chunks of samples, in the accumulation
// dtype. Undefined where the weight does not exist.
struct SeWeightGrads {
  at::Tensor dw1, db1, dw2, db2;
};

// Validates x and the weights (rank, shapes that chain to C, dtype, device) and
// raises with a message naming the argument. Shared by every backend.
void check_se_args(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                   const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& b2);

// p: [B, C] pooled input (accumulation dtype). Writes the pre-activation
// `hidden` [B, rd] (two-layer only) and the pre-gate `logits` [B, C] into the
// given slices and returns gate(logits) [B, C].
at::Tensor se_excite_forward(const at::Tensor& p, const SeWeights& w, Act act, Gate gate,
                             at::Tensor& hidden, at::Tensor& logits);

// gate(logits), recomputed in the backward from the saved logits.
at::Tensor se_gate(const at::Tensor& logits, Gate gate);

// s: [B, C] = Σ_hw dy·x; g = se_gate(logits). Returns dL/dp [B, C]; adds this
// chunk's weight gradients into `grads` (a fixed order: deterministic).
at::Tensor se_excite_backward(const at::Tensor& s, const at::Tensor& p, const at::Tensor& hidden,
                              const at::Tensor& logits, const at::Tensor& g, const SeWeights& w, Act act,
                              Gate gate, SeWeightGrads& grads);

// Debug aid for tests: when FUSED_ATTN_DEBUG_POISON is set, freshly allocated
// outputs are filled with NaN before a kernel writes them, so an element the
// kernel forgets to write shows up as a mismatch.
bool poison_enabled();
void maybe_poison(at::Tensor& t);

// Build information (0 / "" when built without CUDA).
int cuda_compiled_version();
const char* cuda_compiled_archs();

}  // namespace fused_attn
