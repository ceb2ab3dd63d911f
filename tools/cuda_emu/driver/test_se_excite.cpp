// SE's two-phase excitation (se_excite_forward: se_linear_kernel in
// se_kernels.cuh, fc1 split over C, then fc2 with the activation and gate)
// against a double-precision reference, stage by stage: hidden against the
// exact fc1 of the pooled rows, logits against fc2 of the kernel's own hidden
// (so each stage's tolerance is its own sums'), g against the gate of the
// kernel's own logits. Its backward (se_excite_backward: the layers
// transposed, then se_wgrad_kernel) the same way, reading the workspace's dz
// and dL/dhidden (the first N·C, then N·rd elements) for the later stages.
#include <algorithm>
#include <cstring>

#include "cbam_cuda.h"
#include "common.h"
#include "se_cuda.h"

using namespace fused_attn::cuda;

namespace {

struct SeExciteCase {
  int N, C, rd;
  bool two_layer, b1, b2;
  int act, gate, sm, policy;
  int pool = 0;  // the backward's: 1 avg+max (dL/dpooled spread to a and b), else avg; H·W = 5 + 2·pool
  std::string str() const {
    static const char* acts[] = {"relu", "silu", "gelu", "gelu_tanh", "hard_swish"};
    char b[200];
    std::snprintf(b, sizeof b, "N=%d C=%d rd=%d %s b1=%d b2=%d act=%s gate=%s sm=%d policy=%d pool=%d", N, C, rd,
                  two_layer ? "two-layer" : "effective", b1, b2, acts[act], gate ? "hard_sigmoid" : "sigmoid", sm,
                  policy, pool);
    return b;
  }
};

// CBAM's MLP input row `row` from the pools' rows pooled [2N, C]: row itself
// (2N rows, the means' then the maxima's), or light ½mean + ½max (N rows);
// in double, as the kernels form it (halving is exact).
template <class A>
double cbam_mlp_input(const Buf<A>& pooled, long N, long C, bool light, long row, long c) {
  return light ? 0.5 * double(pooled.p[row * C + c]) + 0.5 * double(pooled.p[(N + row) * C + c])
               : double(pooled.p[row * C + c]);
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

template <class T>
bool run_excite_bwd(const SeExciteCase& k, std::mt19937_64& rng) {
  using A = typename Ty<T>::A;
  const long N = k.N, C = k.C, R = k.two_layer ? k.rd : k.C;
  const double u = std::is_same<A, double>::value ? 1.2e-16 : 6.0e-8;
  std::uniform_real_distribution<double> U(-1, 1), W(-0.5, 0.5), Z(-4, 4);
  Buf<T> w1(R * C), w2(k.two_layer ? C * R : 0);
  const bool with_max = k.pool == 1;
  const long HW = 5 + 2 * k.pool;
  Buf<A> pooled(N * C), s(N * C), logits(N * C), hidden(k.two_layer ? N * R : 0), g(N * C), a_out(N * C),
      b_out(with_max ? N * C : 0), cnt(with_max ? N * C : 0);
  std::uniform_int_distribution<int> ties(1, 3);
  for (size_t i = 0; i < cnt.n; ++i) cnt[i] = static_cast<A>(ties(rng));
  Buf<T> dw1(R * C), db1(R), dw2(k.two_layer ? C * R : 0), db2(C);
  for (size_t i = 0; i < w1.n; ++i) w1[i] = Ty<T>::from_d(W(rng));
  for (size_t i = 0; i < w2.n; ++i) w2[i] = Ty<T>::from_d(W(rng));
  for (long i = 0; i < N * C; ++i) pooled[i] = static_cast<A>(2 * U(rng)), s[i] = static_cast<A>(3 * U(rng));
  for (long i = 0; i < N * C; ++i) logits[i] = static_cast<A>(Z(rng));
  for (size_t i = 0; i < hidden.n; ++i) hidden[i] = static_cast<A>(Z(rng));
  auto d = [](T v) { return Ty<T>::to_d(v); };
  SeExcite e;
  e.dtype = Ty<T>::dt;
  e.N = N, e.C = C, e.rd = R;
  e.two_layer = k.two_layer;
  e.act = static_cast<int8_t>(k.act), e.gate = static_cast<int8_t>(k.gate);
  e.sm_count = k.sm;
  e.w1 = w1.p, e.w2 = k.two_layer ? w2.p : nullptr;
  e.pooled = pooled.p, e.s = s.p, e.saved_logits = logits.p, e.saved_hidden = k.two_layer ? hidden.p : nullptr;
  e.HW = HW, e.cnt = with_max ? cnt.p : nullptr;
  e.g = g.p, e.a = a_out.p, e.b = with_max ? b_out.p : nullptr;
  e.dw1 = dw1.p, e.db1 = k.b1 ? db1.p : nullptr;
  e.dw2 = k.two_layer ? dw2.p : nullptr, e.db2 = k.two_layer && k.b2 ? db2.p : nullptr;
  const long wsn = se_excite_backward_workspace(e);
  Buf<A> ws(wsn);
  ws.fill_bytes(0xff);
  e.partials = ws.p;
  for (auto* b : {&g, &a_out, &b_out}) b->fill_bytes(0xff);
  for (auto* b : {&dw1, &db1, &dw2, &db2}) b->fill_bytes(0xff);
  bool ok = true;
  if (wsn != N * C + (k.two_layer ? N * R : 0) + (k.two_layer ? long(se_excite_partials(e)) : 0))
    std::printf("  se_excite_backward_workspace %ld is not dz + dh + fc1's partials\n", wsn), ok = false;
  if (se_excite_backward(e, nullptr) != cudaSuccess || cudaGetLastError() != cudaSuccess)
    std::printf("  se_excite_backward failed\n"), ok = false;
  const A* dz = ws.p;
  const A* dh = ws.p + N * C;
  const std::string tn = Ty<T>::name;
  Check cg(tn + " se_excite_bwd.g"), cdz(tn + " se_excite_bwd.dz"), cdh(tn + " se_excite_bwd.dhidden"),
      ca(tn + " se_excite_bwd.a"), cb(tn + " se_excite_bwd.b"), cw1(tn + " se_excite_bwd.dw1"), cb1(tn + " se_excite_bwd.db1"),
      cw2(tn + " se_excite_bwd.dw2"), cb2(tn + " se_excite_bwd.db2");
  // The gradients of the first layer's outputs: dL/dhidden (two layers) or dz (effective SE).
  const A* dfirst = k.two_layer ? dh : dz;
  for (long n = 0; n < N; ++n) {
    for (long c = 0; c < C; ++c) {
      const double z = logits[n * C + c], gv = ref_gate(k.gate, z), sv = s[n * C + c];
      cg.near(at2(n, c), g[n * C + c], gv, 8 * u + 1e-300);
      const double want = sv * ref_gate_coef(k.gate, z, gv);
      cdz.near(at2(n, c), dz[n * C + c], want, 16 * u * std::fabs(sv) + 1e-300);
    }
    if (k.two_layer) {
      for (long r = 0; r < R; ++r) {
        double a = 0, m = 0;
        for (long c = 0; c < C; ++c) a += d(w2[c * R + r]) * dz[n * C + c], m += std::fabs(d(w2[c * R + r]) * dz[n * C + c]);
        double slope_mag;
        const double want = a * ref_act_d(k.act, hidden[n * R + r], slope_mag);
        cdh.near(at2(n, r), dh[n * R + r], want, 6 * u * (C + 8) * m + 32 * u * std::fabs(a) + 1e-300);
      }
    }
    for (long c = 0; c < C; ++c) {
      double a = 0, m = 0;
      for (long r = 0; r < R; ++r) a += d(w1[r * C + c]) * dfirst[n * R + r], m += std::fabs(d(w1[r * C + c]) * dfirst[n * R + r]);
      // dL/dpooled, spread: a = dp·(½ or 1)/HW, b = dp·½/cnt (each one rounding more).
      const double tol = 4 * u * (R + 8) * m + 1e-300;
      const double as = (with_max ? 0.5 : 1.0) / HW;
      ca.near(at2(n, c), a_out[n * C + c], a * as, tol * as + 2 * u * std::fabs(a * as));
      if (with_max) {
        const double bs = 0.5 / double(cnt[n * C + c]);
        cb.near(at2(n, c), b_out[n * C + c], a * bs, tol * bs + 2 * u * std::fabs(a * bs));
      }
    }
  }
  // A weight gradient: the sum over n in the accumulation type, then rounded to T.
  auto grad_near = [&](Check& ch, const std::string& where, T got, double want, double mag) {
    ch.near(where, d(got), want, 4 * u * (N + 8) * mag + Ty<T>::ulp(want) + 1e-300);
  };
  for (long r = 0; r < R; ++r) {
    double bsum = 0, bmag = 0;
    for (long n = 0; n < N; ++n) bsum += dfirst[n * R + r], bmag += std::fabs(dfirst[n * R + r]);
    if (k.b1) grad_near(cb1, at2(r, 0), db1[r], bsum, bmag);
    for (long c = 0; c < C; ++c) {
      double a = 0, m = 0;
      for (long n = 0; n < N; ++n) a += dfirst[n * R + r] * double(pooled[n * C + c]), m += std::fabs(dfirst[n * R + r] * double(pooled[n * C + c]));
      grad_near(cw1, at2(r, c), dw1[r * C + c], a, m);
    }
  }
  if (k.two_layer) {
    for (long c = 0; c < C; ++c) {
      double bsum = 0, bmag = 0;
      for (long n = 0; n < N; ++n) bsum += dz[n * C + c], bmag += std::fabs(dz[n * C + c]);
      if (k.b2) grad_near(cb2, at2(c, 0), db2[c], bsum, bmag);
      for (long r = 0; r < R; ++r) {
        double a = 0, m = 0;
        for (long n = 0; n < N; ++n) {
          const double h = hidden[n * R + r], act = ref_act(k.act, h);
          a += dz[n * C + c] * act;
          m += std::fabs(dz[n * C + c]) * (std::fabs(act) + 2 * std::fabs(h));  // the act's own float error
        }
        grad_near(cw2, at2(c, r), dw2[c * R + r], a, m);
      }
    }
  }
  // What the kernels must not write: the absent biases stay poisoned.
  auto untouched = [&](Buf<T>& b, bool absent, const char* name) {
    if (absent && !poisoned(b.p, b.n)) std::printf("  %s written without that bias\n", name), ok = false;
  };
  untouched(db1, !k.b1, "db1");
  untouched(db2, !(k.two_layer && k.b2), "db2");
  ok &= cg.done() & cdz.done() & cdh.done() & ca.done() & cb.done() & cw1.done() & cb1.done() & cw2.done() & cb2.done();
  return ok;
}

// CBAM's channel MLP (cbam_mlp_forward): pooled [2, N, C], fc1 on both rows
// (light: on ½mean + ½max), fc2 on the sum of the activations with its bias
// once per pool, the gate. hidden is not an output, so the logits are checked
// against the exact double MLP, the tolerance carrying fc1's float error
// through the activation's slope (at most 1.5) and fc2.
template <class T>
bool run_cbam_mlp(const SeExciteCase& k, bool light, std::mt19937_64& rng) {
  using A = typename Ty<T>::A;
  const long N = k.N, C = k.C, R = k.rd, P = light ? 1 : 2;
  const double u = std::is_same<A, double>::value ? 1.2e-16 : 6.0e-8;
  std::uniform_real_distribution<double> U(-1, 1), W(-0.5, 0.5);
  Buf<T> w1(R * C), b1(R), w2(C * R), b2(C);
  Buf<A> pooled(2 * N * C), logits(N * C), g(N * C);
  for (size_t i = 0; i < w1.n; ++i) w1[i] = Ty<T>::from_d(W(rng));
  for (size_t i = 0; i < w2.n; ++i) w2[i] = Ty<T>::from_d(W(rng));
  for (long i = 0; i < R; ++i) b1[i] = Ty<T>::from_d(U(rng));
  for (long i = 0; i < C; ++i) b2[i] = Ty<T>::from_d(U(rng));
  for (size_t i = 0; i < pooled.n; ++i) pooled[i] = static_cast<A>(2 * U(rng));
  auto d = [](T v) { return Ty<T>::to_d(v); };
  SeExcite e;
  e.dtype = Ty<T>::dt;
  e.N = N, e.C = C, e.rd = R;
  e.act = static_cast<int8_t>(k.act), e.gate = static_cast<int8_t>(light ? 0 : k.gate);
  e.sm_count = k.sm;
  e.w1 = w1.p, e.b1 = k.b1 ? b1.p : nullptr, e.w2 = w2.p, e.b2 = k.b2 ? b2.p : nullptr;
  e.pooled = pooled.p;
  e.logits = logits.p, e.g = g.p;
  const long parts = cbam_mlp_partials(e, light);
  Buf<A> ws(parts);
  ws.fill_bytes(0xff);
  e.partials = parts ? ws.p : nullptr;
  logits.fill_bytes(0xff), g.fill_bytes(0xff);
  bool ok = true;
  if (cbam_mlp_forward(e, light, nullptr) != cudaSuccess || cudaGetLastError() != cudaSuccess)
    std::printf("  cbam_mlp_forward failed\n"), ok = false;
  const std::string tn = Ty<T>::name;
  Check cz(tn + (light ? " cbam_mlp(light).logits" : " cbam_mlp.logits")), cg(tn + " cbam_mlp.g");
  for (long n = 0; n < N; ++n) {
    std::vector<double> hsum(R, 0.0), herr(R, 0.0);  // Σ over the pools of act(fc1(row)), and its float error bound
    for (long r = 0; r < R; ++r)
      for (long q = 0; q < P; ++q) {
        double h = k.b1 ? d(b1[r]) : 0, m = std::fabs(h);
        for (long c = 0; c < C; ++c) {
          const double v = cbam_mlp_input(pooled, N, C, light, q * N + n, c);
          h += d(w1[r * C + c]) * v, m += std::fabs(d(w1[r * C + c]) * v);
        }
        const double a = ref_act(k.act, h);
        hsum[r] += a;
        herr[r] += 1.5 * 4 * u * (C + 8) * m + 8 * u * (std::fabs(a) + std::fabs(h));
      }
    for (long c = 0; c < C; ++c) {
      double z = k.b2 ? P * d(b2[c]) : 0, m = std::fabs(z), err = 0;
      for (long r = 0; r < R; ++r) {
        z += d(w2[c * R + r]) * hsum[r];
        m += std::fabs(d(w2[c * R + r]) * hsum[r]) + std::fabs(d(w2[c * R + r])) * herr[r];
        err += std::fabs(d(w2[c * R + r])) * herr[r];
      }
      cz.near(at2(n, c), logits[n * C + c], z, err + 4 * u * (R + 8) * m + 1e-300);
      cg.near(at2(n, c), g[n * C + c], ref_gate(light ? 0 : k.gate, double(logits[n * C + c])), 8 * u + 1e-300);
    }
  }
  ok &= cz.done() & cg.done();
  // The backward's g, cbam_channel_gate on the saved logits, has the forward's
  // bits (the channel max's ties need them).
  Buf<A> g2(N * C);
  g2.fill_bytes(0xff);
  if (cbam_channel_gate(Ty<A>::dt, e.gate, N * C, logits.p, g2.p, nullptr) != cudaSuccess ||
      cudaGetLastError() != cudaSuccess)
    std::printf("  cbam_channel_gate failed\n"), ok = false;
  if (std::memcmp(g.p, g2.p, g.n * sizeof(A)) != 0)
    std::printf("  cbam_channel_gate's g differs from cbam_mlp_forward's\n"), ok = false;
  return ok;
}

// CBAM's channel MLP backward (cbam_mlp_backward), stage by stage as SE's:
// the workspace's dz (its first N·C elements) and the recomputed hidden
// pre-activations and their gradients (its last 2·rows·rd: pre, then dpre)
// are read for the later stages; pre against the exact fc1 of the input
// rows (2N: the means', then the maxima's; light: N of ½mean + ½max).
template <class T>
bool run_cbam_mlp_bwd(const SeExciteCase& k, bool light, std::mt19937_64& rng) {
  using A = typename Ty<T>::A;
  const long N = k.N, C = k.C, R = k.rd, P = light ? 1 : 2, rows = P * N, HW = 7;
  const double u = std::is_same<A, double>::value ? 1.2e-16 : 6.0e-8;
  std::uniform_real_distribution<double> U(-1, 1), W(-0.5, 0.5), Z(-4, 4);
  std::uniform_int_distribution<int> ties(1, 3);
  Buf<T> w1(R * C), b1(R), w2(C * R), b2(C), dw1(R * C), db1(R), dw2(C * R), db2(C);
  Buf<A> pooled(2 * N * C), s(N * C), logits(N * C), cnt(N * C), a_out(N * C), b_out(N * C);
  for (size_t i = 0; i < w1.n; ++i) w1[i] = Ty<T>::from_d(W(rng));
  for (size_t i = 0; i < w2.n; ++i) w2[i] = Ty<T>::from_d(W(rng));
  for (long i = 0; i < R; ++i) b1[i] = Ty<T>::from_d(U(rng));
  for (size_t i = 0; i < pooled.n; ++i) pooled[i] = static_cast<A>(2 * U(rng));
  for (long i = 0; i < N * C; ++i)
    s[i] = static_cast<A>(3 * U(rng)), logits[i] = static_cast<A>(Z(rng)), cnt[i] = static_cast<A>(ties(rng));
  auto d = [](T v) { return Ty<T>::to_d(v); };
  SeExcite e;
  e.dtype = Ty<T>::dt;
  e.N = N, e.C = C, e.rd = R, e.HW = HW;
  e.act = static_cast<int8_t>(k.act), e.gate = static_cast<int8_t>(light ? 0 : k.gate);
  e.sm_count = k.sm;
  e.w1 = w1.p, e.b1 = k.b1 ? b1.p : nullptr, e.w2 = w2.p;
  e.pooled = pooled.p, e.s = s.p, e.saved_logits = logits.p, e.cnt = cnt.p;
  e.a = a_out.p, e.b = b_out.p;
  e.dw1 = dw1.p, e.db1 = k.b1 ? db1.p : nullptr, e.dw2 = dw2.p, e.db2 = k.b2 ? db2.p : nullptr;
  const long wsn = cbam_mlp_backward_workspace(e, light);
  Buf<A> ws(wsn);
  ws.fill_bytes(0xff);
  e.partials = ws.p;
  for (auto* b : {&a_out, &b_out}) b->fill_bytes(0xff);
  for (auto* b : {&dw1, &db1, &dw2, &db2}) b->fill_bytes(0xff);
  bool ok = true;
  if (wsn < N * C + 2 * rows * R) std::printf("  cbam_mlp_backward_workspace %ld is too small\n", wsn), ok = false;
  if (cbam_mlp_backward(e, light, nullptr) != cudaSuccess || cudaGetLastError() != cudaSuccess)
    std::printf("  cbam_mlp_backward failed\n"), ok = false;
  if (!ok) return false;
  const A* dz = ws.p;
  const A* pre = ws.p + wsn - 2 * rows * R;
  const A* dpre = ws.p + wsn - rows * R;
  const std::string tn = Ty<T>::name + std::string(light ? " cbam_mlp_bwd(light)." : " cbam_mlp_bwd.");
  Check cpre(tn + "pre"), cdz(tn + "dz"), cdp(tn + "dpre"), ca(tn + "a"), cb(tn + "b"), cw1(tn + "dw1"),
      cb1(tn + "db1"), cw2(tn + "dw2"), cb2(tn + "db2");
  auto input = [&](long row, long c) { return cbam_mlp_input(pooled, N, C, light, row, c); };
  for (long row = 0; row < rows; ++row)
    for (long r = 0; r < R; ++r) {
      double h = k.b1 ? d(b1[r]) : 0, m = std::fabs(h);
      for (long c = 0; c < C; ++c) h += d(w1[r * C + c]) * input(row, c), m += std::fabs(d(w1[r * C + c]) * input(row, c));
      cpre.near(at2(row, r), pre[row * R + r], h, 4 * u * (C + 8) * m + 1e-300);
    }
  for (long n = 0; n < N; ++n)
    for (long c = 0; c < C; ++c) {
      const double z = logits[n * C + c], gv = ref_gate(e.gate, z), sv = s[n * C + c];
      const double want = sv * ref_gate_coef(e.gate, z, gv);
      cdz.near(at2(n, c), dz[n * C + c], want, 16 * u * std::fabs(sv) + 1e-300);
    }
  // dL/dpre of each row: W2ᵀ·dz of its sample, through the activation's slope at the kernel's pre.
  for (long row = 0; row < rows; ++row)
    for (long r = 0; r < R; ++r) {
      const long n = row % N;
      double a = 0, m = 0;
      for (long c = 0; c < C; ++c) a += d(w2[c * R + r]) * dz[n * C + c], m += std::fabs(d(w2[c * R + r]) * dz[n * C + c]);
      double slope_mag;
      const double want = a * ref_act_d(k.act, pre[row * R + r], slope_mag);
      cdp.near(at2(row, r), dpre[row * R + r], want, 6 * u * (C + 8) * m + 32 * u * std::fabs(a) + 1e-300);
    }
  // dL/dpooled spread: the means' (rows < N; light: half of every row's) / HW to a, the maxima's / cnt to b.
  for (long row = 0; row < rows; ++row)
    for (long c = 0; c < C; ++c) {
      double a = 0, m = 0;
      for (long r = 0; r < R; ++r) a += d(w1[r * C + c]) * dpre[row * R + r], m += std::fabs(d(w1[r * C + c]) * dpre[row * R + r]);
      const double tol = 4 * u * (R + 8) * m + 1e-300;
      const long n = row % N;
      auto spread = [&](Check& ch, const A* out, double scale) {
        ch.near(at2(n, c), out[n * C + c], a * scale, tol * scale + 2 * u * std::fabs(a * scale));
      };
      const double half = light ? 0.5 : 1.0;
      if (light || row < N) spread(ca, a_out.p, half / HW);
      if (light || row >= N) spread(cb, b_out.p, half / double(cnt[n * C + c]));
    }
  auto grad_near = [&](Check& ch, const std::string& where, T got, double want, double mag, long terms) {
    ch.near(where, d(got), want, 4 * u * (terms + 8) * mag + Ty<T>::ulp(want) + 1e-300);
  };
  for (long r = 0; r < R; ++r) {
    double bsum = 0, bmag = 0;
    for (long row = 0; row < rows; ++row) bsum += dpre[row * R + r], bmag += std::fabs(dpre[row * R + r]);
    if (k.b1) grad_near(cb1, at2(r, 0), db1[r], bsum, bmag, rows);
    for (long c = 0; c < C; ++c) {
      double a = 0, m = 0;
      for (long row = 0; row < rows; ++row) a += dpre[row * R + r] * input(row, c), m += std::fabs(dpre[row * R + r] * input(row, c));
      grad_near(cw1, at2(r, c), dw1[r * C + c], a, m, rows);
    }
  }
  for (long c = 0; c < C; ++c) {
    double bsum = 0, bmag = 0;
    for (long n = 0; n < N; ++n) bsum += P * double(dz[n * C + c]), bmag += P * std::fabs(dz[n * C + c]);
    if (k.b2) grad_near(cb2, at2(c, 0), db2[c], bsum, bmag, N);
    for (long r = 0; r < R; ++r) {
      double a = 0, m = 0;
      for (long n = 0; n < N; ++n)
        for (long q = 0; q < P; ++q) {
          const double h = pre[(q * N + n) * R + r], act = ref_act(k.act, h);
          a += dz[n * C + c] * act;
          m += std::fabs(dz[n * C + c]) * (std::fabs(act) + 2 * std::fabs(h));  // the act's own float error
        }
      grad_near(cw2, at2(c, r), dw2[c * R + r], a, m, N);
    }
  }
  auto untouched = [&](Buf<T>& b, bool absent, const char* name) {
    if (absent && !poisoned(b.p, b.n)) std::printf("  %s written without that bias\n", name), ok = false;
  };
  untouched(db1, !k.b1, "db1");
  untouched(db2, !k.b2, "db2");
  ok &= cpre.done() & cdz.done() & cdp.done() & ca.done() & cb.done() & cw1.done() & cb1.done() & cw2.done() & cb2.done();
  return ok;
}

struct GradSumCase {
  std::vector<long> lens;
  long groups;
  int policy;
  std::string str() const {
    std::string s = "lens=";
    for (long l : lens) s += std::to_string(l) + ",";
    return s + " groups=" + std::to_string(groups) + " policy=" + std::to_string(policy);
  }
};

// The single launch's weight-gradient partials summed over the groups
// (sum_partials): each output exactly the float sum over the groups in
// order, rounded once to T; nothing past each output's end written.
template <class T>
bool run_grad_sum(const std::vector<long>& lens, long groups, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> U(-2, 2);
  PartialSums q;
  q.dtype = Ty<T>::dt;
  q.groups = groups;
  q.count = static_cast<int>(lens.size());
  std::vector<Buf<float>> parts;
  std::vector<Buf<T>> outs;
  parts.reserve(lens.size()), outs.reserve(lens.size());
  for (size_t j = 0; j < lens.size(); ++j) {
    parts.emplace_back(groups * lens[j]);
    outs.emplace_back(lens[j] + 8);  // 8 guard elements
    for (size_t i = 0; i < parts[j].n; ++i) parts[j][i] = static_cast<float>(U(rng));
    outs[j].fill_bytes(0xff);
    q.parts[j] = parts[j].p, q.out[j] = outs[j].p, q.len[j] = lens[j];
  }
  bool ok = true;
  if (sum_partials(q, nullptr) != cudaSuccess || cudaGetLastError() != cudaSuccess)
    std::printf("  sum_partials failed\n"), ok = false;
  Check ch(std::string(Ty<T>::name) + " grad_sum");
  for (size_t j = 0; j < lens.size(); ++j) {
    for (long e = 0; e < lens[j]; ++e) {
      float s = parts[j][e];
      for (long g = 1; g < groups; ++g) s += parts[j][g * lens[j] + e];
      ch.exact(at2(long(j), e), Ty<T>::to_d(outs[j][e]), Ty<T>::round_acc(s));
    }
    if (!poisoned(outs[j].p + lens[j], 8)) std::printf("  grad_sum wrote past output %zu\n", j), ok = false;
  }
  return ch.done() && ok;
}

bool grad_sum_any(DType dt, const GradSumCase& k, std::mt19937_64& rng) {
  return run_typed(dt, [&](auto tag) { return run_grad_sum<decltype(tag)>(k.lens, k.groups, rng); });
}

bool excite_any(DType dt, const SeExciteCase& k, std::mt19937_64& rng) {
  return run_typed(dt, [&](auto tag) { return run_excite<decltype(tag)>(k, rng); });
}
bool cbam_mlp_any(DType dt, const SeExciteCase& k, bool light, std::mt19937_64& rng) {
  return run_typed(dt, [&](auto tag) { return run_cbam_mlp<decltype(tag)>(k, light, rng); });
}
bool cbam_mlp_bwd_any(DType dt, const SeExciteCase& k, bool light, std::mt19937_64& rng) {
  return run_typed(dt, [&](auto tag) { return run_cbam_mlp_bwd<decltype(tag)>(k, light, rng); });
}
bool excite_bwd_any(DType dt, const SeExciteCase& k, std::mt19937_64& rng) {
  return run_typed(dt, [&](auto tag) { return run_excite_bwd<decltype(tag)>(k, rng); });
}

}  // namespace

// se_excite_forward_pooled straight after se_pool with defer_combine: the
// same bits as se_pool (combining its partials itself) then
// se_excite_forward, for pooled, maxv, hidden, logits and g; and the launches
// it took: one cooperative launch where the device has them and holds the
// grid (what is left of the forward after the pool), else the combine's
// launch (with segments) and a launch per layer.
struct PooledCase {
  int N, C, rd, H, W;
  bool cl, two_layer, with_max;
  int dev, sm, policy;
  bool cooperative = true;
  bool expect_coop = true;  // one cooperative launch after the pool (else the launches)
  std::string str() const {
    char b[200];
    std::snprintf(b, sizeof b, "N=%d C=%d rd=%d H=%d W=%d %s %s max=%d dev=%d sm=%d policy=%d cooperative=%d", N, C, rd,
                  H, W, cl ? "channels_last" : "NCHW", two_layer ? "two-layer" : "effective", with_max, dev, sm, policy,
                  cooperative);
    return b;
  }
};

template <class T>
bool run_excite_pooled(const PooledCase& k, std::mt19937_64& rng) {
  using A = typename Ty<T>::A;
  const long N = k.N, C = k.C, R = k.two_layer ? k.rd : k.C, HW = long{k.H} * k.W;
  std::uniform_real_distribution<double> U(-1, 1), W(-0.5, 0.5);
  Buf<T> x(N * C * HW), dy(N * C * HW), w1(R * C), b1(R), w2(k.two_layer ? C * R : 0), b2(C);
  fill_x_dy(x, dy, 0, rng);
  for (size_t i = 0; i < w1.n; ++i) w1[i] = Ty<T>::from_d(W(rng));
  for (size_t i = 0; i < w2.n; ++i) w2[i] = Ty<T>::from_d(W(rng));
  for (long i = 0; i < R; ++i) b1[i] = Ty<T>::from_d(U(rng));
  for (long i = 0; i < C; ++i) b2[i] = Ty<T>::from_d(U(rng));
  struct Out {
    Buf<A> pooled, maxv, hidden, logits, g, parts, ws;
    std::vector<std::string> trace;
  };
  if (cudaSetDevice(k.dev) != cudaSuccess) return std::printf("  cudaSetDevice(%d) failed\n", k.dev), false;
  bool ok = true;
  auto run = [&](bool pooled_api) {
    Out o;
    o.pooled = Buf<A>(N * C), o.maxv = Buf<A>(N * C), o.hidden = Buf<A>(N * R), o.logits = Buf<A>(N * C),
    o.g = Buf<A>(N * C);
    for (Buf<A>* b : {&o.pooled, &o.maxv, &o.hidden, &o.logits, &o.g}) b->fill_bytes(0xff);
    SePass q;
    q.dtype = Ty<T>::dt;
    q.N = N, q.C = C, q.HW = HW, q.channels_last = k.cl, q.sm_count = k.sm, q.x = x.p;
    q.sum = o.pooled.p, q.ext = k.with_max ? o.maxv.p : nullptr;
    q.defer_combine = pooled_api;
    o.ws = segment_workspace<A>(q, false);
    SeExcite e;
    e.dtype = Ty<T>::dt;
    e.N = N, e.C = C, e.rd = R, e.two_layer = k.two_layer, e.act = 1, e.gate = 0, e.sm_count = k.sm;
    e.w1 = w1.p, e.b1 = b1.p, e.w2 = k.two_layer ? w2.p : nullptr, e.b2 = k.two_layer ? b2.p : nullptr;
    e.pooled = o.pooled.p, e.hidden = k.two_layer ? o.hidden.p : nullptr, e.logits = o.logits.p, e.g = o.g.p;
    o.parts = Buf<A>(se_excite_partials(e));
    o.parts.fill_bytes(0xff);
    e.partials = o.parts.n ? o.parts.p : nullptr;
    if (se_pool(q, nullptr) != cudaSuccess) std::printf("  se_pool failed\n"), ok = false;
    emu::take_trace();
    const cudaError_t err = pooled_api ? se_excite_forward_pooled(e, q, k.cooperative, nullptr) : se_excite_forward(e, nullptr);
    if (err != cudaSuccess || cudaGetLastError() != cudaSuccess)
      std::printf("  the excitation failed (%d)\n", static_cast<int>(err)), ok = false;
    for (const std::string& t : emu::take_trace()) o.trace.push_back(t.substr(0, t.find('<')));
    if (!pooled_api && q.segments > 1) o.trace.insert(o.trace.begin(), "combine_partials_kernel");
    return o;
  };
  const Out ref = run(false), got = run(true);
  const std::string tn = Ty<T>::name;
  auto same = [&](const char* what, const Buf<A>& a, const Buf<A>& b, long n) {
    if (std::memcmp(a.p, b.p, n * sizeof(A)) == 0) return;
    std::printf("  %s %s: not the bits of se_pool + se_excite_forward\n", tn.c_str(), what);
    ok = false;
  };
  same("pooled", ref.pooled, got.pooled, N * C);
  if (k.with_max) same("maxv", ref.maxv, got.maxv, N * C);
  if (k.two_layer) same("hidden", ref.hidden, got.hidden, N * R);
  same("logits", ref.logits, got.logits, N * C);
  same("g", ref.g, got.g, N * C);
  const std::vector<std::string> coop = {"cudaLaunchKernelEx"};
  const std::vector<std::string>& want = k.expect_coop ? coop : ref.trace;
  if (got.trace != want) {
    std::string g, w;
    for (const auto& t : got.trace) g += t + " ";
    for (const auto& t : want) w += t + " ";
    std::printf("  %s launches after the pool: %s(expected %s)\n", tn.c_str(), g.c_str(), w.c_str());
    ok = false;
  }
  cudaSetDevice(0);
  return ok;
}

// The backward's twin: se_reduce with defer_combine, then se_excite_backward
// reading its partials (s_partials) in place of s and cnt: the bits of
// se_reduce (with its combine) then se_excite_backward, for g, a, b and the
// four weight gradients, and no combine launched.
template <class T>
bool run_excite_bwd_pooled(const PooledCase& k, std::mt19937_64& rng) {
  using A = typename Ty<T>::A;
  const long N = k.N, C = k.C, R = k.two_layer ? k.rd : k.C, HW = long{k.H} * k.W;
  std::uniform_real_distribution<double> U(-1, 1), W(-0.5, 0.5), Z(-4, 4);
  Buf<T> x(N * C * HW), dy(N * C * HW), w1(R * C), w2(k.two_layer ? C * R : 0);
  fill_x_dy(x, dy, 1, rng);  // ties: the max's counts matter
  for (size_t i = 0; i < w1.n; ++i) w1[i] = Ty<T>::from_d(W(rng));
  for (size_t i = 0; i < w2.n; ++i) w2[i] = Ty<T>::from_d(W(rng));
  Buf<A> pooled(N * C), maxv(N * C), logits(N * C), hidden(N * R);
  for (long i = 0; i < N * C; ++i) pooled[i] = static_cast<A>(U(rng)), logits[i] = static_cast<A>(Z(rng));
  for (long i = 0; i < N * R; ++i) hidden[i] = static_cast<A>(Z(rng));
  auto idx = [&](long n, long c, long q) { return k.cl ? (n * HW + q) * C + c : (n * C + c) * HW + q; };
  for (long n = 0; n < N; ++n)
    for (long c = 0; c < C; ++c) {
      double m = -INFINITY;
      for (long q = 0; q < HW; ++q) m = std::max(m, Ty<T>::to_d(x[idx(n, c, q)]));
      maxv[n * C + c] = static_cast<A>(m);
    }
  bool ok = true;
  long segments = 1;
  struct Out { Buf<A> s, cnt, g, a, b, ws, red; Buf<T> dw1, db1, dw2, db2; std::vector<std::string> trace; };
  auto run = [&](bool deferred) {
    Out o;
    o.s = Buf<A>(N * C), o.cnt = Buf<A>(N * C), o.g = Buf<A>(N * C), o.a = Buf<A>(N * C), o.b = Buf<A>(N * C);
    o.dw1 = Buf<T>(R * C), o.db1 = Buf<T>(R), o.dw2 = Buf<T>(w2.n), o.db2 = Buf<T>(C);
    for (Buf<A>* q : {&o.s, &o.cnt, &o.g, &o.a, &o.b}) q->fill_bytes(0xff);
    for (Buf<T>* q : {&o.dw1, &o.db1, &o.dw2, &o.db2}) q->fill_bytes(0xff);
    SePass q;
    q.dtype = Ty<T>::dt;
    q.N = N, q.C = C, q.HW = HW, q.channels_last = k.cl, q.sm_count = k.sm, q.x = x.p, q.dy = dy.p;
    q.sum = o.s.p, q.ext = k.with_max ? o.cnt.p : nullptr, q.maxv = k.with_max ? maxv.p : nullptr;
    q.defer_combine = deferred;
    o.red = segment_workspace<A>(q, true);
    segments = q.segments;
    SeExcite e;
    e.dtype = Ty<T>::dt;
    e.N = N, e.C = C, e.rd = R, e.two_layer = k.two_layer, e.act = 1, e.gate = 1, e.sm_count = k.sm;
    e.w1 = w1.p, e.w2 = k.two_layer ? w2.p : nullptr;
    e.pooled = pooled.p, e.s = o.s.p, e.saved_logits = logits.p, e.saved_hidden = k.two_layer ? hidden.p : nullptr;
    e.HW = HW, e.cnt = k.with_max ? o.cnt.p : nullptr;
    if (deferred) e.s_partials = q.partials, e.s_segments = q.segments;
    e.g = o.g.p, e.a = o.a.p, e.b = k.with_max ? o.b.p : nullptr;
    e.dw1 = o.dw1.p, e.db1 = o.db1.p, e.dw2 = k.two_layer ? o.dw2.p : nullptr, e.db2 = k.two_layer ? o.db2.p : nullptr;
    o.ws = Buf<A>(se_excite_backward_workspace(e));
    o.ws.fill_bytes(0xff);
    e.partials = o.ws.p;
    emu::take_trace();
    if (se_reduce(q, nullptr) != cudaSuccess || se_excite_backward(e, nullptr) != cudaSuccess ||
        cudaGetLastError() != cudaSuccess)
      std::printf("  se_reduce / se_excite_backward failed\n"), ok = false;
    for (const std::string& t : emu::take_trace()) o.trace.push_back(t.substr(0, t.find('<')));
    return o;
  };
  if (cudaSetDevice(k.dev) != cudaSuccess) return false;
  const Out ref = run(false), got = run(true);
  cudaSetDevice(0);
  const std::string tn = Ty<T>::name;
  auto same = [&](const char* what, const void* a, const void* b, size_t bytes) {
    if (std::memcmp(a, b, bytes) == 0) return;
    std::printf("  %s %s: not the bits of se_reduce + se_excite_backward (segments %ld)\n", tn.c_str(), what, segments);
    ok = false;
  };
  same("g", ref.g.p, got.g.p, N * C * sizeof(A));
  same("a", ref.a.p, got.a.p, N * C * sizeof(A));
  if (k.with_max) same("b", ref.b.p, got.b.p, N * C * sizeof(A));
  same("dw1", ref.dw1.p, got.dw1.p, R * C * sizeof(T));
  same("db1", ref.db1.p, got.db1.p, R * sizeof(T));
  if (k.two_layer) same("dw2", ref.dw2.p, got.dw2.p, w2.n * sizeof(T)), same("db2", ref.db2.p, got.db2.p, C * sizeof(T));
  const bool combined = std::find(got.trace.begin(), got.trace.end(), "combine_partials_kernel") != got.trace.end();
  if (combined || got.trace.size() + (segments > 1) != ref.trace.size())
    std::printf("  %s: %zu launches deferred, %zu not (segments %ld)\n", tn.c_str(), got.trace.size(), ref.trace.size(), segments), ok = false;
  return ok;
}

bool excite_bwd_pooled_any(DType dt, const PooledCase& k, std::mt19937_64& rng) {
  return run_typed(dt, [&](auto tag) { return run_excite_bwd_pooled<decltype(tag)>(k, rng); });
}

bool excite_pooled_any(DType dt, const PooledCase& k, std::mt19937_64& rng) {
  return run_typed(dt, [&](auto tag) { return run_excite_pooled<decltype(tag)>(k, rng); });
}

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
                             static_cast<int>((idx / 2) % 2), sms[idx % 3], static_cast<int>(idx % 3),
                             static_cast<int>((idx / 3) % 2)};
        run_case("se_excite", dt, k, [&] { return excite_any(dt, k, rng); });
        run_case("se_excite_bwd", dt, k, [&] { return excite_bwd_any(dt, k, rng); });
        if (two) {
          run_case("cbam_mlp", dt, k, [&] { return cbam_mlp_any(dt, k, idx % 4 == 0, rng); });
          run_case("cbam_mlp_bwd", dt, k, [&] { return cbam_mlp_bwd_any(dt, k, idx % 4 == 1, rng); });
        }
      }
  // The backward without samples: zero weight gradients.
  for (DType dt : dts)
    for (const SeExciteCase& k : {SeExciteCase{0, 70, 5, true, true, true, 2, 0, 132, 0, 1},
                                  SeExciteCase{0, 40, 40, false, true, false, 0, 1, 4, 0}})
      run_case("se_excite_bwd", dt, k, [&] { return excite_bwd_any(dt, k, rng); });
  for (DType dt : dts)
    for (const SeExciteCase& k : {SeExciteCase{33, 2048, 128, true, true, true, 0, 0, 132, 0, 1},   // the ResNet-50 site's widths
                                  SeExciteCase{3, 520, 520, false, true, false, 4, 1, 4, 1, 1},   // effective SE, C past 512
                                  SeExciteCase{70, 96, 8, true, false, true, 1, 0, 132, 2}})
      run_case("se_excite", dt, k, [&] { return excite_any(dt, k, rng); }),
          run_case("se_excite_bwd", dt, k, [&] { return excite_bwd_any(dt, k, rng); });
  // The single launch's gradient sums: SE's four (dw1, db1, dw2, db2), ECA's
  // two, one; groups 2 to 70; past the grid's 1024 blocks (and the cap2
  // build's grid of two) a grid-stride loop.
  for (DType dt : dts)
    for (const GradSumCase& k : {GradSumCase{{16 * 64, 16, 64 * 16, 64}, 3, 0}, GradSumCase{{5, 1}, 70, 1},
                                 GradSumCase{{4097}, 2, 2}, GradSumCase{{300, 7, 300 * 7, 300}, 9, 0},
                                 GradSumCase{{128 * 1024 + 1, 256 * 1024 + 3}, 2, 0}})
      run_case("grad_sum", dt, k, [&] { return grad_sum_any(dt, k, rng); });
  // The excitation straight from the pool's partials (se_excite_forward_pooled):
  // segments or not, two layers or effective SE, each dtype in turn; on the
  // H100, the 4-multiprocessor part (its grid walking the tiles; refused when
  // asked for a 132-multiprocessor grid), the part without cooperative
  // launches, and sm_80; and with the cooperative launch turned off.
  const PooledCase pooled_cases[] = {
      {5, 64, 16, 9, 9, true, true, true, 0, 132, 0},            // segments: the combine, fc1, fc2
      {17, 31, 4, 25, 25, false, true, false, 0, 132, 1},        // NCHW segments
      {3, 65, 65, 9, 9, true, false, true, 1, 4, 2},             // effective SE: the combine and one layer
      {40, 300, 70, 7, 7, true, true, false, 0, 132, 0},         // more tiles than one pass of the grid? (2 segments)
      {40, 300, 70, 7, 7, true, true, false, 1, 132, 1, true, false},  // 4 SMs asked for 132's grid: refused, launches
      {5, 64, 16, 9, 9, true, true, true, 2, 132, 2, true, false},     // no cooperative launch on the device
      {2, 130, 8, 1, 1, false, true, true, 3, 108, 0},           // sm_80; one segment: fc1 and fc2
      {16, 17, 17, 1, 1, true, false, false, 0, 1, 1, true, false},    // one segment, one layer: one plain launch
      {5, 64, 16, 9, 9, true, true, true, 0, 132, 2, false, false},    // FUSED_ATTN_CUDA_EXCITE=launches
      {33, 2048, 128, 7, 7, true, true, false, 0, 132, 0},       // the ResNet-50 site's widths
  };
  int pi = 0;
  for (const PooledCase& k : pooled_cases) {
    for (int d = 0; d < 4; ++d) {
      // quick: two dtypes per case, in turn (the ResNet-50 widths: bfloat16 only)
      if (quick && (k.C >= 2048 ? d != 2 : d % 2 != pi % 2)) continue;
      const DType dt = dts[(d + pi) % 4];
      run_case("se_excite_pooled", dt, k, [&] { return excite_pooled_any(dt, k, rng); });
      if (k.cooperative && k.dev != 1)
        run_case("se_excite_bwd_pooled", dt, k, [&] { return excite_bwd_pooled_any(dt, k, rng); });
    }
    ++pi;
  }
  // CBAM at the ResNet-50 site's widths (reduction 16), both kinds.
  for (DType dt : dts)
    for (bool light : {false, true}) {
      const SeExciteCase k{33, 2048, 128, true, light, !light, 0, 0, 132, 0};
      run_case("cbam_mlp", dt, k, [&] { return cbam_mlp_any(dt, k, light, rng); });
      run_case("cbam_mlp_bwd", dt, k, [&] { return cbam_mlp_bwd_any(dt, k, light, rng); });
    }
}
