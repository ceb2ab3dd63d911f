// CBAM kernels (cbam_kernels.cu) against a double-precision reference of cbam_cuda.h's formulas.
#include "cbam_cuda.h"
#include "common.h"

#include <algorithm>
#include <cstring>
#include <tuple>
#include <utility>

using namespace fused_attn::cuda;

namespace {

struct CbamCase {
  int N, C, H, W;
  bool cl;
  int sm;
  int mis_x, mis_dy, mis_out;  // elements past 16-byte alignment
  int mode;                    // 0 random, 1 ties, 2 with NaN / inf
  int policy;
  std::string str() const {
    char b[256];
    std::snprintf(b, sizeof b, "N=%d C=%d H=%d W=%d %s sm=%d mis(x,dy,out)=(%d,%d,%d) mode=%s policy=%d", N, C, H, W,
                  cl ? "channels_last" : "NCHW", sm, mis_x, mis_dy, mis_out,
                  mode == 0 ? "random" : mode == 1 ? "ties" : "nonfinite", policy);
    return b;
  }
};

template <class T>
bool run_cbam(const CbamCase& k, std::mt19937_64& rng) {
  using A = typename Ty<T>::A;
  const int64_t N = k.N, C = k.C, HW = int64_t{k.H} * k.W, total = N * C * HW;
  const double u = std::is_same<A, double>::value ? 1.2e-16 : 6.0e-8;
  std::uniform_real_distribution<double> P(0.05, 1), S(-1, 1);
  std::uniform_int_distribution<int> pick(0, 4);
  auto idx = [&](int64_t n, int64_t c, int64_t q) { return k.cl ? (n * HW + q) * C + c : (n * C + c) * HW + q; };

  Buf<T> x(total, k.mis_x), dy(total, k.mis_dy), out(total, k.mis_out);
  Buf<A> g(N * C), mx(N * C), a(N * C), b(N * C), s(N * HW), cmax(N * HW), dcmean(N * HW), dcmax(N * HW);
  Buf<A> sum_pix(N * HW), ext_pix(N * HW), sum_ch(N * C), ext_ch(N * C);
  fill_x_dy(x, dy, k.mode, rng);
  for (int64_t i = 0; i < N * C; ++i) {
    g[i] = static_cast<A>(k.mode == 1 ? (pick(rng) < 2 ? 0.5 : 1.0) : P(rng));
    a[i] = static_cast<A>(S(rng));
    b[i] = static_cast<A>(S(rng));
  }
  for (int64_t i = 0; i < N * HW; ++i) {
    s[i] = static_cast<A>(P(rng));
    dcmean[i] = static_cast<A>(S(rng));
    dcmax[i] = static_cast<A>(S(rng));
  }
  // x1 exactly as the formula says: the product in A, rounded to T.
  auto xa = [&](int64_t n, int64_t c, int64_t q) -> A { return static_cast<A>(Ty<T>::to_d(x[idx(n, c, q)])); };
  auto x1 = [&](int64_t n, int64_t c, int64_t q) -> double {
    const A prod = xa(n, c, q) * g[n * C + c];
    return Ty<T>::round_acc(prod);
  };
  auto nanmax = [](double m, double v) { return (m > v || m != m) ? m : v; };
  // Reference max pools (inputs of the later passes).
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t q = 0; q < HW; ++q) {
      double m = -INFINITY;
      for (int64_t c = 0; c < C; ++c) m = nanmax(m, x1(n, c, q));
      cmax[n * HW + q] = static_cast<A>(m);
    }
    for (int64_t c = 0; c < C; ++c) {
      double m = -INFINITY;
      for (int64_t q = 0; q < HW; ++q) m = nanmax(m, xa(n, c, q));
      mx[n * C + c] = static_cast<A>(m);
    }
  }

  CbamPass p;
  p.dtype = Ty<T>::dt;
  p.N = N, p.C = C, p.HW = HW;
  p.channels_last = k.cl;
  p.sm_count = k.sm;
  p.x = x.p, p.dy = dy.p, p.g = g.p, p.mx = mx.p, p.a = a.p, p.b = b.p;
  p.s = s.p, p.cmax = cmax.p, p.dcmean = dcmean.p, p.dcmax = dcmax.p;
  bool ok = true;
  const std::string tn = Ty<T>::name;

  auto run_reduce = [&](CbamReduce kind, const char* kname, Buf<A>& sum, Buf<A>& ext, int64_t outputs) {
    CbamPass q = p;
    q.sum = sum.p, q.ext = ext.p;
    sum.fill_bytes(0xff), ext.fill_bytes(0xff);
    q.segments = cbam_reduce_segments(q, kind);
    Buf<A> ws(q.segments > 1 ? 2 * q.segments * N * outputs : 0);
    if (q.segments > 1) {
      ws.fill_bytes(0xff);
      q.partials = ws.p;
      // A wrong segment count must be refused.
      CbamPass bad = q;
      bad.segments = q.segments + 1;
      if (cbam_reduce(bad, kind, nullptr) != cudaErrorInvalidValue) {
        std::printf("  %s: accepted a wrong segment count\n", kname);
        ok = false;
      }
    }
    const cudaError_t e = cbam_reduce(q, kind, nullptr);
    if (e != cudaSuccess || cudaGetLastError() != cudaSuccess) {
      std::printf("  %s returned %d\n", kname, static_cast<int>(e));
      ok = false;
    }
    // The batch walked from the last sample back (CbamPass::reverse, which
    // cbam_cuda.cpp sets for the channel pool and the channel reduce): the
    // same bits in every output.
    if (kind != CbamReduce::PixelReduce) {
      Buf<A> rsum(sum.n), rext(ext.n);
      rsum.fill_bytes(0xff), rext.fill_bytes(0xff);
      if (q.segments > 1) ws.fill_bytes(0xff);
      CbamPass r = q;
      r.reverse = true;
      r.sum = rsum.p, r.ext = rext.p;
      const cudaError_t re = cbam_reduce(r, kind, nullptr);
      if (re != cudaSuccess || cudaGetLastError() != cudaSuccess ||
          std::memcmp(rsum.p, sum.p, sum.n * sizeof(A)) != 0 || std::memcmp(rext.p, ext.p, ext.n * sizeof(A)) != 0) {
        std::printf("  %s reversed: returned %d, or not the same bits as in order\n", kname, static_cast<int>(re));
        ok = false;
      }
    }
    return q.segments;
  };

  // ---- ChannelPool: mean_c x1, max_c x1 per pixel.
  {
    const int64_t segs = run_reduce(CbamReduce::ChannelPool, "ChannelPool", sum_pix, ext_pix, HW);
    Check cs(tn + " ChannelPool.sum segs=" + std::to_string(segs)), ce(tn + " ChannelPool.ext");
    for (int64_t n = 0; n < N; ++n)
      for (int64_t q = 0; q < HW; ++q) {
        double sm = 0, mag = 0;
        for (int64_t c = 0; c < C; ++c) sm += x1(n, c, q), mag += std::fabs(x1(n, c, q));
        cs.near(at2(n, q), sum_pix[n * HW + q], sm / C, u * (C / 8.0 + 40) * mag / C + 1e-300);
        ce.exact(at2(n, q), ext_pix[n * HW + q], cmax[n * HW + q]);
      }
    ok &= cs.done() & ce.done();
  }
  // ---- PixelReduce: Σ_c dy·x1, #{c : x1 == cmax}.
  {
    const int64_t segs = run_reduce(CbamReduce::PixelReduce, "PixelReduce", sum_pix, ext_pix, HW);
    Check cs(tn + " PixelReduce.sum segs=" + std::to_string(segs)), ce(tn + " PixelReduce.ext");
    for (int64_t n = 0; n < N; ++n)
      for (int64_t q = 0; q < HW; ++q) {
        double sm = 0, mag = 0, cnt = 0;
        for (int64_t c = 0; c < C; ++c) {
          const double d = Ty<T>::to_d(dy[idx(n, c, q)]), v = x1(n, c, q);
          sm += d * v, mag += std::fabs(d * v);
          cnt += v == static_cast<double>(cmax[n * HW + q]);
        }
        cs.near(at2(n, q), sum_pix[n * HW + q], sm, u * (C / 8.0 + 40) * mag + 1e-300);
        ce.exact(at2(n, q), ext_pix[n * HW + q], cnt);
      }
    ok &= cs.done() & ce.done();
  }
  auto dx1 = [&](int64_t n, int64_t c, int64_t q, double* mag) {
    const int64_t pix = n * HW + q;
    const double t1 = Ty<T>::to_d(dy[idx(n, c, q)]) * s[pix];
    double d = t1 + dcmean[pix];
    *mag = std::fabs(t1) + std::fabs(dcmean[pix]);
    if (x1(n, c, q) == static_cast<double>(cmax[pix])) d += dcmax[pix], *mag += std::fabs(dcmax[pix]);
    return d;
  };
  // ---- ChannelReduce: Σ_hw dx1·x, #{q : x == mx}.
  {
    const int64_t segs = run_reduce(CbamReduce::ChannelReduce, "ChannelReduce", sum_ch, ext_ch, C);
    Check cs(tn + " ChannelReduce.sum segs=" + std::to_string(segs)), ce(tn + " ChannelReduce.ext");
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        double sm = 0, mag = 0, cnt = 0;
        for (int64_t q = 0; q < HW; ++q) {
          double m;
          const double d = dx1(n, c, q, &m), xv = xa(n, c, q);
          sm += d * xv, mag += m * std::fabs(xv);
          cnt += xv == static_cast<double>(mx[n * C + c]);
        }
        cs.near(at2(n, c), sum_ch[n * C + c], sm, u * (HW / 8.0 + 40) * mag + 1e-300);
        ce.exact(at2(n, c), ext_ch[n * C + c], cnt);
      }
    ok &= cs.done() & ce.done();
  }
  // ---- rescale: y = x1·s.
  {
    CbamPass q = p;
    q.out = out.p;
    out.fill_bytes(0xff);
    if (cbam_rescale(q, nullptr) != cudaSuccess) std::printf("  rescale failed\n"), ok = false;
    Check cy(tn + " rescale.y");
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t qq = 0; qq < HW; ++qq) {
          const double r = x1(n, c, qq) * s[n * HW + qq];
          const double ref = Ty<T>::to_d(Ty<T>::from_d(r));
          cy.near(at3(n, c, qq), Ty<T>::to_d(out[idx(n, c, qq)]), ref, Ty<T>::ulp(ref) + 4 * u * std::fabs(r));
        }
    ok &= cy.done();
  }
  // ---- input_grad: dx = dx1·g + a (+ b where x == mx).
  {
    CbamPass q = p;
    q.out = out.p;
    out.fill_bytes(0xff);
    if (cbam_input_grad(q, nullptr) != cudaSuccess) std::printf("  input_grad failed\n"), ok = false;
    Check cd(tn + " input_grad.dx");
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t qq = 0; qq < HW; ++qq) {
          double m;
          const double d = dx1(n, c, qq, &m);
          const int64_t nc = n * C + c;
          double r = d * g[nc] + a[nc], mag = m * g[nc] + std::fabs(a[nc]);
          if (xa(n, c, qq) == static_cast<double>(mx[nc])) r += b[nc], mag += std::fabs(b[nc]);
          const double ref = Ty<T>::to_d(Ty<T>::from_d(r));
          cd.near(at3(n, c, qq), Ty<T>::to_d(out[idx(n, c, qq)]), ref, Ty<T>::ulp(ref) + 16 * u * mag);
        }
    ok &= cd.done();
  }
  return ok;
}

