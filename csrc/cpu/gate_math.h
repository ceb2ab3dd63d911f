// Scalar gates, activations and their derivatives for the CPU excitations (SE, ECA, CBAM), in
// the accumulation type. PyTorch's definitions: sigmoid, and hard-sigmoid =
// relu6(z + 3) / 6 with slope 1/6 strictly inside (-3, 3), and 0 at a NaN z (as ATen's
// vectorized hardtanh backward gives it; its scalar tail passes grad through instead, so
// the reference's own choice depends on where in the tensor the NaN sits).
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

// The gates of n values at once: g[i] = gate(z[i]) (g may be z). Float
// sigmoids run on whole vectors (vec_math.h, the CPU's best ISA:
// sigmoid_into, se_kernel.cpp); every excitation computes its gates here, in
// the forward and again in the backward, so both directions see the same g.
void sigmoid_into(const float* z, float* g, int64_t n);
inline void sigmoid_into(const double* z, double* g, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = sigmoid(z[i]);
}

template <typename A>
inline void gate_into(Gate gate, const A* z, A* g, int64_t n) {
  if (gate == Gate::Sigmoid) {
    sigmoid_into(z, g, n);
  } else {
    for (int64_t i = 0; i < n; ++i) g[i] = gate_value(gate, z[i]);
  }
}

// d gate(z) / dz, times grad; g = gate(z).
template <typename A>
inline A gate_grad(Gate gate, A grad, A z, A g) {
  if (gate == Gate::Sigmoid) return grad * (A(1) - g) * g;
  return (z > A(-3) && z < A(3)) ? grad / A(6) : A(0);
}

// The hidden activations (PyTorch's formulas, aten/src/ATen/native/cpu/Activation.cpp).
template <typename A>
inline A act_forward(Act act, A h) {
  switch (act) {
    case Act::ReLU: return h > A(0) ? h : (h != h ? h : A(0));
    case Act::SiLU: return h * sigmoid(h);
    case Act::GELU: return A(0.5) * h * (A(1) + std::erf(h * A(M_SQRT1_2)));
    case Act::GELUTanh: {
      const A inner = A(M_SQRT2 * M_2_SQRTPI * 0.5) * (h + A(0.044715) * h * h * h);
      return A(0.5) * h * (A(1) + std::tanh(inner));
    }
    case Act::HardSwish: return h * std::min(std::max(h + A(3), A(0)), A(6)) / A(6);
  }
  return h;
}

// d act(h) / dh, times grad.
template <typename A>
inline A act_backward(Act act, A grad, A h) {
  switch (act) {
    case Act::ReLU: return h <= A(0) ? A(0) : grad;
    case Act::SiLU: {
      const A s = sigmoid(h);
      return grad * s * (A(1) + h * (A(1) - s));
    }
    case Act::GELU: {
      const A cdf = A(0.5) * (A(1) + std::erf(h * A(M_SQRT1_2)));
      const A pdf = std::exp(A(-0.5) * h * h) * A(M_2_SQRTPI * M_SQRT1_2 * 0.5);
      return grad * (cdf + h * pdf);
    }
    case Act::GELUTanh: {
      const A beta = A(M_SQRT2 * M_2_SQRTPI * 0.5), kappa = A(0.044715);
      const A t = std::tanh(beta * (h + kappa * h * h * h));
      const A left = A(0.5) * h, right = A(1) + t;
      return grad * (A(0.5) * right + left * (A(1) - t * t) * beta * (A(1) + A(3) * kappa * h * h));
    }
    case Act::HardSwish:
      return h < A(-3) ? A(0) : (h <= A(3) ? grad * (h / A(3) + A(0.5)) : grad);
  }
  return grad;
}

}  // namespace fused_attn::cpu
