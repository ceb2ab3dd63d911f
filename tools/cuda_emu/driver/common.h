// Test helpers: element types, independent reference rounding, buffers, comparisons.
#pragma once
#include "emu.h"
#include "se_cuda.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

using fused_attn::cuda::DType;

// Reference rounding of a double to `bits` significant bits with the given
// minimum quantum exponent (subnormals) and overflow threshold, ties to even.
inline double ref_round_bits(double v, int bits, int min_q, double maxv) {
  if (std::isnan(v) || std::isinf(v) || v == 0) return v;
  int e;
  std::frexp(v, &e);
  const int q = std::max(e - bits, min_q);
  const double r = std::ldexp(std::nearbyint(std::ldexp(v, -q)), q);
  if (std::fabs(r) > maxv) return std::copysign(INFINITY, v);
  return r;
}
// Values a float rounds to in each type (computed from the float, as the kernels do).
inline double ref_round_half(float f) { return ref_round_bits(f, 11, -24, 65504.0); }
inline double ref_round_bf16(float f) { return ref_round_bits(f, 8, -133, 3.3895313892515355e38); }

template <class T> struct Ty;
template <> struct Ty<float> {
  using A = float;
  static constexpr DType dt = DType::F32;
  static constexpr const char* name = "f32";
  static double to_d(float v) { return v; }
  static float from_d(double v) { return static_cast<float>(v); }
  static double round_acc(float v) { return v; }   // x·g rounded to T from the acc value
  static double ulp(double r) { int e; std::frexp(r, &e); return std::ldexp(1.0, std::max(e - 24, -149)); }
};
template <> struct Ty<double> {
  using A = double;
  static constexpr DType dt = DType::F64;
  static constexpr const char* name = "f64";
  static double to_d(double v) { return v; }
  static double from_d(double v) { return v; }
  static double round_acc(double v) { return v; }
  static double ulp(double r) { int e; std::frexp(r, &e); return std::ldexp(1.0, std::max(e - 53, -1074)); }
};
template <> struct Ty<__half> {
  using A = float;
  static constexpr DType dt = DType::F16;
  static constexpr const char* name = "f16";
  static double to_d(__half v) { return __half2float(v); }
  static __half from_d(double v) { return __float2half_rn(static_cast<float>(ref_round_half(static_cast<float>(v)))); }
  static double round_acc(float v) { return ref_round_half(v); }
  static double ulp(double r) { int e; std::frexp(r, &e); return std::ldexp(1.0, std::max(e - 11, -24)); }
};
template <> struct Ty<__nv_bfloat16> {
  using A = float;
  static constexpr DType dt = DType::BF16;
  static constexpr const char* name = "bf16";
  static double to_d(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __nv_bfloat16 from_d(double v) {
    return __float2bfloat16_rn(static_cast<float>(ref_round_bf16(static_cast<float>(v))));
  }
  static double round_acc(float v) { return ref_round_bf16(v); }
  static double ulp(double r) { int e; std::frexp(r, &e); return std::ldexp(1.0, std::max(e - 8, -133)); }
};

// An exactly sized heap buffer (ASan red zones right after it), starting
// `mis` elements past a 64-byte boundary.
template <class E>
struct Buf {
  void* raw = nullptr;
  E* p = nullptr;
  size_t n = 0;
  Buf() = default;
  explicit Buf(size_t n_, int mis = 0) : n(n_) {
    if (posix_memalign(&raw, 64, (n + mis) * sizeof(E) + (n + mis == 0 ? 1 : 0)) != 0) std::abort();
    p = static_cast<E*>(raw) + mis;
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  Buf(Buf&& o) noexcept { *this = std::move(o); }
  Buf& operator=(Buf&& o) noexcept { std::swap(raw, o.raw); std::swap(p, o.p); std::swap(n, o.n); return *this; }
  ~Buf() { std::free(raw); }
  E& operator[](size_t i) { return p[i]; }
  void fill_bytes(int b) { std::memset(static_cast<void*>(p), b, n * sizeof(E)); }
};

struct Stats {
  long cases = 0, checks = 0, failures = 0, failed_cases = 0;
};
extern Stats g_stats;
extern int g_verbose;

// One checker per (case, output): counts mismatches and prints the first few.
struct Check {
  std::string what;
  long bad = 0, total = 0;
  explicit Check(std::string w) : what(std::move(w)) {}
  void report(const std::string& where, double got, double exp, double tol) {
    ++bad;
    if (bad <= 4)
      std::printf("  MISMATCH %s %s: got %.9g expected %.9g (tol %.3g)\n", what.c_str(), where.c_str(), got, exp, tol);
  }
  // Equal within tol; NaN must match NaN, infinities exactly.
  void near(const std::string& where, double got, double exp, double tol) {
    ++total;
    if (std::isnan(exp) || std::isnan(got)) {
      if (!(std::isnan(exp) && std::isnan(got))) report(where, got, exp, tol);
      return;
    }
    if (std::isinf(exp) || std::isinf(got)) {
      if (got != exp) report(where, got, exp, tol);
      return;
    }
    if (!(std::fabs(got - exp) <= tol)) report(where, got, exp, tol);
  }
  void exact(const std::string& where, double got, double exp) {
    ++total;
    if (std::isnan(exp) && std::isnan(got)) return;
    if (!(got == exp)) report(where, got, exp, 0);
  }
  bool done() {
    g_stats.checks += total;
    if (bad) {
      g_stats.failures += bad;
      std::printf("  -> %s: %ld of %ld elements wrong\n", what.c_str(), bad, total);
    }
    return bad == 0;
  }
};

inline std::string at3(long a, long b, long c) {
  return "[" + std::to_string(a) + "," + std::to_string(b) + "," + std::to_string(c) + "]";
}
inline std::string at2(long a, long b) { return "[" + std::to_string(a) + "," + std::to_string(b) + "]"; }