// ---- the forward's spatial gate: conv of the maps, BatchNorm, gate ----------
struct SpatialCase {
  int N, H, W, k;
  bool light, max_first, batch_stats, affine;
  int gate;  // FusedGate
  int mode;  // 0 random maps, 2 with a NaN in one sample's maps
  std::string str() const {
    char b[200];
    std::snprintf(b, sizeof b, "N=%d H=%d W=%d k=%d%s%s %s%s gate=%s mode=%d", N, H, W, k, light ? " light" : "",
                  max_first ? " max_first" : "", batch_stats ? "batch" : "running", affine ? " affine" : "",
                  gate ? "hard" : "sigmoid", mode);
    return b;
  }
};

// Map ci at element e of [N, H·W] as the kernels read it from smap [2, N, H·W]
// (light: ½mean + ½max rounded op by op).
template <class A>
double ref_map(const SpatialCase& sc, const A* smap, int64_t total, int ci, int64_t e) {
  const A cmean = smap[e], cmax = smap[total + e];
  if (sc.light) return static_cast<A>(static_cast<A>(cmean * A(0.5)) + static_cast<A>(cmax * A(0.5)));
  return ((ci == 0) != sc.max_first) ? cmean : cmax;
}

int g_running_turn = 0;  // the running buffers' dtype, in turn over the cases (both acc types)

