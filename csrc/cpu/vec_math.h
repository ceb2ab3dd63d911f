// The logistic sigmoid over float arrays on whole vectors, for the gates of
// every CPU excitation (SE, ECA, CBAM): one gate per channel of every sample,
// 16 K of them per call at ResNet-50's last SE site, where std::exp one value
// at a time took ~9 ns each (~0.14 ms a call, a quarter of SE's forward there).
//
// Compiled once per ISA like se_cpu_kernels.h (included inside
// namespace fused_attn::cpu::<isa>, after the torch headers). GCC vectors of
// 8 floats: AVX2 registers in the AVX2 build, pairs of SSE registers in the
// baseline one.
//
// exp(t), t = -z: t clamped to [-87, 88.3762626647949] (e^-87 ≈ 1.6e-38 is
// below float's resolution of 1 + e^-87; at 88.376 e^t stays finite), split as
// t = n·ln2 + r with |r| ≤ ln2 / 2 (ln2 in two parts so n·ln2 is exact), e^r by
// a degree-7 polynomial (Taylor coefficients with the last ones adjusted as in
// Cephes' expf, relative error ~1e-7 on that interval), times 2^n built in the
// exponent bits. Then 1 / (1 + e^t), and 0 where e^t overflows (t above
// 88.7228, as 1 / (1 + inf) is for torch.sigmoid): between 88.376 and that the
// clamp leaves an error below 1.3e-39. NaN stays NaN (the clamps keep it, the
// arithmetic propagates it); +inf gives 1, -inf 0. Measured against float64:
// at most 1.6 ulp (normal range), 1.4e-7 absolute.
// The tail of an array goes through the same vector code on a padded copy, so
// every element gets the same formula wherever it sits.

typedef float F32x8 __attribute__((vector_size(32)));
typedef int32_t S32x8 __attribute__((vector_size(32)));
typedef uint32_t B32x8 __attribute__((vector_size(32)));

// In place, by reference: a 32-byte vector returned by value would change the
// baseline build's ABI (GCC warns).
inline void sigmoid_vec8(F32x8& z) {
  const F32x8 hi = F32x8{} + 88.3762626647949f, lo = F32x8{} - 87.0f;
  const F32x8 t0 = -z;
  F32x8 t = t0 > hi ? hi : t0;  // a NaN fails both comparisons and stays
  t = t < lo ? lo : t;
  // n = floor(t·log2(e) + 1/2), from truncation corrected for negatives.
  const F32x8 fx = t * 1.44269504088896341f + 0.5f;
  S32x8 n = __builtin_convertvector(fx, S32x8);
  F32x8 fn = __builtin_convertvector(n, F32x8);
  const S32x8 above = fn > fx;  // -1 where truncation rounded up
  n += above;
  fn = __builtin_convertvector(n, F32x8);
  const F32x8 r = (t - fn * 0.693359375f) - fn * -2.12194440e-4f;
  const F32x8 r2 = r * r;
  F32x8 p = F32x8{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const F32x8 er = p * r2 + r + 1.0f;
  F32x8 scale;
  const B32x8 bits = reinterpret_cast<B32x8>(n + 127) << 23;
  std::memcpy(&scale, &bits, sizeof(scale));
  const F32x8 g = 1.0f / (1.0f + er * scale);
  // Where e^t overflows float (as std::exp and torch.sigmoid's exp do), the
  // gate is exactly 0: an infinite x times it is NaN, as in eager PyTorch.
  z = t0 > 88.72283935546875f ? F32x8{} : g;
}

void sigmoid_rows(const float* z, float* g, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    F32x8 v;
    std::memcpy(&v, z + i, sizeof(v));
    sigmoid_vec8(v);
    std::memcpy(g + i, &v, sizeof(v));
  }
  if (i < n) {
    F32x8 v = {};
    std::memcpy(&v, z + i, (n - i) * sizeof(float));
    sigmoid_vec8(v);
    std::memcpy(g + i, &v, (n - i) * sizeof(float));
  }
}
