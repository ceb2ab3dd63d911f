// SE two-phase kernels (se_kernels.cuh via se_forward.cu / se_backward.cu)
// against a double-precision reference of se_cuda.h's formulas.
#include "common.h"
#include "se_cuda.h"

#include <cstring>

using namespace fused_attn::cuda;

namespace {

struct SeCase {
  int N, C, H, W;
  bool cl;
  int sm;
  int mis_x, mis_dy, mis_out;
  int mode;
  bool with_max, plain_mean;
  int policy;
  std::string str() const {
    char b[256];
    std::snprintf(b, sizeof b, "N=%d C=%d H=%d W=%d %s sm=%d mis(x,dy,out)=(%d,%d,%d) mode=%s max=%d plain=%d policy=%d",
                  N, C, H, W, cl ? "channels_last" : "NCHW", sm, mis_x, mis_dy, mis_out,
                  mode == 0 ? "random" : mode == 1 ? "ties" : "nonfinite", with_max, plain_mean, policy);
    return b;
  }
};

template <class T>
bool run_se(const SeCase& k, std::mt19937_64& rng) {
  using A = typename Ty<T>::A;
  const int64_t N = k.N, C = k.C, HW = int64_t{k.H} * k.W, total = N * C * HW;
  const double u = std::is_same<A, double>::value ? 1.2e-16 : 6.0e-8;
  std::uniform_real_distribution<double> P(0.05, 1), S(-1, 1);
  auto idx = [&](int64_t n, int64_t c, int64_t q) { return k.cl ? (n * HW + q) * C + c : (n * C + c) * HW + q; };
  Buf<T> x(total, k.mis_x), dy(total, k.mis_dy), out(total, k.mis_out);
  Buf<A> g(N * C), a(N * C), b(N * C), maxv(N * C), sum(N * C), ext(N * C);
  fill_x_dy(x, dy, k.mode, rng);
  for (int64_t i = 0; i < N * C; ++i) g[i] = static_cast<A>(P(rng)), a[i] = static_cast<A>(S(rng)), b[i] = static_cast<A>(S(rng));
  auto xd = [&](int64_t n, int64_t c, int64_t q) { return Ty<T>::to_d(x[idx(n, c, q)]); };
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      double m = -INFINITY;
      for (int64_t q = 0; q < HW; ++q) {
        const double v = xd(n, c, q);
        m = (m > v || m != m) ? m : v;
      }
      maxv[n * C + c] = static_cast<A>(m);
    }
  SePass p;
  p.dtype = Ty<T>::dt;
  p.N = N, p.C = C, p.HW = HW;
  p.channels_last = k.cl;
  p.sm_count = k.sm;
  p.x = x.p;
  bool ok = true;
  const std::string tn = Ty<T>::name;
  auto reduce = [&](bool bwd) {
    SePass q = p;
    q.sum = sum.p;
    q.ext = k.with_max ? ext.p : nullptr;
    q.plain_mean = k.plain_mean;
    if (bwd) q.dy = dy.p, q.maxv = k.with_max ? maxv.p : nullptr;
    sum.fill_bytes(HW ? 0xff : 0x7f), ext.fill_bytes(HW ? 0xff : 0x7f);  // NaN, or a finite poison when NaN is expected
    q.segments = se_reduce_segments(q, bwd);
    Buf<A> ws(q.segments > 1 ? 2 * N * C * q.segments : 0);
    if (q.segments > 1) ws.fill_bytes(0xff), q.partials = ws.p;
    const cudaError_t e = bwd ? se_reduce(q, nullptr) : se_pool(q, nullptr);
    if (e != cudaSuccess || cudaGetLastError() != cudaSuccess) std::printf("  se reduce returned %d\n", int(e)), ok = false;
    return q.segments;
  };
  // ---- se_pool
  {
    const int64_t segs = reduce(false);
    Check cs(tn + " se_pool.sum segs=" + std::to_string(segs)), ce(tn + " se_pool.ext");
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        double sm = 0, mag = 0;
        for (int64_t q = 0; q < HW; ++q) sm += xd(n, c, q), mag += std::fabs(xd(n, c, q));
        const double mean = sm / HW, mx = maxv[n * C + c];
        double ref = mean, tol = u * (HW / 8.0 + 40) * mag / (HW ? HW : 1) + 1e-300;
        if (k.with_max) {
          ref = k.plain_mean ? mean : 0.5 * mean + 0.5 * mx;
          tol += 4 * u * std::fabs(mx);
          ce.exact(at2(n, c), ext[n * C + c], mx);
        }
        cs.near(at2(n, c), sum[n * C + c], ref, tol);
      }
    ok &= cs.done() & ce.done();
  }
  // ---- se_reduce
  {
    const int64_t segs = reduce(true);
    Check cs(tn + " se_reduce.sum segs=" + std::to_string(segs)), ce(tn + " se_reduce.ext");
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        double sm = 0, mag = 0, cnt = 0;
        for (int64_t q = 0; q < HW; ++q) {
          const double t = Ty<T>::to_d(dy[idx(n, c, q)]) * xd(n, c, q);
          sm += t, mag += std::fabs(t);
          cnt += xd(n, c, q) == static_cast<double>(maxv[n * C + c]);
        }
        cs.near(at2(n, c), sum[n * C + c], sm, u * (HW / 8.0 + 40) * mag + 1e-300);
        if (k.with_max) ce.exact(at2(n, c), ext[n * C + c], cnt);
      }
    ok &= cs.done() & ce.done();
  }
  // The elementwise pass from the last element back (SePass::reverse, which
  // channel_gate.cpp sets by default) into a buffer aligned as out: the same
  // bits as in order.
  auto same_reversed = [&](SePass q, cudaError_t (*launcher)(const SePass&, cudaStream_t), const char* name) {
    Buf<T> rout(total, k.mis_out);
    rout.fill_bytes(0xff);
    q.reverse = true, q.out = rout.p;
    if (launcher(q, nullptr) != cudaSuccess || std::memcmp(rout.p, out.p, total * sizeof(T)) != 0) {
      std::printf("  %s reversed: failed, or not the same bits as in order\n", name);
      ok = false;
    }
  };
  // ---- se_scale: y = x·g
  {
    SePass q = p;
    q.out = out.p, q.g = g.p;
    out.fill_bytes(0xff);
    if (se_scale(q, nullptr) != cudaSuccess) std::printf("  se_scale failed\n"), ok = false;
    Check cy(tn + " se_scale.y");
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t qq = 0; qq < HW; ++qq) {
          const double r = xd(n, c, qq) * g[n * C + c], ref = Ty<T>::to_d(Ty<T>::from_d(r));
          cy.near(at3(n, c, qq), Ty<T>::to_d(out[idx(n, c, qq)]), ref, Ty<T>::ulp(ref) + 4 * u * std::fabs(r));
        }
    ok &= cy.done();
    same_reversed(q, se_scale, "se_scale");
  }
  // ---- se_dx: dy·g + a (+ b where x == maxv)
  {
    SePass q = p;
    q.dy = dy.p, q.out = out.p, q.g = g.p, q.a = a.p;
    q.b = k.with_max ? b.p : nullptr;
    q.maxv = k.with_max ? maxv.p : nullptr;
    if (!k.with_max) q.x = k.mis_x ? nullptr : x.p;   // dx without max does not need x
    out.fill_bytes(0xff);
    if (se_dx(q, nullptr) != cudaSuccess) std::printf("  se_dx failed\n"), ok = false;
    Check cd(tn + " se_dx.dx");
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t qq = 0; qq < HW; ++qq) {
          const int64_t nc = n * C + c;
          const double t = Ty<T>::to_d(dy[idx(n, c, qq)]) * g[nc];
          double r = t + a[nc], mag = std::fabs(t) + std::fabs(a[nc]);
          if (k.with_max && xd(n, c, qq) == static_cast<double>(maxv[nc])) r += b[nc], mag += std::fabs(b[nc]);
          const double ref = Ty<T>::to_d(Ty<T>::from_d(r));
          cd.near(at3(n, c, qq), Ty<T>::to_d(out[idx(n, c, qq)]), ref, Ty<T>::ulp(ref) + 8 * u * mag);
        }
    ok &= cd.done();
    same_reversed(q, se_dx, "se_dx");
  }
  return ok;
}