// The BatchNorm's running buffers as the kernel reads them (their own dtype R,
// one buffer each); returns the values they hold, widened.
struct Running {
  Buf<float> f[2] = {Buf<float>(1), Buf<float>(1)};
  Buf<double> d[2] = {Buf<double>(1), Buf<double>(1)};
  Buf<__half> h[2] = {Buf<__half>(1), Buf<__half>(1)};
  Buf<__nv_bfloat16> b[2] = {Buf<__nv_bfloat16>(1), Buf<__nv_bfloat16>(1)};
  template <class R>
  std::pair<double, double> set(CbamSpatial& sp, Buf<R> (&r)[2], double mean, double var) {
    r[0][0] = Ty<R>::from_d(mean), r[1][0] = Ty<R>::from_d(var);
    sp.running_mean = r[0].p, sp.running_var = r[1].p, sp.running_dtype = Ty<R>::dt;
    return {Ty<R>::to_d(r[0][0]), Ty<R>::to_d(r[1][0])};
  }
  std::pair<double, double> set(CbamSpatial& sp, int which, double mean, double var) {
    switch (which % 4) {
      case 0: return set(sp, f, mean, var);
      case 1: return set(sp, d, mean, var);
      case 2: return set(sp, h, mean, var);
      default: return set(sp, b, mean, var);
    }
  }
};

