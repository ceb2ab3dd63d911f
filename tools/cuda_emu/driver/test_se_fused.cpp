// The single-launch SE / ECA (se_fused.cu: se_fused_forward_kernel /
// se_fused_backward_kernel, thread-block clusters and distributed shared
// memory) through its public API, as the torch glue calls it (se_cuda.cpp,
// eca_cuda.cpp): se_fused_plan on an emulated sm_90 device (emu.cpp's table;
// the runtime calls of its runnable() are emulated), checked against
// se_fused_plan_for with the same limits, then se_fused_forward /
// se_fused_backward, every output against a double-precision reference of
// the formulas (se_cuda.h, se.h): forward stage by stage (pooled from x,
// hidden from the kernel's pooled, logits from its hidden, y from its
// logits), backward from the saved tensors to dx and the weight gradients
// (per group when groups > 1), with error bounds carried through the chain.
#include "common.h"
#include "se_cuda.h"

#include <map>

using namespace fused_attn::cuda;

namespace {

constexpr double kEps = 6.0e-8;  // float's unit roundoff (and a little)

enum Kind { TwoLayer = 0, Effective = 1, Eca = 2 };

struct FCase {
  int N, C, H, W, rd;  // rd: the hidden width (two layers), C (effective SE), k (ECA)
  bool cl;
  int kind;
  bool with_max, bias1, bias2, circular;
  int act, gate, mode, mis, policy, dev;
  std::string str() const {
    static const char* acts[] = {"relu", "silu", "gelu", "gelu_tanh", "hardswish"};
    char b[320];
    std::snprintf(b, sizeof b,
                  "%s N=%d C=%d H=%d W=%d rd=%d %s max=%d b1=%d b2=%d%s act=%s gate=%s mode=%s mis=%d policy=%d dev=%d",
                  kind == TwoLayer ? "se" : kind == Effective ? "effective-se" : "eca", N, C, H, W, rd,
                  cl ? "channels_last" : "NCHW", with_max, bias1, bias2, kind == Eca ? (circular ? " circular" : " zeros") : "",
                  acts[act], gate ? "hardsigmoid" : "sigmoid", mode == 0 ? "random" : mode == 1 ? "ties" : "nonfinite", mis,
                  policy, dev);
    return b;
  }
};

// ---- the formulas, in double (common.h's ref_act, ref_act_d, ref_gate, ref_gate_coef) ----
double padded(const double* v, int64_t C, int64_t i, bool circular) {
  if (i >= 0 && i < C) return v[i];
  if (!circular) return 0;
  i %= C;
  return v[i < 0 ? i + C : i];
}

// A product in an error bound: 0 when either factor is (an infinite value
// times an exact zero bounds nothing).
double m0(double a, double b) { return (a == 0 || b == 0) ? 0.0 : a * b; }

template <class T>
double ulp_out(double r) {
  if (!std::isfinite(r)) return 0;
  return Ty<T>::ulp(std::fabs(r));
}

template <class T>
bool run_fused(const FCase& k, std::mt19937_64& rng) {
  const int64_t N = k.N, C = k.C, HW = int64_t{k.H} * k.W, total = N * C * HW, rd = k.rd;
  const bool two = k.kind == TwoLayer, eca = k.kind == Eca;
  auto idx = [&](int64_t n, int64_t c, int64_t q) { return k.cl ? (n * HW + q) * C + c : (n * C + c) * HW + q; };
  // x, and y / dy / dx, each possibly one element off 16-byte alignment (the scalar paths).
  Buf<T> x(total, k.mis == 1), dy(total, k.mis == 2), y(total, k.mis == 3), dx(total, k.mis == 2);
  fill_x_dy(x, dy, k.mode, rng);
  const int64_t n_w1 = two ? rd * C : eca ? rd : C * C, n_b1 = two ? rd : eca ? 1 : C;
  Buf<T> w1(n_w1), b1(k.bias1 ? n_b1 : 0), w2(two ? C * rd : 0), b2(two && k.bias2 ? C : 0);
  {
    const double s1 = 2.0 / std::sqrt(double(eca ? rd : C)), s2 = 2.0 / std::sqrt(double(rd));
    std::uniform_real_distribution<double> U(-1, 1);
    for (size_t i = 0; i < w1.n; ++i) w1[i] = Ty<T>::from_d(s1 * U(rng));
    for (size_t i = 0; i < b1.n; ++i) b1[i] = Ty<T>::from_d(0.5 * U(rng));
    for (size_t i = 0; i < w2.n; ++i) w2[i] = Ty<T>::from_d(s2 * U(rng));
    for (size_t i = 0; i < b2.n; ++i) b2[i] = Ty<T>::from_d(0.5 * U(rng));
  }
  auto W1 = [&](int64_t r, int64_t c) { return Ty<T>::to_d(w1[r * (eca ? 0 : C) + c]); };
  auto W2 = [&](int64_t c, int64_t j) { return Ty<T>::to_d(w2[c * rd + j]); };
  auto B1 = [&](int64_t j) { return k.bias1 ? Ty<T>::to_d(b1[j]) : 0.0; };
  auto B2 = [&](int64_t c) { return (two && k.bias2) ? Ty<T>::to_d(b2[c]) : 0.0; };
  auto xd = [&](int64_t n, int64_t c, int64_t q) { return Ty<T>::to_d(x[idx(n, c, q)]); };
  const bool with_max = k.with_max && !eca;
  const std::string tn = Ty<T>::name;

  // The variant fields, as se_variant / eca_variant and plan_single_launch fill them.
  SeFused base;
  base.dtype = Ty<T>::dt;
  base.N = N, base.C = C, base.HW = HW, base.rd = rd;
  base.channels_last = k.cl;
  base.two_layer = two;
  base.with_max = with_max;
  base.eca = eca;
  base.circular = k.circular;
  base.act = static_cast<int8_t>(eca ? 0 : k.act);
  base.gate = static_cast<int8_t>(k.gate);
  base.w1 = w1.p;
  base.b1 = k.bias1 ? b1.p : nullptr;
  base.w2 = two ? w2.p : nullptr;
  base.b2 = (two && k.bias2) ? b2.p : nullptr;
  bool ok = true;

  // The plan: se_fused_plan on the emulated device (unforced, then forced, as
  // FUSED_ATTN_CUDA_PATH=auto / fused would), and se_fused_plan_for with the
  // device's limits must agree where the device takes every cluster size.
  static const int dev_sms[3] = {132, 4, 132};
  static const int64_t dev_optin[3] = {232448, 232448, 101376};
  auto plan = [&](SeFused& f, bool bwd) {
    if (cudaSetDevice(k.dev) != cudaSuccess) emu::fail("cudaSetDevice(%d)", k.dev);
    bool forced = false;
    bool got = se_fused_plan(f, bwd, false);
    if (!got) forced = true, got = se_fused_plan(f, bwd, true);
    if (!got) {
      std::printf("  NO PLAN (%s) for %s: %s\n", bwd ? "backward" : "forward", tn.c_str(), se_fused_refusal().c_str());
      return false;
    }
    SeFused q = f;
    const bool got2 = se_fused_plan_for(q, bwd, forced, dev_sms[k.dev], dev_optin[k.dev]);
    const bool same = got2 && q.cluster == f.cluster && q.group == f.group && q.groups == f.groups && q.cb == f.cb &&
                      q.vec == f.vec && q.staged == f.staged && q.smem == f.smem;
    if (k.dev != 2 && !same) {
      std::printf("  PLAN MISMATCH se_fused_plan vs se_fused_plan_for\n");
      return false;
    }
    if (f.cluster < 1 || f.cluster > (k.dev == 2 ? 8 : 16) || f.groups != (N + f.group - 1) / f.group ||
        f.group > kMaxFusedGroup || f.smem > dev_optin[k.dev] || (f.cluster - 1) * f.cb >= C || f.cluster * f.cb < C) {
      std::printf("  BAD PLAN cluster=%d group=%ld groups=%ld cb=%ld smem=%ld\n", f.cluster, long(f.group), long(f.groups),
                  long(f.cb), long(f.smem));
      return false;
    }
    char note[96];
    std::snprintf(note, sizeof note, "%s G=%ld groups%s vec=%d staged=%d%s", bwd ? "bwd" : "fwd", long(f.group),
                  f.groups > 1 ? ">1" : "=1", f.vec, f.staged, forced ? " forced" : "");
    emu::note(note, f.cluster);
    if (g_verbose)
      std::printf("  plan %s: cluster=%d group=%ld groups=%ld cb=%ld vec=%d staged=%d smem=%ld%s\n", bwd ? "bwd" : "fwd",
                  f.cluster, long(f.group), long(f.groups), long(f.cb), f.vec, f.staged, long(f.smem),
                  forced ? " (forced)" : "");
    return true;
  };

  // ---------------- forward ----------------
  Buf<float> pooled(N * C), maxv(with_max ? N * C : 0), hidden(two ? N * rd : 0), logits(N * C);
  {
    SeFused f = base;
    f.x = x.p;
    f.y = y.p;
    if (!plan(f, false)) return false;
    y.fill_bytes(0xff), pooled.fill_bytes(0xff), maxv.fill_bytes(0xff), hidden.fill_bytes(0xff), logits.fill_bytes(0xff);
    f.pooled = pooled.p;
    f.maxv = with_max ? maxv.p : nullptr;
    f.hidden = two ? hidden.p : nullptr;
    f.logits = logits.p;
    const cudaError_t e1 = se_fused_forward(f, nullptr), e2 = cudaGetLastError();
    if (e1 != cudaSuccess || e2 != cudaSuccess) {
      std::printf("  se_fused_forward: %s / %s\n", cudaGetErrorString(e1), cudaGetErrorString(e2));
      return false;
    }
    Check cp(tn + " fwd pooled"), cm(tn + " fwd maxv"), ch(tn + " fwd hidden"), cz(tn + " fwd logits"), cy(tn + " fwd y");
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> pk(C);  // the kernel's pooled, for the next stage
      for (int64_t c = 0; c < C; ++c) {
        double s = 0, a = 0, m = -INFINITY;
        for (int64_t q = 0; q < HW; ++q) {
          const double v = xd(n, c, q);
          s += v, a += std::fabs(v);
          m = (m > v || m != m) ? m : v;
        }
        const double mean = s / HW, ref = with_max ? 0.5 * mean + 0.5 * m : mean;
        const double err = (HW + 4) * kEps * a / HW + kEps * std::fabs(m);
        cp.near(at2(n, c), pooled[n * C + c], ref, 4 * err);
        if (with_max) cm.exact(at2(n, c), maxv[n * C + c], m);
        pk[c] = pooled[n * C + c];
      }
      std::vector<double> z(C), ze(C);
      if (two) {
        std::vector<double> hk(rd);
        for (int64_t j = 0; j < rd; ++j) {
          double h = B1(j), a = std::fabs(B1(j));
          for (int64_t c = 0; c < C; ++c) h += W1(j, c) * pk[c], a += std::fabs(W1(j, c) * pk[c]);
          ch.near(at2(n, j), hidden[n * rd + j], h, 4 * (C + 4) * kEps * a);
          hk[j] = hidden[n * rd + j];
        }
        for (int64_t c = 0; c < C; ++c) {
          double v = B2(c), a = std::fabs(B2(c)), ea = 0;
          for (int64_t j = 0; j < rd; ++j) {
            const double av = ref_act(k.act, hk[j]);
            v += W2(c, j) * av, a += std::fabs(W2(c, j) * av);
            ea += std::fabs(W2(c, j)) * 16 * kEps * (std::fabs(hk[j]) + std::fabs(av));
          }
          z[c] = v, ze[c] = (rd + 4) * kEps * a + ea;
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          double v = eca ? B1(0) : B1(c), a = std::fabs(v);
          if (eca) {
            const int64_t pad = (rd - 1) / 2;
            for (int64_t j = 0; j < rd; ++j) {
              const double t = W1(0, j) * padded(pk.data(), C, c + j - pad, k.circular);
              v += t, a += std::fabs(t);
            }
          } else {
            for (int64_t i = 0; i < C; ++i) v += W1(c, i) * pk[i], a += std::fabs(W1(c, i) * pk[i]);
          }
          z[c] = v, ze[c] = ((eca ? rd : C) + 4) * kEps * a;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        cz.near(at2(n, c), logits[n * C + c], z[c], 4 * ze[c]);
        const double zk = logits[n * C + c], g = ref_gate(k.gate, zk);
        const double ge = 8 * kEps * (std::fabs(g) + (k.gate ? (std::fabs(zk) + 3) / 6 : 0));
        for (int64_t q = 0; q < HW; ++q) {
          const double xv = xd(n, c, q), r = xv * g;
          cy.near(at3(n, c, q), Ty<T>::to_d(y[idx(n, c, q)]), r, 4 * std::fabs(xv) * ge + ulp_out<T>(r));
        }
      }
    }
    ok &= cp.done() & cm.done() & ch.done() & cz.done() & cy.done();
  }

  // ---------------- backward ----------------
  // The saved tensors: the double forward of x, in float (independent of the kernel's forward).
  std::vector<double> P(N * C), M(N * C), H(N * rd), Z(N * C);
  Buf<float> spooled(N * C), smaxv(with_max ? N * C : 0), shidden(two ? N * rd : 0), slogits(N * C);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      double s = 0, m = -INFINITY;
      for (int64_t q = 0; q < HW; ++q) {
        const double v = xd(n, c, q);
        s += v;
        m = (m > v || m != m) ? m : v;
      }
      spooled[n * C + c] = static_cast<float>(with_max ? 0.5 * (s / HW) + 0.5 * m : s / HW);
      if (with_max) smaxv[n * C + c] = static_cast<float>(m);
      P[n * C + c] = spooled[n * C + c];
      M[n * C + c] = m;
    }
    for (int64_t j = 0; j < (two ? rd : 0); ++j) {
      double h = B1(j);
      for (int64_t c = 0; c < C; ++c) h += W1(j, c) * P[n * C + c];
      shidden[n * rd + j] = static_cast<float>(h);
      H[n * rd + j] = shidden[n * rd + j];
    }
    for (int64_t c = 0; c < C; ++c) {
      double v;
      if (two) {
        v = B2(c);
        for (int64_t j = 0; j < rd; ++j) v += W2(c, j) * ref_act(k.act, H[n * rd + j]);
      } else if (eca) {
        v = B1(0);
        for (int64_t j = 0; j < rd; ++j) v += W1(0, j) * padded(&P[n * C], C, c + j - (rd - 1) / 2, k.circular);
      } else {
        v = B1(c);
        for (int64_t i = 0; i < C; ++i) v += W1(c, i) * P[n * C + i];
      }
      slogits[n * C + c] = static_cast<float>(v);
      Z[n * C + c] = slogits[n * C + c];
    }
  }
  {
    SeFused f = base;
    f.x = x.p;
    f.dy = dy.p;
    f.dx = dx.p;
    if (!plan(f, true)) return false;
    const int64_t groups = f.groups, G = f.group;
    const bool partial = groups > 1;
    // The weight gradients: T with one group, float partials [groups, ...] with more.
    const int64_t n_dw2 = two ? C * rd : 0, n_db1 = k.bias1 ? n_b1 : 0, n_db2 = (two && k.bias2) ? C : 0;
    Buf<T> dw1_t(partial ? 0 : n_w1), db1_t(partial ? 0 : n_db1), dw2_t(partial ? 0 : n_dw2), db2_t(partial ? 0 : n_db2);
    Buf<float> dw1_f(partial ? groups * n_w1 : 0), db1_f(partial ? groups * n_db1 : 0), dw2_f(partial ? groups * n_dw2 : 0),
        db2_f(partial ? groups * n_db2 : 0);
    for (auto* b : {&dw1_t, &db1_t, &dw2_t, &db2_t}) b->fill_bytes(0xff);
    for (auto* b : {&dw1_f, &db1_f, &dw2_f, &db2_f}) b->fill_bytes(0xff);
    dx.fill_bytes(0xff);
    f.w1 = w1.p;
    f.w2 = two ? w2.p : nullptr;
    f.saved_pooled = spooled.p;
    f.saved_maxv = with_max ? smaxv.p : nullptr;
    f.saved_hidden = two ? shidden.p : nullptr;
    f.saved_logits = slogits.p;
    auto ptr = [&](auto& bt, auto& bf, int64_t n) -> void* {
      if (n == 0) return nullptr;
      return partial ? static_cast<void*>(bf.p) : static_cast<void*>(bt.p);
    };
    f.dw1 = ptr(dw1_t, dw1_f, n_w1);
    f.db1 = ptr(db1_t, db1_f, n_db1);
    f.dw2 = ptr(dw2_t, dw2_f, n_dw2);
    f.db2 = ptr(db2_t, db2_f, n_db2);
    const cudaError_t e1 = se_fused_backward(f, nullptr), e2 = cudaGetLastError();
    if (e1 != cudaSuccess || e2 != cudaSuccess) {
      std::printf("  se_fused_backward: %s / %s\n", cudaGetErrorString(e1), cudaGetErrorString(e2));
      return false;
    }
    // Per sample: dz, (dh), dp with error bounds; weight gradients per group.
    std::vector<double> rw1(groups * n_w1, 0), ew1(groups * n_w1, 0), rb1(groups * n_b1, 0), eb1(groups * n_b1, 0);
    std::vector<double> rw2(groups * n_dw2, 0), ew2(groups * n_dw2, 0), rb2(groups * C, 0), eb2(groups * C, 0);
    std::vector<double> G_(N * C), DP(N * C), EDP(N * C), CNT(N * C, 0);
    std::vector<double> dz(C), edz(C), dh(rd), edh(rd);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t grp = n / G;
      const int64_t ng = std::min<int64_t>(G, N - grp * G);  // samples in this group
      for (int64_t c = 0; c < C; ++c) {
        double s = 0, a = 0;
        for (int64_t q = 0; q < HW; ++q) {
          const double t = Ty<T>::to_d(dy[idx(n, c, q)]) * xd(n, c, q);
          s += t, a += std::fabs(t);
          if (with_max && xd(n, c, q) == M[n * C + c]) CNT[n * C + c] += 1;
        }
        const double z = Z[n * C + c], g = ref_gate(k.gate, z), co = ref_gate_coef(k.gate, z, g);
        G_[n * C + c] = g;
        // gate_bwd: the hard sigmoid's flat parts give 0 whatever the grad (NaN included).
        const bool flat = k.gate == 1 && !(z > -3 && z < 3);
        dz[c] = flat ? 0.0 : s * co;
        edz[c] = flat ? 0.0 : std::fabs(co) * ((HW + 4) * kEps * a + 8 * kEps * std::fabs(s));
      }
      double* p = &P[n * C];
      if (two) {
        for (int64_t j = 0; j < rd; ++j) {
          double da = 0, ea = 0, aa = 0;
          for (int64_t c = 0; c < C; ++c) da += dz[c] * W2(c, j), ea += m0(edz[c], std::fabs(W2(c, j))), aa += std::fabs(dz[c] * W2(c, j));
          double mag;
          const double h = H[n * rd + j], d = ref_act_d(k.act, h, mag);
          // act_bwd: ReLU's and HardSwish's zero parts give 0 whatever the grad.
          const bool zero = (k.act == 0 && h <= 0) || (k.act == 4 && h < -3);
          dh[j] = zero ? 0.0 : da * d;
          edh[j] = zero ? 0.0 : m0(std::fabs(d), ea + (C + 2) * kEps * aa) + m0(16 * kEps * std::fabs(da), mag);
          const double av = ref_act(k.act, h), eav = 16 * kEps * (std::fabs(h) + std::fabs(av));
          for (int64_t c = 0; c < C; ++c) {
            rw2[grp * n_dw2 + c * rd + j] += dz[c] * av;
            ew2[grp * n_dw2 + c * rd + j] += m0(edz[c], std::fabs(av)) + m0(std::fabs(dz[c]), eav) + (ng + 2) * kEps * std::fabs(dz[c] * av);
          }
          rb1[grp * n_b1 + j] += dh[j];
          eb1[grp * n_b1 + j] += edh[j] + (ng + 2) * kEps * std::fabs(dh[j]);
          for (int64_t c = 0; c < C; ++c) {
            rw1[grp * n_w1 + j * C + c] += dh[j] * p[c];
            ew1[grp * n_w1 + j * C + c] += m0(edh[j], std::fabs(p[c])) + (ng + 2) * kEps * std::fabs(dh[j] * p[c]);
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          rb2[grp * C + c] += dz[c];
          eb2[grp * C + c] += edz[c] + (ng + 2) * kEps * std::fabs(dz[c]);
          double v = 0, e = 0, a = 0;
          for (int64_t j = 0; j < rd; ++j) v += dh[j] * W1(j, c), e += m0(edh[j], std::fabs(W1(j, c))), a += std::fabs(dh[j] * W1(j, c));
          DP[n * C + c] = v, EDP[n * C + c] = e + (rd + 2) * kEps * a;
        }
      } else if (eca) {
        const int64_t pad = (rd - 1) / 2;
        for (int64_t c = 0; c < C; ++c) {
          double v = 0, e = 0, a = 0;
          for (int64_t j = 0; j < rd; ++j) {
            v += W1(0, j) * padded(dz.data(), C, c - j + pad, k.circular);
            e += std::fabs(W1(0, j)) * padded(edz.data(), C, c - j + pad, k.circular);
            a += std::fabs(W1(0, j) * padded(dz.data(), C, c - j + pad, k.circular));
          }
          DP[n * C + c] = v, EDP[n * C + c] = e + (rd + 2) * kEps * a;
          for (int64_t j = 0; j < rd; ++j) {
            const double pv = padded(p, C, c + j - pad, k.circular);
            rw1[grp * n_w1 + j] += pv * dz[c];
            ew1[grp * n_w1 + j] += m0(std::fabs(pv), edz[c]) + (ng * C + 2) * kEps * std::fabs(pv * dz[c]);
          }
          rb1[grp] += dz[c];
          eb1[grp] += edz[c] + (ng * C + 2) * kEps * std::fabs(dz[c]);
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t i = 0; i < C; ++i) {
            rw1[grp * n_w1 + c * C + i] += dz[c] * p[i];
            ew1[grp * n_w1 + c * C + i] += m0(edz[c], std::fabs(p[i])) + (ng + 2) * kEps * std::fabs(dz[c] * p[i]);
          }
          rb1[grp * n_b1 + c] += dz[c];
          eb1[grp * n_b1 + c] += edz[c] + (ng + 2) * kEps * std::fabs(dz[c]);
        }
        for (int64_t i = 0; i < C; ++i) {
          double v = 0, e = 0, a = 0;
          for (int64_t c = 0; c < C; ++c) v += dz[c] * W1(c, i), e += m0(edz[c], std::fabs(W1(c, i))), a += std::fabs(dz[c] * W1(c, i));
          DP[n * C + i] = v, EDP[n * C + i] = e + (C + 2) * kEps * a;
        }
      }
    }
    Check cx(tn + " bwd dx"), cw1(tn + " bwd dw1"), cb1(tn + " bwd db1"), cw2(tn + " bwd dw2"), cb2(tn + " bwd db2");
    const double share = (with_max ? 0.5 : 1.0) / HW;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const double g = G_[n * C + c], dp = DP[n * C + c], cnt = CNT[n * C + c];
        for (int64_t q = 0; q < HW; ++q) {
          const double dyv = Ty<T>::to_d(dy[idx(n, c, q)]);
          double r = dyv * g + dp * share, e = EDP[n * C + c] * share + 4 * kEps * (std::fabs(dyv * g) + std::fabs(dp * share));
          if (with_max && xd(n, c, q) == M[n * C + c]) {
            r += 0.5 * dp / cnt;
            e += EDP[n * C + c] * 0.5 / cnt + 4 * kEps * std::fabs(0.5 * dp / cnt);
          }
          cx.near(at3(n, c, q), Ty<T>::to_d(dx[idx(n, c, q)]), r, 4 * e + ulp_out<T>(r));
        }
      }
    auto grads = [&](Check& ck, Buf<T>& bt, Buf<float>& bf, int64_t n, const std::vector<double>& r,
                     const std::vector<double>& e, int64_t stride) {
      for (int64_t grp = 0; grp < (n ? groups : 0); ++grp)
        for (int64_t i = 0; i < n; ++i) {
          const double ref = r[grp * stride + i], tol = 4 * e[grp * stride + i];
          if (partial) ck.near(at2(grp, i), bf[grp * n + i], ref, tol + kEps * std::fabs(ref));
          else ck.near(at2(grp, i), Ty<T>::to_d(bt[i]), ref, tol + ulp_out<T>(ref));
        }
    };
    grads(cw1, dw1_t, dw1_f, n_w1, rw1, ew1, n_w1);
    grads(cb1, db1_t, db1_f, n_db1, rb1, eb1, n_b1);
    grads(cw2, dw2_t, dw2_f, n_dw2, rw2, ew2, n_dw2);
    grads(cb2, db2_t, db2_f, n_db2, rb2, eb2, C);
    ok &= cx.done() & cw1.done() & cb1.done() & cw2.done() & cb2.done();
  }
  return ok;
}

