// The SE excitation on the CPU (se_excite.cpp). All tensors are contiguous,
// in the accumulation dtype, with one row per sample of the chunk.
#pragma once

#include "../se.h"

namespace fused_attn::cpu {

// Chunks of at most this many samples take the forward's products through
// rows_dot (channel_gate.h), which reads 16-bit weights as they are; larger
// ones through BLAS, which needs them in float first.
constexpr int64_t kExciteFewRows = 16;

// p [nb, C] → hidden [nb, rd] (two-layer only; pre-activation), logits
// [nb, C] (pre-gate) and g = gate(logits) [nb, C].
void excite_forward(const SeWeights& w, Act act, Gate gate, const at::Tensor& p, at::Tensor& hidden,
                    at::Tensor& logits, at::Tensor& g);

// s = Σ_hw dy·x [nb, C] → g = gate(logits), dz = dL/dlogits [nb, C],
// dh = dL/dhidden [nb, rd] (two-layer only) and dp = dL/dp [nb, C].
void excite_backward(const SeWeights& w, Act act, Gate gate, const at::Tensor& s, const at::Tensor& hidden,
                     const at::Tensor& logits, at::Tensor& g, at::Tensor& dz, at::Tensor& dh, at::Tensor& dp);

struct ExciteWeightGrads {
  at::Tensor dw1, db1, dw2, db2;  // undefined where the parameter does not exist
};

// Weight gradients of the whole batch, one GEMM each, from every sample's dz
// and dh: a fixed order whatever the chunking.
ExciteWeightGrads excite_weight_grads(const SeWeights& w, Act act, const at::Tensor& pooled,
                                      const at::Tensor& hidden, const at::Tensor& dz, const at::Tensor& dh,
                                      bool has_b1, bool has_b2);

}  // namespace fused_attn::cpu