// The conv weight and the BatchNorm's scalars as the glue hands them over: in
// a dtype of their own, turn by turn float32, bfloat16, float16, float64 (w:
// x's dtype, so float32 or float64 by A except on the 16-bit turns, gamma
// and beta one turn further on), and the reference's A values rounded to
// what the kernels read (the stored value converted to A).
struct SpatialParams {
  Buf<float> f[3];
  Buf<double> d[3];
  Buf<__half> h[3];
  Buf<__nv_bfloat16> b[3];
  template <class R, class A>
  const void* put(Buf<R>& dst, Buf<A>& ref, DType& dt) {
    dst = Buf<R>(ref.n);
    for (size_t i = 0; i < ref.n; ++i) {
      dst[i] = Ty<R>::from_d(static_cast<double>(ref[i]));
      ref[i] = static_cast<A>(Ty<R>::to_d(dst[i]));
    }
    dt = Ty<R>::dt;
    return dst.p;
  }
  template <class A>
  const void* put(int slot, int turn, Buf<A>& ref, DType& dt) {
    switch (turn % 4) {
      case 0: return std::is_same<A, double>::value ? put(d[slot], ref, dt) : put(f[slot], ref, dt);
      case 1: return put(b[slot], ref, dt);
      case 2: return put(h[slot], ref, dt);
      default: return std::is_same<A, double>::value ? put(f[slot], ref, dt) : put(d[slot], ref, dt);
    }
  }
  template <class A>
  void set(CbamSpatial& sp, int turn, Buf<A>& w, Buf<A>& gamma, Buf<A>& beta, bool affine) {
    sp.w = put(0, turn, w, sp.w_dtype);
    sp.gamma = affine ? put(1, turn + 1, gamma, sp.gamma_dtype) : nullptr;
    sp.beta = affine ? put(2, turn + 2, beta, sp.beta_dtype) : nullptr;
  }
};
int g_params_turn = 0;

template <class A>
bool run_spatial(const SpatialCase& sc, std::mt19937_64& rng) {
  const int64_t N = sc.N, HW = int64_t{sc.H} * sc.W, total = N * HW;
  const int maps = sc.light ? 1 : 2, kk = sc.k * sc.k, pad = (sc.k - 1) / 2;
  const double u = std::is_same<A, double>::value ? 1.2e-16 : 6.0e-8;
  std::uniform_real_distribution<double> U(-1, 1), P(0.5, 2);
  Buf<A> smap(2 * total), w(int64_t{maps} * kk), gamma(1), beta(1), z(total), s(total), stats_acc(2);
  Buf<double> stats(2);
  for (int64_t i = 0; i < total; ++i) {
    smap[i] = static_cast<A>(U(rng));                          // channel mean
    smap[total + i] = static_cast<A>(smap[i] + P(rng) - 0.5);  // channel max
  }
  if (sc.mode == 2) smap[total + HW / 2] = static_cast<A>(NAN);
  for (size_t i = 0; i < w.n; ++i) w[i] = static_cast<A>(U(rng) * 0.3);
  gamma[0] = static_cast<A>(P(rng));
  beta[0] = static_cast<A>(U(rng));
  CbamSpatial sp;
  sp.acc = std::is_same<A, double>::value ? DType::F64 : DType::F32;
  sp.N = N, sp.H = sc.H, sp.W = sc.W, sp.k = sc.k;
  sp.light = sc.light, sp.max_first = sc.max_first, sp.gate = static_cast<int8_t>(sc.gate);
  sp.batch_stats = sc.batch_stats;
  sp.eps = 1e-5;
  sp.smap = smap.p;
  SpatialParams params;
  params.set(sp, g_params_turn++, w, gamma, beta, sc.affine);
  const int64_t blocks = cbam_spatial_blocks(sp);
  Buf<double> part(sc.batch_stats ? 3 * blocks : 0);
  part.fill_bytes(0xff);
  z.fill_bytes(0xff), s.fill_bytes(0xff), stats_acc.fill_bytes(0xff);
  stats.fill_bytes(0xff);
  Running running;
  double given_mean = 0, given_var = 0;
  if (!sc.batch_stats) std::tie(given_mean, given_var) = running.set(sp, g_running_turn++, U(rng) * 0.2, P(rng));
  sp.z = z.p, sp.s = s.p, sp.stats_acc = stats_acc.p;
  if (sc.batch_stats) sp.stats = stats.p;
  bool ok = true;
  if (sc.batch_stats) {  // no workspace: refused, nothing launched
    CbamSpatial bad = sp;
    if (cbam_spatial_gate(bad, nullptr) != cudaErrorInvalidValue) std::printf("  accepted no partials\n"), ok = false;
    sp.partials = part.p;
  } else {  // no running buffer: refused
    CbamSpatial bad = sp;
    bad.running_var = nullptr;
    if (cbam_spatial_gate(bad, nullptr) != cudaErrorInvalidValue) std::printf("  accepted no running_var\n"), ok = false;
  }
  {  // a kernel larger than the weights' staging holds: refused
    CbamSpatial bad = sp;
    bad.k = kCbamMaxSpatialK + 2;
    if (cbam_spatial_gate(bad, nullptr) != cudaErrorInvalidValue) std::printf("  accepted k=17\n"), ok = false;
  }
  if (cbam_spatial_gate(sp, nullptr) != cudaSuccess || cudaGetLastError() != cudaSuccess)
    std::printf("  cbam_spatial_gate failed\n"), ok = false;
  const std::string tn = std::is_same<A, double>::value ? "f64" : "f32";

  // z: the 'same' convolution of the maps, in double.
  Check cz(tn + " spatial.z");
  auto map_at = [&](int ci, int64_t n, int64_t q) { return ref_map(sc, smap.p, total, ci, n * HW + q); };
  for (int64_t n = 0; n < N; ++n)
    for (int y = 0; y < sc.H; ++y)
      for (int x = 0; x < sc.W; ++x) {
        double sm = 0, mag = 0;
        for (int ci = 0; ci < maps; ++ci)
          for (int i = 0; i < sc.k; ++i)
            for (int j = 0; j < sc.k; ++j) {
              const int yy = y + i - pad, xx = x + j - pad;
              if (yy < 0 || yy >= sc.H || xx < 0 || xx >= sc.W) continue;
              const double t = double(w[ci * kk + i * sc.k + j]) * map_at(ci, n, int64_t{yy} * sc.W + xx);
              sm += t, mag += std::fabs(t);
            }
        cz.near(at2(n, int64_t{y} * sc.W + x), z[n * HW + int64_t{y} * sc.W + x], sm, u * (maps * kk + 4) * mag + 1e-300);
      }
  ok &= cz.done();

  // The statistics of the z the kernel wrote (two passes in long double).
  Check cst(tn + " spatial.stats");
  double mean = given_mean, var = given_var;
  if (sc.batch_stats) {
    long double m = 0, v = 0;
    for (int64_t i = 0; i < total; ++i) m += z[i];
    m /= total;
    for (int64_t i = 0; i < total; ++i) v += (z[i] - m) * (z[i] - m);
    v /= total;
    cst.near("mean", stats[0], double(m), 1e-13 * (std::fabs(double(m)) + std::sqrt(double(v))));
    cst.near("var", stats[1], double(v), 1e-12 * double(v));
    mean = stats[0], var = stats[1];
  } else {  // nothing written there
    uint64_t bits[2];
    std::memcpy(bits, stats.p, sizeof bits);
    cst.exact("stats untouched", double(bits[0] == ~uint64_t{0} && bits[1] == ~uint64_t{0}), 1.0);
  }
  cst.exact("mean_acc", stats_acc[0], static_cast<A>(mean));
  cst.exact("var_acc", stats_acc[1], static_cast<A>(var));
  ok &= cst.done();

  // s: the BatchNorm as single rounded ops in A (exact), the gate to a few ulps.
  Check cs(tn + " spatial.s");
  const A mu = static_cast<A>(mean), invstd = static_cast<A>(1.0 / std::sqrt(var + 1e-5));
  const A ga = sc.affine ? gamma[0] : A(1), be = sc.affine ? beta[0] : A(0);
  for (int64_t i = 0; i < total; ++i) {
    const A d = static_cast<A>(z[i] - mu);
    const A bo = static_cast<A>(static_cast<A>(static_cast<A>(d * ga) * invstd) + be);
    double ref;
    if (sc.gate == 0) {
      ref = 1.0 / (1.0 + std::exp(-double(bo)));
    } else {
      ref = std::isnan(double(bo)) ? double(bo) : std::min(std::max(double(bo) + 3.0, 0.0), 6.0) / 6.0;
    }
    cs.near(at2(i / HW, i % HW), s[i], ref, 4 * Ty<A>::ulp(ref) + 1e-300);
  }
  ok &= cs.done();
  return ok;
}

