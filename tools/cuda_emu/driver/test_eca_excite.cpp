// ECA's two-phase excitation kernels (eca_excite_forward / _backward in
// se_kernels.cuh) against a double-precision reference of se_cuda.h's
// formulas: z = Σ_j w[j]·P(c + j - pad) + b, g = gate(z); backward
// dz = gate'(z)·s, a = Σ_j w[j]·dz(c - j + pad) / HW, dw[j] = Σ P(c + j - pad)·dz,
// db = Σ dz, with P and dz zero or wrapped outside [0, C).
#include "common.h"
#include "se_cuda.h"

using namespace fused_attn::cuda;

namespace {

struct ExciteCase {
  int N, C, k;
  bool circular, bias, hard;
  int sm, HW, policy;
  std::string str() const {
    char b[200];
    std::snprintf(b, sizeof b, "N=%d C=%d k=%d %s bias=%d gate=%s sm=%d HW=%d policy=%d", N, C, k,
                  circular ? "circular" : "zeros", bias, hard ? "hard_sigmoid" : "sigmoid", sm, HW, policy);
    return b;
  }
};

// Index i of a row of C, wrapped or -1 (zero) outside [0, C).
long wrap(long i, long C, bool circular) {
  if (i >= 0 && i < C) return i;
  if (!circular) return -1;
  return ((i % C) + C) % C;
}

template <class T>
bool run_excite(const ExciteCase& k, std::mt19937_64& rng) {
  using A = typename Ty<T>::A;
  const long N = k.N, C = k.C, K = k.k, pad = (K - 1) / 2;
  const double u = std::is_same<A, double>::value ? 1.2e-16 : 6.0e-8;
  std::uniform_real_distribution<double> U(-1, 1), Z(-5, 5);
  Buf<T> w(K), b(1), dw(K), db(1);
  Buf<A> pooled(N * C), logits(N * C), g(N * C), s(N * C), a(N * C);
  std::vector<double> wd(K);
  for (long j = 0; j < K; ++j) w[j] = Ty<T>::from_d(U(rng)), wd[j] = Ty<T>::to_d(w[j]);
  b[0] = Ty<T>::from_d(U(rng));
  const double bd = k.bias ? Ty<T>::to_d(b[0]) : 0;
  for (long i = 0; i < N * C; ++i) pooled[i] = static_cast<A>(U(rng)), s[i] = static_cast<A>(U(rng));
  auto P = [&](long n, long c) { const long i = wrap(c, C, k.circular); return i < 0 ? 0.0 : double(pooled[n * C + i]); };
  EcaExcite e;
  e.dtype = Ty<T>::dt;
  e.N = N, e.C = C, e.k = K, e.HW = k.HW;
  e.circular = k.circular;
  e.gate = k.hard ? 1 : 0;
  e.sm_count = k.sm;
  e.w = w.p;
  e.b = k.bias ? b.p : nullptr;
  bool ok = true;
  const std::string tn = Ty<T>::name;
  // ---- forward
  {
    EcaExcite f = e;
    f.pooled = pooled.p, f.logits = logits.p, f.g = g.p;
    logits.fill_bytes(0xff), g.fill_bytes(0xff);
    if (eca_excite_forward(f, nullptr) != cudaSuccess || cudaGetLastError() != cudaSuccess)
      std::printf("  eca_excite_forward failed\n"), ok = false;
    Check cz(tn + " eca_excite.logits"), cg(tn + " eca_excite.g");
    for (long n = 0; n < N; ++n)
      for (long c = 0; c < C; ++c) {
        double z = 0, mag = std::fabs(bd);
        for (long j = 0; j < K; ++j) z += wd[j] * P(n, c + j - pad), mag += std::fabs(wd[j] * P(n, c + j - pad));
        z += bd;
        cz.near(at2(n, c), logits[n * C + c], z, 4 * u * (K + 2) * mag + 1e-300);
        const double gz = ref_gate(k.hard, double(logits[n * C + c]));  // the gate of the kernel's own z
        cg.near(at2(n, c), g[n * C + c], gz, 8 * u + 1e-300);
      }
    ok &= cz.done() & cg.done();
  }
  // ---- backward, from fresh logits (some exactly at the hard gate's edges)
  {
    std::uniform_int_distribution<int> pct(0, 99);
    for (long i = 0; i < N * C; ++i) {
      const int r = pct(rng);
      logits[i] = static_cast<A>(r == 0 ? 3.0 : r == 1 ? -3.0 : Z(rng));
    }
    EcaExcite q = e;
    q.pooled = pooled.p, q.s = s.p, q.saved_logits = logits.p, q.g = g.p, q.a = a.p;
    q.dw = dw.p, q.db = k.bias ? db.p : nullptr;
    const long parts = eca_excite_partials(q);
    Buf<A> ws(parts);
    ws.fill_bytes(0xff);
    q.partials = parts ? ws.p : nullptr;
    g.fill_bytes(0xff), a.fill_bytes(0xff), dw.fill_bytes(0xff), db.fill_bytes(0xff);
    if (eca_excite_backward(q, nullptr) != cudaSuccess || cudaGetLastError() != cudaSuccess)
      std::printf("  eca_excite_backward failed\n"), ok = false;
    std::vector<double> dz(N * C);
    for (long i = 0; i < N * C; ++i) dz[i] = double(s[i]) * ref_gate_coef(k.hard, double(logits[i]), ref_gate(k.hard, double(logits[i])));
    auto DZ = [&](long n, long c) { const long i = wrap(c, C, k.circular); return i < 0 ? 0.0 : dz[n * C + i]; };
    // The float dz = s·(1 - g)·g carries g's own rounding through 1 - g: an
    // absolute error of a few u·|s|·g², large against dz itself where g → 1.
    std::vector<double> dzerr(N * C, 0.0);
    if (!k.hard)
      for (long i = 0; i < N * C; ++i) {
        const double gv = ref_gate(0, double(logits[i]));
        dzerr[i] = std::fabs(double(s[i])) * gv * gv;
      }
    auto DZERR = [&](long n, long c) { const long i = wrap(c, C, k.circular); return i < 0 ? 0.0 : dzerr[n * C + i]; };
    Check cg(tn + " eca_excite_bwd.g"), ca(tn + " eca_excite_bwd.a"), cw(tn + " eca_excite_bwd.dw"),
        cb(tn + " eca_excite_bwd.db");
    std::vector<double> rw(K + 1, 0), mw(K + 1, 0);
    for (long n = 0; n < N; ++n)
      for (long c = 0; c < C; ++c) {
        cg.near(at2(n, c), g[n * C + c], ref_gate(k.hard, double(logits[n * C + c])), 8 * u + 1e-300);
        double dp = 0, mag = 0;
        for (long j = 0; j < K; ++j)
          dp += wd[j] * DZ(n, c - j + pad), mag += std::fabs(wd[j]) * (std::fabs(DZ(n, c - j + pad)) + DZERR(n, c - j + pad));
        ca.near(at2(n, c), a[n * C + c], dp / k.HW, 8 * u * (K + 2) * mag / k.HW + 1e-300);
        const double d = dz[n * C + c];
        const double de = dzerr[n * C + c];
        for (long j = 0; j < K; ++j) rw[j] += P(n, c + j - pad) * d, mw[j] += std::fabs(P(n, c + j - pad)) * (std::fabs(d) + de);
        rw[K] += d, mw[K] += std::fabs(d) + de;
      }
    const double terms = double(N) * C;
    for (long j = 0; j <= K; ++j) {
      // The float sums (N·C terms, the gate's float error in each), then the rounding to T.
      const double tol = 8 * u * (terms / 16 + 64) * mw[j] + 1e-300;
      const double ref = rw[j];
      if (j < K) {
        cw.near("[" + std::to_string(j) + "]", Ty<T>::to_d(dw[j]), ref, tol + Ty<T>::ulp(ref) + 1e-300);
      } else if (k.bias) {
        cb.near("[0]", Ty<T>::to_d(db[0]), ref, tol + Ty<T>::ulp(ref) + 1e-300);
      }
    }
    ok &= cg.done() & ca.done() & cw.done() & cb.done();
  }
  return ok;
}

// The forward straight after se_pool with defer_combine: each thread
// combines the pool's segments for its window (EcaExcite::pool_partials) and
// writes its own pooled value; pooled, logits and g must be the bits of
// se_pool (with its combine) then eca_excite_forward, and nothing launched
// after the pool but the excitation. x: N×C×H×W, channels_last or NCHW.
struct PooledEcaCase {
  ExciteCase e;
  int H, W;
  bool cl;
  std::string str() const { return e.str() + " H=" + std::to_string(H) + " W=" + std::to_string(W) + (cl ? " channels_last" : " NCHW"); }
  int policy = 0;
};

template <class T>
bool run_excite_pooled(const PooledEcaCase& pk, std::mt19937_64& rng) {
  using A = typename Ty<T>::A;
  const ExciteCase& k = pk.e;
  const long N = k.N, C = k.C, HW = long{pk.H} * pk.W;
  std::uniform_real_distribution<double> U(-1, 1);
  Buf<T> x(N * C * HW), dy(N * C * HW), w(k.k), b(1);
  fill_x_dy(x, dy, 0, rng);
  for (long j = 0; j < k.k; ++j) w[j] = Ty<T>::from_d(U(rng));
  b[0] = Ty<T>::from_d(U(rng));
  bool ok = true;
  long segments = 0;
  struct Out { Buf<A> pooled, logits, g, ws; std::vector<std::string> trace; };
  auto run = [&](bool deferred) {
    Out o;
    o.pooled = Buf<A>(N * C), o.logits = Buf<A>(N * C), o.g = Buf<A>(N * C);
    for (Buf<A>* q : {&o.pooled, &o.logits, &o.g}) q->fill_bytes(0xff);
    SePass q;
    q.dtype = Ty<T>::dt;
    q.N = N, q.C = C, q.HW = HW, q.channels_last = pk.cl, q.sm_count = k.sm, q.x = x.p, q.sum = o.pooled.p;
    q.defer_combine = deferred;
    o.ws = segment_workspace<A>(q, false);
    segments = q.segments;
    EcaExcite e;
    e.dtype = Ty<T>::dt;
    e.N = N, e.C = C, e.k = k.k, e.HW = HW, e.circular = k.circular, e.gate = k.hard ? 1 : 0, e.sm_count = k.sm;
    e.w = w.p, e.b = k.bias ? b.p : nullptr;
    e.pooled = o.pooled.p, e.logits = o.logits.p, e.g = o.g.p;
    if (deferred) e.pool_partials = q.partials, e.segments = q.segments, e.pooled_out = o.pooled.p;
    if (se_pool(q, nullptr) != cudaSuccess) std::printf("  se_pool failed\n"), ok = false;
    emu::take_trace();
    if (eca_excite_forward(e, nullptr) != cudaSuccess || cudaGetLastError() != cudaSuccess)
      std::printf("  eca_excite_forward failed\n"), ok = false;
    for (const std::string& t : emu::take_trace()) o.trace.push_back(t.substr(0, t.find('<')));
    return o;
  };
  const Out ref = run(false), got = run(true);
  const std::string tn = Ty<T>::name;
  auto same = [&](const char* what, const Buf<A>& a, const Buf<A>& c) {
    if (std::memcmp(a.p, c.p, N * C * sizeof(A)) == 0) return;
    std::printf("  %s %s: not the bits of se_pool + eca_excite_forward (segments %ld)\n", tn.c_str(), what, segments);
    ok = false;
  };
  same("pooled", ref.pooled, got.pooled);
  same("logits", ref.logits, got.logits);
  same("g", ref.g, got.g);
  const std::vector<std::string> want = {"eca_excite_fwd_kernel"};
  if (N * C > 0 && got.trace != want) std::printf("  %s: %zu launches after the pool\n", tn.c_str(), got.trace.size()), ok = false;
  if (segments < 2 && pk.H * pk.W > 64) std::printf("  the case has no segments to combine\n"), ok = false;
  return ok;
}

bool excite_pooled_any(DType dt, const PooledEcaCase& k, std::mt19937_64& rng) {
  return run_typed(dt, [&](auto tag) { return run_excite_pooled<decltype(tag)>(k, rng); });
}

bool excite_any(DType dt, const ExciteCase& k, std::mt19937_64& rng) {
  return run_typed(dt, [&](auto tag) { return run_excite<decltype(tag)>(k, rng); });
}

}  // namespace

