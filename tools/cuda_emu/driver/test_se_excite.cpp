// SE's two-phase excitation (se_excite_forward: se_linear_kernel in
// se_kernels.cuh, fc1 split over C, then fc2 with the activation and gate)
// against a double-precision reference, stage by stage: hidden against the
// exact fc1 of the pooled rows, logits against fc2 of the kernel's own hidden
// (so each stage's tolerance is its own sums'), g against the gate of the
// kernel's own logits.
#include "common.h"
#include "se_cuda.h"

using namespace fused_attn::cuda;

namespace {

struct SeExciteCase {
  int N, C, rd;
  bool two_layer, b1, b2;
  int act, gate, sm, policy;
  std::string str() const {
    static const char* acts[] = {"relu", "silu", "gelu", "gelu_tanh", "hard_swish"};
    char b[200];
    std::snprintf(b, sizeof b, "N=%d C=%d rd=%d %s b1=%d b2=%d act=%s gate=%s sm=%d policy=%d", N, C, rd,
                  two_layer ? "two-layer" : "effective", b1, b2, acts[act], gate ? "hard_sigmoid" : "sigmoid", sm,
                  policy);
    return b;
  }
};

double ref_act(int act, double h) {
  switch (act) {
    case 0: return h <= 0 ? 0 : h;
    case 1: return h / (1 + std::exp(-h));
    case 2: return 0.5 * h * (1 + std::erf(h / std::sqrt(2.0)));
    case 3: return 0.5 * h * (1 + std::tanh(std::sqrt(2 / M_PI) * (h + 0.044715 * h * h * h)));
    default: return h * std::min(std::max(h + 3, 0.0), 6.0) / 6;
  }
}
double ref_gate(int gate, double z) {
  return gate == 0 ? 1 / (1 + std::exp(-z)) : std::min(std::max(z + 3, 0.0), 6.0) / 6;
}

template <class T>
bool run_excite(const SeExciteCase& k, std::mt19937_64& rng) {
  using A = typename Ty<T>::A;
  const long N = k.N, C = k.C, R = k.two_layer ? k.rd : k.C;
  const double u = std::is_same<A, double>::value ? 1.2e-16 : 6.0e-8;
  std::uniform_real_distribution<double> U(-1, 1), W(-0.5, 0.5);
  Buf<T> w1(R * C), b1(R), w2(k.two_layer ? C * R : 0), b2(C);
  Buf<A> pooled(N * C), hidden(N * R), logits(N * C), g(N * C);
  for (size_t i = 0; i < w1.n; ++i) w1[i] = Ty<T>::from_d(W(rng));
  for (size_t i = 0; i < w2.n; ++i) w2[i] = Ty<T>::from_d(W(rng));
  for (long i = 0; i < R; ++i) b1[i] = Ty<T>::from_d(U(rng));
  for (long i = 0; i < C; ++i) b2[i] = Ty<T>::from_d(U(rng));
  for (long i = 0; i < N * C; ++i) pooled[i] = static_cast<A>(2 * U(rng));
  auto d = [](T v) { return Ty<T>::to_d(v); };
  SeExcite e;
  e.dtype = Ty<T>::dt;
  e.N = N, e.C = C, e.rd = R;
  e.two_layer = k.two_layer;
  e.act = static_cast<int8_t>(k.act), e.gate = static_cast<int8_t>(k.gate);
  e.sm_count = k.sm;
  e.w1 = w1.p, e.b1 = k.b1 ? b1.p : nullptr;
  e.w2 = k.two_layer ? w2.p : nullptr, e.b2 = k.two_layer && k.b2 ? b2.p : nullptr;
  e.pooled = pooled.p;
  e.hidden = k.two_layer ? hidden.p : nullptr;
  e.logits = logits.p, e.g = g.p;
  const long parts = se_excite_partials(e);
  Buf<A> ws(parts);
  ws.fill_bytes(0xff);
  e.partials = parts ? ws.p : nullptr;
  hidden.fill_bytes(0xff), logits.fill_bytes(0xff), g.fill_bytes(0xff);
  bool ok = true;
  if (se_excite_forward(e, nullptr) != cudaSuccess || cudaGetLastError() != cudaSuccess)
    std::printf("  se_excite_forward failed\n"), ok = false;
  const std::string tn = Ty<T>::name;
  Check ch(tn + " se_excite.hidden"), cz(tn + " se_excite.logits"), cg(tn + " se_excite.g");
  for (long n = 0; n < N; ++n) {
    // The first layer: the hidden pre-activation (two layers) or the logits (effective SE).
    std::vector<double> first(R), mag(R);
    for (long r = 0; r < R; ++r) {
      double s = k.b1 ? d(b1[r]) : 0, m = std::fabs(s);
      for (long c = 0; c < C; ++c) s += d(w1[r * C + c]) * pooled[n * C + c], m += std::fabs(d(w1[r * C + c]) * pooled[n * C + c]);
      first[r] = s, mag[r] = m;
    }
    const double tol1 = 4 * u * (C + 8);
    if (!k.two_layer) {
      for (long c = 0; c < C; ++c) cz.near(at2(n, c), logits[n * C + c], first[c], tol1 * mag[c] + 1e-300);
    } else {
      for (long r = 0; r < R; ++r) ch.near(at2(n, r), hidden[n * R + r], first[r], tol1 * mag[r] + 1e-300);
      for (long c = 0; c < C; ++c) {
        double s = k.b2 ? d(b2[c]) : 0, m = std::fabs(s);
        for (long r = 0; r < R; ++r) {
          const double a = ref_act(k.act, double(hidden[n * R + r]));
          s += d(w2[c * R + r]) * a;
          m += std::fabs(d(w2[c * R + r])) * (std::fabs(a) + std::fabs(double(hidden[n * R + r])));  // the act's own float error
        }
        cz.near(at2(n, c), logits[n * C + c], s, 4 * u * (R + 8) * m + 1e-300);
      }
    }
    for (long c = 0; c < C; ++c) cg.near(at2(n, c), g[n * C + c], ref_gate(k.gate, double(logits[n * C + c])), 8 * u + 1e-300);
  }
  ok &= ch.done() & cz.done() & cg.done();
  return ok;
}

bool excite_any(DType dt, const SeExciteCase& k, std::mt19937_64& rng) {
  return run_typed(dt, [&](auto tag) { return run_excite<decltype(tag)>(k, rng); });
}

}  // namespace