// ---- the backward's spatial gate: s, the BatchNorm and conv backward -------
template <class A>
bool run_spatial_grad(const SpatialCase& sc, int C, std::mt19937_64& rng) {
  const int64_t N = sc.N, HW = int64_t{sc.H} * sc.W, total = N * HW;
  const int maps = sc.light ? 1 : 2, kk = sc.k * sc.k, pad = (sc.k - 1) / 2;
  const double u = std::is_same<A, double>::value ? 1.2e-16 : 6.0e-8;
  std::uniform_real_distribution<double> U(-1, 1), P(0.5, 2);
  std::uniform_int_distribution<int> T(1, 3);
  Buf<A> smap(2 * total), w(int64_t{maps} * kk), gamma(1), beta(1), z(total), stats(2), ds(total), ccnt(total);
  Buf<A> s(total), dz(total), dcmean(total), dcmax(total), dgamma(1), dbeta(1), wpart(N * maps * kk);
  for (int64_t i = 0; i < total; ++i) {
    smap[i] = static_cast<A>(U(rng));
    smap[total + i] = static_cast<A>(smap[i] + P(rng) - 0.5);
    z[i] = static_cast<A>(U(rng) * 2 + 0.3);
    ds[i] = static_cast<A>(U(rng));
    ccnt[i] = static_cast<A>(T(rng));
  }
  if (sc.mode == 2) smap[total + HW / 2] = static_cast<A>(NAN), ds[total - 1] = static_cast<A>(NAN);
  for (size_t i = 0; i < w.n; ++i) w[i] = static_cast<A>(U(rng) * 0.3);
  gamma[0] = static_cast<A>(P(rng));
  beta[0] = static_cast<A>(U(rng));
  {  // the statistics as the forward stored them: z's own (batch) or others (running), rounded to A
    long double m = 0, v = 0;
    for (int64_t i = 0; i < total; ++i) m += z[i];
    m /= total;
    for (int64_t i = 0; i < total; ++i) v += (z[i] - m) * (z[i] - m);
    v /= total;
    stats[0] = static_cast<A>(sc.batch_stats ? double(m) : U(rng) * 0.2);
    stats[1] = static_cast<A>(sc.batch_stats ? double(v) : P(rng));
  }
  CbamSpatial sp;
  sp.acc = std::is_same<A, double>::value ? DType::F64 : DType::F32;
  sp.N = N, sp.H = sc.H, sp.W = sc.W, sp.k = sc.k, sp.C = C;
  sp.dgamma_dtype = sp.dbeta_dtype = sp.acc;  // the glue's 16-bit ones: tools/cuda_emu/glue
  sp.light = sc.light, sp.max_first = sc.max_first, sp.gate = static_cast<int8_t>(sc.gate);
  sp.batch_stats = sc.batch_stats;
  sp.eps = 1e-5;
  sp.smap = smap.p, sp.z = z.p, sp.stats_acc = stats.p, sp.ds = ds.p, sp.ccnt = ccnt.p;
  SpatialParams params;
  params.set(sp, g_params_turn++, w, gamma, beta, sc.affine);
  const int64_t blocks = cbam_spatial_blocks(sp);
  Buf<double> part(3 * blocks);
  part.fill_bytes(0xff);
  for (Buf<A>* b : {&s, &dz, &dcmean, &dcmax, &dgamma, &dbeta, &wpart}) b->fill_bytes(0xff);
  sp.s = s.p, sp.dz = dz.p, sp.dcmean = dcmean.p, sp.dcmax = dcmax.p, sp.dgamma = dgamma.p, sp.dbeta = dbeta.p;
  sp.wpart = wpart.p;
  bool ok = true;
  if (cbam_spatial_grad(sp, nullptr) != cudaErrorInvalidValue) std::printf("  accepted no partials\n"), ok = false;
  sp.partials = part.p;
  {
    CbamSpatial bad = sp;
    bad.k = kCbamMaxSpatialK + 2;
    if (cbam_spatial_grad(bad, nullptr) != cudaErrorInvalidValue) std::printf("  accepted k=17\n"), ok = false;
  }
  if (cbam_spatial_grad(sp, nullptr) != cudaSuccess || cudaGetLastError() != cudaSuccess)
    std::printf("  cbam_spatial_grad failed\n"), ok = false;
  const std::string tn = std::string(std::is_same<A, double>::value ? "f64" : "f32") + " spatial_grad.";

  // s: the BatchNorm as single rounded ops in A (exact), the gate to a few ulps.
  const A mu = stats[0], invstd = static_cast<A>(1.0 / std::sqrt(double(stats[1]) + 1e-5));
  const A ga = sc.affine ? gamma[0] : A(1), be = sc.affine ? beta[0] : A(0);
  std::vector<double> dbn(total);
  Check cs(tn + "s");
  for (int64_t i = 0; i < total; ++i) {
    const A bo = static_cast<A>(static_cast<A>(static_cast<A>(static_cast<A>(z[i] - mu) * ga) * invstd) + be);
    double ref;
    if (sc.gate == 0) {
      ref = 1.0 / (1.0 + std::exp(-double(bo)));
      dbn[i] = double(ds[i]) * (1.0 - double(s[i])) * double(s[i]);  // from the kernel's s
    } else {
      ref = std::isnan(double(bo)) ? double(bo) : std::min(std::max(double(bo) + 3.0, 0.0), 6.0) / 6.0;
      dbn[i] = (bo > A(-3) && bo < A(3)) ? double(ds[i]) / 6.0 : 0.0;
    }
    cs.near(at2(i / HW, i % HW), s[i], ref, 4 * Ty<A>::ulp(ref) + 1e-300);
  }
  ok &= cs.done();

  // dbeta = Σ dbn, dgamma = Σ dbn·ẑ in double, then rounded to A.
  Check cb(tn + "bn_params");
  double sb = 0, sg = 0, mb = 0, mg = 0;
  std::vector<double> zhat(total);
  for (int64_t i = 0; i < total; ++i) {
    zhat[i] = (double(z[i]) - double(mu)) * double(invstd);
    sb += dbn[i], sg += dbn[i] * zhat[i];
    mb += std::fabs(dbn[i]), mg += std::fabs(dbn[i] * zhat[i]);
  }
  cb.near("dbeta", dbeta[0], sb, 4 * u * mb + Ty<A>::ulp(sb) + 1e-300);
  cb.near("dgamma", dgamma[0], sg, 4 * u * mg + Ty<A>::ulp(sg) + 1e-300);
  ok &= cb.done();

  // dz = gamma·invstd·(dbn − mean(dbn) − ẑ·mean(dbn·ẑ)) (batch) or gamma·invstd·dbn.
  Check cz(tn + "dz");
  const double scale = double(ga) * double(invstd), cnt = double(total);
  for (int64_t i = 0; i < total; ++i) {
    double ref = dbn[i], mag = std::fabs(dbn[i]);
    if (sc.batch_stats) {  // the means carry the sums' rounding of every dbn: relative to Σ|dbn|, not to Σ dbn
      ref -= sb / cnt + zhat[i] * (sg / cnt);
      mag += std::fabs(sb / cnt) + std::fabs(zhat[i] * sg / cnt) + 4 * (mb + std::fabs(zhat[i]) * mg) / cnt;
    }
    cz.near(at2(i / HW, i % HW), dz[i], ref * scale, 12 * u * mag * std::fabs(scale) + 1e-300);
  }
  ok &= cz.done();

  // The maps' gradients from the kernel's dz: dm = Σ w·dz through the flipped kernel.
  Check cm(tn + "dmaps");
  for (int64_t n = 0; n < N; ++n)
    for (int y = 0; y < sc.H; ++y)
      for (int x = 0; x < sc.W; ++x) {
        double dm[2] = {0, 0}, mag[2] = {0, 0};
        for (int ci = 0; ci < maps; ++ci)
          for (int i = 0; i < sc.k; ++i)
            for (int j = 0; j < sc.k; ++j) {  // z[p'] gets w[i, j]·map[p' + (i, j) − pad]: map p gets it from p' = p − (i, j) + pad
              const int yy = y - i + pad, xx = x - j + pad;
              if (yy < 0 || yy >= sc.H || xx < 0 || xx >= sc.W) continue;
              const double t = double(w[ci * kk + i * sc.k + j]) * dz[n * HW + int64_t{yy} * sc.W + xx];
              dm[ci] += t, mag[ci] += std::fabs(t);
            }
        const int64_t q = n * HW + int64_t{y} * sc.W + x;
        double rmean, rmax, mmean, mmax;
        if (sc.light) {
          rmean = rmax = 0.5 * dm[0], mmean = mmax = 0.5 * mag[0];
        } else {
          const int im = sc.max_first ? 1 : 0;
          rmean = dm[im], rmax = dm[1 - im], mmean = mag[im], mmax = mag[1 - im];
        }
        cm.near(at2(n, q - n * HW) + " mean", dcmean[q], rmean / C, u * (kk + 6) * mmean / C + 1e-300);
        cm.near(at2(n, q - n * HW) + " max", dcmax[q], rmax / double(ccnt[q]), u * (kk + 6) * mmax / double(ccnt[q]) + 1e-300);
      }
  ok &= cm.done();

  // Each sample's weight gradient from the kernel's dz.
  Check cw(tn + "wpart");
  auto map_at = [&](int ci, int64_t n, int64_t q) { return ref_map(sc, smap.p, total, ci, n * HW + q); };
  for (int64_t n = 0; n < N; ++n)
    for (int ci = 0; ci < maps; ++ci)
      for (int i = 0; i < sc.k; ++i)
        for (int j = 0; j < sc.k; ++j) {
          double sm = 0, mag = 0;
          for (int y = 0; y < sc.H; ++y)
            for (int x = 0; x < sc.W; ++x) {
              const int yy = y + i - pad, xx = x + j - pad;
              if (yy < 0 || yy >= sc.H || xx < 0 || xx >= sc.W) continue;
              const double t = double(dz[n * HW + int64_t{y} * sc.W + x]) * map_at(ci, n, int64_t{yy} * sc.W + xx);
              sm += t, mag += std::fabs(t);
            }
          cw.near(at3(n, ci, i * sc.k + j), wpart[(n * maps + ci) * kk + i * sc.k + j], sm,
                  u * (HW / 256.0 + 12) * mag + 1e-300);
        }
  ok &= cw.done();
  return ok;
}

}  // namespace