void run_eca_excite_suite(bool quick) {
  std::mt19937_64 rng(91);
  const DType dts[4] = {DType::F32, DType::F16, DType::BF16, DType::F64};
  // C around the 256-channel tiles, C smaller than k (wrapping more than once),
  // N = 0 and C = 0 (the weight gradient is still written: zeros).
  const int Cs[] = {1, 2, 5, 64, 255, 256, 257, 600};
  const int ks[] = {1, 3, 5, 7, 9, 15};
  long idx = 0;
  for (DType dt : dts)
    for (int C : Cs)
      for (int kk : ks) {
        ++idx;
        if (quick && idx % 3 != 0) continue;
        const int N = C >= 256 ? 1 + static_cast<int>(idx % 3) : 1 + static_cast<int>(idx % 5);
        const int sms[3] = {1, 4, 132};
        const ExciteCase k{N, C, kk, idx % 2 == 0, idx % 4 < 2, idx % 5 == 3, sms[idx % 3], 1 + static_cast<int>(idx % 7) * 8,
                           static_cast<int>(idx % 3)};
        run_case("eca_excite", dt, k, [&] { return excite_any(dt, k, rng); });
      }
  for (DType dt : dts)
    for (const ExciteCase& k : {ExciteCase{0, 7, 3, false, true, false, 4, 5, 0},
                                ExciteCase{3, 0, 5, true, true, false, 4, 5, 1},
                                ExciteCase{70, 300, 7, true, false, false, 1, 49, 2},   // sm 1: one sample row of blocks
                                ExciteCase{9, 513, 15, false, true, true, 132, 3, 0}})
      run_case("eca_excite", dt, k, [&] { return excite_any(dt, k, rng); });
  // Deferred pools: segments (the windows reaching across rows of partials,
  // wrapped or zero-padded), C below k, and one segment (pooled read as written).
  int pi = 0;
  for (const PooledEcaCase& k : {PooledEcaCase{{5, 64, 5, false, true, false, 132, 0, 0}, 9, 9, true},
                                 PooledEcaCase{{3, 3, 7, true, false, true, 132, 0, 1}, 40, 40, false},
                                 PooledEcaCase{{17, 40, 15, true, true, false, 132, 0, 2}, 13, 13, true},
                                 PooledEcaCase{{2, 24, 3, false, true, false, 4, 0, 0}, 3, 3, false}}) {
    for (int d = 0; d < 4; ++d) {
      if (quick && d % 2 != pi % 2) continue;
      const DType dt = dts[(d + pi) % 4];
      PooledEcaCase kk = k;
      kk.policy = k.e.policy;
      run_case("eca_excite_pooled", dt, kk, [&] { return excite_pooled_any(dt, kk, rng); });
    }
    ++pi;
  }
}
