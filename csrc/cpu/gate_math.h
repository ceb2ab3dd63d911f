// Scalar gates and their derivatives for the CPU excitations (SE, ECA), in
// the accumulation type. PyTorch's definitions: sigmoid, and hard-sigmoid =
// relu6(z + 3) / 6 with slope 1/6 strictly inside (-3, 3).
#pragma once

#include "../se.h"

#include <algorithm>
#include <cmath>

namespace fused_attn::cpu {

template <typename A>
inline A sigmoid(A z) {
  return A(1) / (A(1) + std::exp(-z));
}

template <typename A>
inline A gate_value(Gate gate, A z) {
  return gate == Gate::Sigmoid ? sigmoid(z) : std::min(std::max(z + A(3), A(0)), A(6)) / A(6);
}

// d gate(z) / dz, times grad; g = gate(z).
template <typename A>
inline A gate_grad(Gate gate, A grad, A z, A g) {
  if (gate == Gate::Sigmoid) return grad * (A(1) - g) * g;
  return (z > A(-3) && z < A(3)) ? grad / A(6) : A(0);
}

}  // namespace fused_attn::cpu