bool cbam_case_any(DType dt, const CbamCase& k, std::mt19937_64& rng) {
  return run_typed(dt, [&](auto tag) { return run_cbam<decltype(tag)>(k, rng); });
}

struct GateCase {
  long count;
  int gate;  // FusedGate
  int policy = 0;
  std::string str() const { return "count=" + std::to_string(count) + (gate ? " hard_sigmoid" : " sigmoid"); }
};

// The channel gate (cbam_channel_gate) on values around the hard sigmoid's
// corners, large ones, NaN and ±inf: against the double formula; nothing
// written with count 0; 300000 values take the grid-stride loop (1024 blocks).
template <class A>
bool run_channel_gate(long count, int gate, std::mt19937_64& rng) {
  const double u = std::is_same<A, double>::value ? 1.2e-16 : 6.0e-8;
  const double inf = std::numeric_limits<double>::infinity();
  const double special[] = {0, 3, -3, 2.9999, -2.9999, 40, -40, 100, -100, inf, -inf, std::nan("")};
  std::uniform_real_distribution<double> U(-8, 8);
  Buf<A> z(std::max(count, 1L)), g(std::max(count, 1L));
  for (long i = 0; i < count; ++i) z[i] = static_cast<A>(i % 7 == 0 ? special[(i / 7) % 12] : U(rng));
  g.fill_bytes(0xff);
  bool ok = true;
  if (cbam_channel_gate(Ty<A>::dt, static_cast<int8_t>(gate), count, z.p, g.p, nullptr) != cudaSuccess ||
      cudaGetLastError() != cudaSuccess)
    std::printf("  cbam_channel_gate failed\n"), ok = false;
  if (count == 0) {
    if (!poisoned(g.p, g.n)) std::printf("  cbam_channel_gate wrote with count 0\n"), ok = false;
    return ok;
  }
  Check cg(std::string(Ty<A>::name) + (gate ? " channel_gate(hard)" : " channel_gate"));
  // Relative (a gate of a very negative z is tiny, and must not be 0), with
  // float's smallest normal as the floor: 1 / (1 + exp(100)) is 0 in float,
  // as in ATen's sigmoid, the exponential overflowing.
  const double floor = std::is_same<A, double>::value ? 1e-300 : 1.2e-38;
  for (long i = 0; i < count; ++i) {
    const double r = ref_gate(gate, double(z[i]));
    cg.near(at2(0, i), g[i], r, 8 * u * std::fabs(r) + floor);
  }
  return cg.done() & ok;
}

