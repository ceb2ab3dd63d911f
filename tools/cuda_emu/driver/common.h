// Test helpers: element types, independent reference rounding, buffers, comparisons.
#pragma once
#include "emu.h"
#include "se_cuda.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
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

// The excitation's activation (FusedAct's order) and gate (FusedGate's), in
// double in the kernels' form (so NaN and inf go the same way), and their
// derivatives: the references of the SE / ECA suites.
inline double ref_act(int act, double h) {
  switch (act) {
    case 0: return h <= 0 ? 0.0 : h;
    case 1: return h / (1 + std::exp(-h));
    case 2: return 0.5 * h * (1 + std::erf(h * 0.70710678118654752));
    case 3: return 0.5 * h * (1 + std::tanh(0.79788456080286536 * (h + 0.044715 * h * h * h)));
    default: return h * std::min(std::max(h + 3, 0.0), 6.0) / 6;
  }
}
// d act / d h, and a magnitude of its terms (for the error bound).
inline double ref_act_d(int act, double h, double& mag) {
  switch (act) {
    case 0: mag = 1; return h <= 0 ? 0.0 : 1.0;
    case 1: {
      const double s = 1 / (1 + std::exp(-h));
      mag = std::fabs(s) + std::fabs(s * h * (1 - s));
      return s * (1 + h * (1 - s));
    }
    case 2: {
      const double cdf = 0.5 * (1 + std::erf(h * 0.70710678118654752));
      const double pdf = std::exp(-0.5 * h * h) * 0.39894228040143268;
      mag = std::fabs(cdf) + std::fabs(h * pdf);
      return cdf + h * pdf;
    }
    case 3: {
      const double kb = 0.79788456080286536, kk = 0.044715;
      const double t = std::tanh(kb * (h + kk * h * h * h));
      const double dl = 0.5 * (1 + t), dr = 0.5 * h * (1 - t * t) * kb * (1 + 3 * kk * h * h);
      mag = std::fabs(dl) + std::fabs(dr);
      return dl + dr;
    }
    default:
      mag = std::fabs(h / 3) + 1;
      return h < -3 ? 0.0 : (h <= 3 ? h / 3 + 0.5 : 1.0);
  }
}
inline double ref_gate(int gate, double z) {
  if (gate == 0) return 1 / (1 + std::exp(-z));
  if (z != z) return z;
  return std::min(std::max(z + 3, 0.0), 6.0) / 6;
}
// dL/dz = grad · coef.
inline double ref_gate_coef(int gate, double z, double g) {
  if (gate == 0) return (1 - g) * g;
  return (z > -3 && z < 3) ? 1.0 / 6 : 0.0;
}

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

// Whether n elements from p all still hold the 0xff poison (what a kernel
// must not have written: an absent bias's gradient, guard elements,
// anything with nothing to do).
template <class E>
bool poisoned(const E* p, size_t n) {
  const unsigned char* raw = reinterpret_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n * sizeof(E); ++i)
    if (raw[i] != 0xff) return false;
  return true;
}

inline std::string at3(long a, long b, long c) {
  return "[" + std::to_string(a) + "," + std::to_string(b) + "," + std::to_string(c) + "]";
}
inline std::string at2(long a, long b) { return "[" + std::to_string(a) + "," + std::to_string(b) + "]"; }

// x: uniform in [-2, 2] (mode 0), five values with many ties (1), or
// uniform with ~1% each of NaN, +inf and -inf (2); dy: uniform in [-1, 1].
template <class T>
void fill_x_dy(Buf<T>& x, Buf<T>& dy, int mode, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> U(-2, 2), S(-1, 1);
  std::uniform_int_distribution<int> pick(0, 4), pct(0, 99);
  const double tie_vals[5] = {-1, -0.5, 0.5, 1, 1.5};
  for (size_t i = 0; i < x.n; ++i) {
    double v = mode == 1 ? tie_vals[pick(rng)] : U(rng);
    if (mode == 2) {
      const int r = pct(rng);
      if (r == 0) v = INFINITY;
      else if (r == 1) v = -INFINITY;
      else if (r == 2) v = NAN;
    }
    x[i] = Ty<T>::from_d(v);
    dy[i] = Ty<T>::from_d(S(rng));
  }
}

// A reduction pass's segments (se_reduce_segments) and its partials
// workspace, NaN-poisoned, set in q: the buffer to keep while q is used.
template <class A>
Buf<A> segment_workspace(fused_attn::cuda::SePass& q, bool backward) {
  q.segments = fused_attn::cuda::se_reduce_segments(q, backward);
  Buf<A> ws(q.segments > 1 ? 2 * q.N * q.C * q.segments : 0);
  ws.fill_bytes(0xff);
  q.partials = q.segments > 1 ? ws.p : nullptr;
  return ws;
}

inline const char* dtype_name(DType dt) {
  return dt == DType::F32 ? "f32" : dt == DType::F16 ? "f16" : dt == DType::BF16 ? "bf16" : "f64";
}

// The grid both suites run: every dtype × layout × C × H×W (a third of the
// (C, H×W) pairs when quick), with the batch, SM count, misalignment, input
// mode and schedule varied along the case index.
struct GridCase {
  DType dt;
  long idx;
  int N, C, H, W;
  bool cl;
  int sm, mis_x, mis_dy, mis_out, mode, policy;
};
template <class F>
void for_each_grid_case(bool quick, F&& f) {
  const DType dts[4] = {DType::F32, DType::F16, DType::BF16, DType::F64};
  const int Cs[5] = {1, 3, 17, 64, 130};
  const int HWs[5][2] = {{1, 1}, {3, 5}, {7, 7}, {14, 14}, {33, 31}};
  const int sms[3] = {1, 4, 132};
  long idx = 0;
  for (DType dt : dts)
    for (int cl = 0; cl < 2; ++cl)
      for (int ci = 0; ci < 5; ++ci)
        for (int hi = 0; hi < 5; ++hi) {
          if (quick && (ci + hi) % 3 != 0) continue;
          ++idx;
          GridCase g{dt, idx, (idx % 2) ? 1 : 3, Cs[ci], HWs[hi][0], HWs[hi][1], cl != 0, sms[idx % 3]};
          if (g.C * g.H * g.W >= 64 * 1023) g.N = 1;  // keep the emulation fast
          const int m = static_cast<int>(idx % 5);
          g.mis_x = m == 1, g.mis_dy = m == 2, g.mis_out = m == 3;
          g.mode = static_cast<int>((idx / 5) % 3);
          g.policy = static_cast<int>(idx % 3);
          f(g);
        }
}

// f(T{}) for the element type T named by dt: a suite's typed run.
template <class F>
bool run_typed(DType dt, F&& f) {
  switch (dt) {
    case DType::F32: return f(float{});
    case DType::F64: return f(double{});
    case DType::F16: return f(__half{});
    case DType::BF16: return f(__nv_bfloat16{});
  }
  return false;
}

// One case of a suite: sets the schedule, counts it, reports a failure.
template <class Case, class Run>
void run_case(const char* op, DType dt, const Case& k, Run&& run) {
  emu::policy = k.policy;
  ++g_stats.cases;
  if (g_verbose) std::printf("%s %s %s\n", op, dtype_name(dt), k.str().c_str());
  std::fflush(stdout);
  if (!run()) {
    ++g_stats.failed_cases;
    std::printf("FAILED %s %s %s\n", op, dtype_name(dt), k.str().c_str());
  }
}