bool fused_any(DType dt, const FCase& k, std::mt19937_64& rng) {
  switch (dt) {
    case DType::F32: return run_fused<float>(k, rng);
    case DType::F16: return run_fused<__half>(k, rng);
    case DType::BF16: return run_fused<__nv_bfloat16>(k, rng);
    default: return false;
  }
}

// The planner's answers on devices where there must be none: sm_80, float64, empty shapes.
bool no_plans() {
  bool ok = true;
  SeFused f;
  f.dtype = DType::F32, f.N = 2, f.C = 8, f.HW = 9, f.rd = 2;
  static float buf[4096] __attribute__((aligned(64)));
  f.x = f.dy = buf;
  f.y = f.dx = buf;
  cudaSetDevice(3);  // sm_80
  ok &= !se_fused_plan(f, false, true) && !se_fused_plan(f, true, true);
  cudaSetDevice(0);
  SeFused d = f;
  d.dtype = DType::F64;
  ok &= !se_fused_plan(d, false, true) && !se_fused_plan(d, true, true);
  SeFused e = f;
  e.HW = 0;
  ok &= !se_fused_plan(e, false, true);
  ok &= se_fused_plan(f, false, false);  // and the same shape on sm_90 has one
  return ok;
}

}  // namespace

void run_se_fused_suite(bool quick) {
  std::mt19937_64 rng(2026);
  ++g_stats.cases;
  if (!no_plans()) {
    ++g_stats.failed_cases;
    std::printf("FAILED se_fused: a plan where there must be none (sm_80, float64, H·W = 0)\n");
  }
  // N, C, H, W, rd (two layers; ECA's k is 1, 3 or 5; effective SE's rd is C).
  struct S { int N, C, H, W, rd; } shapes[] = {
      {1, 1, 1, 1, 1},     // one channel, one pixel
      {2, 3, 3, 5, 2},     // odd C and H·W, a group of 2
      {1, 17, 7, 7, 4},    // a cluster of 2 (cb 9: the last block has 8)
      {3, 64, 3, 5, 16},   // a cluster of 8, a group of 3
      {1, 130, 1, 3, 8},   // a cluster of 15 (cb 9: non-portable size)
      {5, 24, 3, 5, 4},    // groups of 2 and a last group of 1
      {10, 17, 14, 14, 4}, // ten groups: weight-gradient partials
      {1, 40, 33, 31, 8},  // larger tiles
      {2, 256, 2, 2, 16},  // a cluster of 16
      {9, 16, 4, 4, 3},    // nine samples: groups of 1 or 2
      {8, 16, 2, 2, 8},    // a group of 8
      {15, 8, 2, 3, 8},    // groups of 8 and 7 (float32 forward)
  };
  const DType dts[3] = {DType::F32, DType::F16, DType::BF16};
  std::mt19937_64 pick(99);
  long idx = 0;
  for (DType dt : dts)
    for (int cl = 0; cl < 2; ++cl)
      for (const S& s : shapes)
        for (int kind = 0; kind < 3; ++kind) {
          ++idx;
          // The variant, schedule, device, inputs and alignment: drawn per case (a stream of
          // their own, drawn for every case, so the quick suite is a subset of the full one).
          const uint64_t r = pick();
          auto d = [&](int shift, int n) { return static_cast<int>((r >> shift) % n); };
          if (quick && ((idx / 3) + kind) % 3 != 0) continue;  // a third, every kind
          FCase k{};
          k.N = s.N, k.C = s.C, k.H = s.H, k.W = s.W;
          k.kind = kind;
          k.rd = kind == TwoLayer ? s.rd : kind == Effective ? s.C : 1 + 2 * d(0, 3);
          k.cl = cl != 0;
          k.with_max = d(4, 2);
          k.bias1 = d(6, 4) != 0;
          k.bias2 = d(9, 4) != 0;
          k.circular = d(12, 2);
          k.act = d(14, 5);
          k.gate = d(18, 2);
          k.mode = d(20, 3);
          k.mis = d(24, 4);
          k.policy = d(28, 3);
          k.dev = d(32, 3);
          emu::policy = k.policy;
          run_case("se_fused", dt, k, [&] { return fused_any(dt, k, rng); });
        }
}