void run_cbam_suite(bool quick) {
  std::mt19937_64 rng(2024);
  const DType dts[4] = {DType::F32, DType::F16, DType::BF16, DType::F64};
  for_each_grid_case(quick, [&](const GridCase& g) {
    const CbamCase k{g.N, g.C, g.H, g.W, g.cl, g.sm, g.mis_x, g.mis_dy, g.mis_out, g.mode, g.policy};
    run_case("cbam", g.dt, k, [&] { return cbam_case_any(g.dt, k, rng); });
  });
  // Extra: shapes chosen to hit the segmented path and wpr = 8 for every kind,
  // with ties and several schedules.
  struct X { int N, C, H, W, cl, sm, mode; } extra[] = {
      {1, 2048, 1, 3, 1, 132, 0},   // channels_last: ChannelPool/PixelReduce rows with wpr 8 (L = C = 2048)
      {1, 300, 2, 2, 0, 132, 1},    // NCHW: ChannelPool/PixelReduce cols, segmented over C
      {3, 5, 40, 41, 1, 132, 1},    // channels_last: ChannelReduce cols, segmented over HW
      {1, 3, 40, 41, 0, 132, 2},    // NCHW: ChannelReduce rows, wpr 8 (L = HW = 1640)
      {2, 257, 3, 3, 0, 200, 0},    // NCHW, C odd, segmented
      {1, 64, 1, 1, 0, 132, 1},     // H·W = 1 (the glue treats it as channels_last)
      {1, 300, 2, 4, 0, 132, 0},    // NCHW: ChannelPool/PixelReduce cols, vectorized (H·W = 8) and segmented
      {1, 3, 48, 48, 0, 132, 1},    // NCHW: ChannelReduce rows, vectorized, wpr 8
  };
  for (const X& e : extra)
    for (DType dt : dts)
      for (int pol = 0; pol < (quick ? 1 : 3); ++pol) {
        CbamCase k{e.N, e.C, e.H, e.W, e.cl != 0, e.sm, 0, 0, 0, e.mode, pol};
        k.mis_x = pol == 1;
        run_case("cbam", dt, k, [&] { return cbam_case_any(dt, k, rng); });
      }
  // The channel gate.
  for (long count : {0L, 1L, 257L, 300000L})
    for (int gate = 0; gate < 2; ++gate)
      for (DType dt : {DType::F32, DType::F64}) {
        const GateCase k{count, gate};
        run_case("channel_gate", dt, k, [&] {
          return dt == DType::F64 ? run_channel_gate<double>(count, gate, rng) : run_channel_gate<float>(count, gate, rng);
        });
      }
  // The forward's spatial gate.
  {
    const SpatialCase sps[] = {
        {1, 1, 1, 1, false, false, true, false, 0, 0},    {2, 7, 7, 7, false, false, true, true, 0, 0},
        {3, 5, 9, 3, true, false, true, true, 1, 0},      {2, 14, 13, 7, false, true, false, true, 0, 0},
        {1, 6, 6, 5, true, false, false, false, 1, 0},    {2, 8, 8, 7, false, false, true, true, 1, 2},
        {2, 40, 41, 7, false, true, true, true, 0, 0},    {3, 217, 216, 3, false, false, true, true, 0, 0},
    };
    int i = 0;
    for (const SpatialCase& sc : sps)
      for (int a = 0; a < 2; ++a) {
        if (quick && a == 1 && sc.N * sc.H * sc.W > 10000) continue;
        emu::policy = i++ % 3;
        ++g_stats.cases;
        const bool ok = a ? run_spatial<double>(sc, rng) : run_spatial<float>(sc, rng);
        if (g_verbose) std::printf("spatial %s %s\n", a ? "f64" : "f32", sc.str().c_str());
        if (!ok) {
          ++g_stats.failed_cases;
          std::printf("FAILED spatial %s %s\n", a ? "f64" : "f32", sc.str().c_str());
        }
        const int C = 1 + (i * 37) % 300;
        emu::policy = i % 3;
        ++g_stats.cases;
        const bool gok = a ? run_spatial_grad<double>(sc, C, rng) : run_spatial_grad<float>(sc, C, rng);
        if (g_verbose) std::printf("spatial_grad %s C=%d %s\n", a ? "f64" : "f32", C, sc.str().c_str());
        if (!gok) {
          ++g_stats.failed_cases;
          std::printf("FAILED spatial_grad %s C=%d %s\n", a ? "f64" : "f32", C, sc.str().c_str());
        }
      }
  }
}