void run_se_excite_suite(bool quick) {
  std::mt19937_64 rng(93);
  const DType dts[4] = {DType::F32, DType::F16, DType::BF16, DType::F64};
  // C and rd around the 32-wide chunks and 64-wide output tiles, N around the
  // 16-sample tiles; sm 132 splits fc1's C the most, sm 1 not at all.
  const int Ns[] = {1, 5, 16, 17, 40};
  const int Cs[] = {1, 3, 31, 64, 65, 300};
  const int rds[] = {1, 4, 16, 70};
  const int sms[] = {1, 4, 132};
  long idx = 0;
  for (DType dt : dts)
    for (int C : Cs)
      for (int rd : rds) {
        ++idx;
        if (quick && idx % 3 != 0) continue;
        const bool two = idx % 5 != 0;
        const SeExciteCase k{Ns[idx % 5], C, rd, two, idx % 2 == 0, idx % 3 != 1, static_cast<int>(idx % 5),
                             static_cast<int>((idx / 2) % 2), sms[idx % 3], static_cast<int>(idx % 3)};
        run_case("se_excite", dt, k, [&] { return excite_any(dt, k, rng); });
      }
  for (DType dt : dts)
    for (const SeExciteCase& k : {SeExciteCase{33, 2048, 128, true, true, true, 0, 0, 132, 0},   // the ResNet-50 site's widths
                                  SeExciteCase{3, 520, 520, false, true, false, 4, 1, 4, 1},     // effective SE, C past 512
                                  SeExciteCase{70, 96, 8, true, false, true, 1, 0, 132, 2}})
      run_case("se_excite", dt, k, [&] { return excite_any(dt, k, rng); });
}