bool se_case_any(DType dt, const SeCase& k, std::mt19937_64& rng) {
  return run_typed(dt, [&](auto tag) { return run_se<decltype(tag)>(k, rng); });
}

void one(DType dt, const SeCase& k, std::mt19937_64& rng) {
  run_case("se", dt, k, [&] { return se_case_any(dt, k, rng); });
}

}  // namespace

void run_se_suite(bool quick) {
  std::mt19937_64 rng(77);
  const DType dts[4] = {DType::F32, DType::F16, DType::BF16, DType::F64};
  for_each_grid_case(quick, [&](const GridCase& g) {
    const SeCase k{g.N, g.C, g.H, g.W, g.cl, g.sm, g.mis_x, g.mis_dy, g.mis_out, g.mode,
                   (g.idx / 2) % 2 != 0, (g.idx / 4) % 2 != 0, g.policy};
    one(g.dt, k, rng);
  });
  struct X { int N, C, H, W, cl, sm, mode; } extra[] = {
      {1, 3, 40, 41, 0, 132, 1},   // NCHW rows, segmented over HW (odd HW: V = 1)
      {2, 4, 32, 32, 0, 132, 0},   // NCHW rows, segmented, vectorized
      {3, 5, 40, 41, 1, 132, 1},   // channels_last cols, segmented
      {1, 64, 20, 20, 1, 132, 2},  // channels_last cols, segmented, vectorized
      {2, 3, 0, 5, 0, 4, 0},       // H·W = 0: every (n, c) still written
      {2, 3, 0, 5, 1, 4, 0},
  };
  for (const X& e : extra)
    for (DType dt : dts)
      for (int wm = 0; wm < 2; ++wm)
        for (int pol = 0; pol < (quick ? 1 : 3); ++pol) {
          SeCase k{e.N, e.C, e.H, e.W, e.cl != 0, e.sm, pol == 1, pol == 2, 0, e.mode, wm != 0, pol == 2, pol};
          one(dt, k, rng);
        }
}
