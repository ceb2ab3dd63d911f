// CBAM on the CPU: fused_attn::cbam_forward / cbam_backward for the CPU
// dispatch key.
//
//   channel gate   a = mlp(mean_hw x) + mlp(max_hw x)   (light: mlp(½mean + ½max))
//                  g = gate(a)                          (light: sigmoid)        x1 = x·g
//   spatial gate   m = [mean_c x1, max_c x1]            (light: ½mean + ½max)
//                  z = conv_kxk(m),  s = gate(bn(z))                           y = x1·s
//
// The forward walks chunks of whole samples small enough to stay in cache:
// it pools each sample of a chunk, runs the MLP for the chunk at once (GEMMs),
// then per sample the channel pool of x1, the convolution and the rescale,
// while the chunk is still cached, so x comes from DRAM once and y goes back
// once (2|x|) when the BatchNorm uses running statistics. With batch
// statistics the rescale waits for every sample's z: x is read a second time
// (3|x|). The big-tensor passes are cbam_cpu_kernels.h's.
//
// The backward: Σ_c dy·x1 per pixel (→ the spatial gate's gradient, the
// BatchNorm's batch reductions), then, in cache-sized chunks of samples, per
// sample dL/dm through the transposed convolution and dL/dg = Σ_hw dx1·x per
// channel, the MLP backward of the chunk as GEMMs, and per sample dx. The
// max pools send their gradient to every tied maximum in equal shares, as
// PyTorch's amax does. The weight gradients are summed over samples in a
// fixed order (deterministic whatever the thread count).
//
// x1 = x·g is rounded to x's dtype, as the modules' multiply rounds it, and
// recomputed identically in the backward, so the ties found there are the
// forward's.
#include "../cbam.h"
#include "channel_gate.h"
#include "gate_math.h"
#include "se_cpu_isa.h"
#include "se_cpu_jobs.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/add.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace fused_attn::cpu {

// The big-tensor passes (cbam_cpu_kernels.h): the baseline build here, the
// AVX2 one in cbam_kernel_avx2.cpp.
namespace baseline {
#define FUSED_ATTN_SE_HELPERS_ONLY 1
#include "se_cpu_kernels.h"
#include "cbam_cpu_decl.h"
#include "cbam_cpu_kernels.h"
}  // namespace baseline

#if FUSED_ATTN_HAVE_AVX2_BUILD
namespace avx2 {
#include "cbam_cpu_decl.h"
}  // namespace avx2
#endif

// The MLPs' small products (channel_gate.h): the rows m split across
// threads, each element one thread's fixed-order dot product, so the result
// does not depend on the thread count.
template <typename A, typename Tw>
void rows_dot(const Tw* a, const A* b, int64_t M, int64_t K, int64_t nb, A* out, int64_t ldo, const A* bias,
              A bias_scale) {
#if FUSED_ATTN_HAVE_AVX2_BUILD
  const auto fn = use_avx2() ? &avx2::rows_dot<A, Tw> : &baseline::rows_dot<A, Tw>;
#else
  const auto fn = &baseline::rows_dot<A, Tw>;
#endif
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(K * nb, 1));
  at::parallel_for(0, M, grain,
                   [&](int64_t m0, int64_t m1) { fn(a, b, K, m0, m1, nb, bias, bias_scale, out, ldo); });
}
template void rows_dot<float, float>(const float*, const float*, int64_t, int64_t, int64_t, float*, int64_t,
                                     const float*, float);
template void rows_dot<double, double>(const double*, const double*, int64_t, int64_t, int64_t, double*, int64_t,
                                       const double*, double);

template <typename A>
void rows_dot(const at::Tensor& w, const A* b, int64_t M, int64_t K, int64_t nb, A* out, int64_t ldo, const A* bias,
              A bias_scale) {
  TORCH_INTERNAL_ASSERT(w.is_contiguous() && w.numel() == M * K);
  if constexpr (std::is_same_v<A, float>) {  // the dtypes rows_dot_widens
    if (w.scalar_type() == at::kBFloat16)
      return rows_dot<A>(w.const_data_ptr<c10::BFloat16>(), b, M, K, nb, out, ldo, bias, bias_scale);
    if (w.scalar_type() == at::kHalf)
      return rows_dot<A>(w.const_data_ptr<c10::Half>(), b, M, K, nb, out, ldo, bias, bias_scale);
  }
  rows_dot<A>(w.const_data_ptr<A>(), b, M, K, nb, out, ldo, bias, bias_scale);
}
template void rows_dot<float>(const at::Tensor&, const float*, int64_t, int64_t, int64_t, float*, int64_t,
                              const float*, float);
template void rows_dot<double>(const at::Tensor&, const double*, int64_t, int64_t, int64_t, double*, int64_t,
                               const double*, double);

// out = a·b (a [R, T]) or aᵀ·b (a [T, R]), b [T, M], all 2-D: our fixed-order
// row kernels (rows_times) when the product is small in the sense below, the
// columns split across threads in blocks (each element's order does not
// depend on the split); BLAS otherwise. Small: a·b with at most kFewRows rows
// (a few samples' rows against a weight matrix), aᵀ·b with at most
// kFewTerms terms per element (the weight gradients of a small batch).
namespace {
constexpr int64_t kFewRows = 16, kFewTerms = 32;

bool row_kernels_take(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const auto dt = a.scalar_type();
  return (dt == at::kFloat || dt == at::kDouble) && b.scalar_type() == dt && out.scalar_type() == dt &&
         a.is_contiguous() && b.is_contiguous() && out.is_contiguous();
}

void row_kernels(at::Tensor& out, const at::Tensor& a, bool transposed, const at::Tensor& b) {
  const int64_t R = out.size(0), M = out.size(1), T = b.size(0);
  const int64_t ar = transposed ? 1 : T, at_ = transposed ? R : 1;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "rows_times", [&] {
    using A = scalar_t;
#if FUSED_ATTN_HAVE_AVX2_BUILD
    const auto fn = use_avx2() ? &avx2::rows_times<A> : &baseline::rows_times<A>;
#else
    const auto fn = &baseline::rows_times<A>;
#endif
    constexpr int64_t kCols = 64 / sizeof(A);  // columns per task block
    const int64_t blocks = (M + kCols - 1) / kCols;
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(R * T * kCols, 1));
    const A* ap = a.const_data_ptr<A>();
    const A* bp = b.const_data_ptr<A>();
    A* op = out.data_ptr<A>();
    at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
      fn(ap, ar, at_, bp, M, R, T, b0 * kCols, std::min(M, b1 * kCols), op, M);
    });
  });
}
}  // namespace

void small_mm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (a.size(0) <= kFewRows && row_kernels_take(out, a, b)) row_kernels(out, a, false, b);
  else at::mm_out(out, a, b);
}

at::Tensor small_mm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, b.options());
  small_mm_out(out, a, b);
  return out;
}

at::Tensor small_mm_tn(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(1), b.size(1)}, b.options());
  if (a.size(0) <= kFewTerms && row_kernels_take(out, a, b)) row_kernels(out, a, true, b);
  else at::mm_out(out, a.t(), b);
  return out;
}

namespace {

template <typename T>
struct CbamPasses {
  decltype(&baseline::cbam_spatial_pool<T>) spatial_pool;
  decltype(&baseline::cbam_channel_pool<T>) channel_pool;
  decltype(&baseline::cbam_rescale<T>) rescale;
  decltype(&baseline::cbam_spatial_grad<T>) spatial_grad;
  decltype(&baseline::cbam_channel_grad<T>) channel_grad;
  decltype(&baseline::cbam_dx<T>) dx;
};

template <typename T>
CbamPasses<T> cbam_passes() {
#if FUSED_ATTN_HAVE_AVX2_BUILD
  if (use_avx2())
    return {&avx2::cbam_spatial_pool<T>, &avx2::cbam_channel_pool<T>,  &avx2::cbam_rescale<T>,
            &avx2::cbam_spatial_grad<T>, &avx2::cbam_channel_grad<T>, &avx2::cbam_dx<T>};
#endif
  return {&baseline::cbam_spatial_pool<T>, &baseline::cbam_channel_pool<T>,  &baseline::cbam_rescale<T>,
          &baseline::cbam_spatial_grad<T>, &baseline::cbam_channel_grad<T>, &baseline::cbam_dx<T>};
}

// The variant and sizes every stage needs.
struct Cbam {
  int64_t N, C, HW, H, W, rd, k;
  bool cl;                 // channels_last: a pixel's C channels are contiguous
  bool light, max_first;
  Act act;
  Gate gate;
  int64_t maps() const { return light ? 1 : 2; }
  // Offset of (c, p) within one sample.
  int64_t at(int64_t c, int64_t p) const { return cl ? p * C + c : c * HW + p; }
};

// The weights in the accumulation dtype (the forward's W1 and W2 may stay 16-bit:
// weights() below), contiguous; raw pointers for the loops.
template <typename A>
struct Weights {
  at::Tensor w1, b1, w2, b2, ws;
  A gamma = A(1), beta = A(0);
  const A* pw1() const { return w1.data_ptr<A>(); }
  const A* pb1() const { return b1.defined() ? b1.data_ptr<A>() : nullptr; }
  const A* pw2() const { return w2.data_ptr<A>(); }
  const A* pb2() const { return b2.defined() ? b2.data_ptr<A>() : nullptr; }
  const A* pws() const { return ws.data_ptr<A>(); }
};

// t in dtype acc, contiguous: t itself when it already is (the op's fixed
// cost is dozens of such small calls; each that does nothing still costs a
// dispatch).
at::Tensor as_acc(const at::Tensor& t, at::ScalarType acc) {
  return t.scalar_type() == acc && t.is_contiguous() ? t : t.to(acc).contiguous();
}

// The value of a one-element CPU tensor, read directly (item() dispatches).
double value_of(const at::Tensor& t) {
  double v = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "value_of",
                                  [&] { v = static_cast<double>(*t.const_data_ptr<scalar_t>()); });
  return v;
}

template <typename A>
Weights<A> weights(at::ScalarType acc, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                   const at::Tensor& w2, const c10::optional<at::Tensor>& b2, const at::Tensor& ws,
                   const c10::optional<at::Tensor>& bn_w, const c10::optional<at::Tensor>& bn_b,
                   bool mlp_16bit = false) {
  // mlp_16bit: W1 and W2 stay float16/bfloat16 where they are (float
  // accumulation), for the forward's rows_dot, which widens them as it loads.
  const auto mlp = [&](const at::Tensor& t) {
    return mlp_16bit && rows_dot_widens(t.scalar_type(), acc) ? t.contiguous() : as_acc(t, acc);
  };
  Weights<A> out;
  out.w1 = mlp(w1);
  out.w2 = mlp(w2);
  if (b1) out.b1 = as_acc(*b1, acc);
  if (b2) out.b2 = as_acc(*b2, acc);
  out.ws = as_acc(ws, acc);
  if (bn_w) out.gamma = static_cast<A>(value_of(*bn_w));
  if (bn_b) out.beta = static_cast<A>(value_of(*bn_b));
  return out;
}

// The channel gate's MLP for samples [n0, n0 + nb) at once, as GEMMs (the
// weights are read once per chunk, not once per sample and branch):
// logits = mlp(mean) + mlp(max), or mlp(½mean + ½max) when light. pooled is
// [2, N, C] (means, then maxima), logits [N, C].
// The MLP's input rows of samples [n0, n0 + nb): [mean; max] ([2·nb, C]), or
// ½mean + ½max ([nb, C]) when light.
at::Tensor chunk_mlp_input(const Cbam& v, const at::Tensor& pooled, int64_t n0, int64_t nb) {
  if (!v.light && nb == v.N) return pooled.view({2 * v.N, v.C});  // the whole batch: already [mean; max]
  const at::Tensor mean = pooled[0].narrow(0, n0, nb), mx = pooled[1].narrow(0, n0, nb);
  return v.light ? mean.mul(0.5).add_(mx.mul(0.5)) : at::cat({mean, mx});
}

// Samples per chunk: as many as stay cached (chunk_samples), but at least one
// per thread, since the per-sample stages run in parallel over a chunk's
// samples (a chunk of one would leave the other threads idle). The chunks are
// evened out and, past one sample per thread, cut to a multiple of the thread
// count: 8 samples go as 4 + 4 on 2 threads, not 5 + 3, whose odd sample
// leaves a thread idle for a round of every stage (the forward at 8×256×56²
// took 3.77 ms as 5 + 3, 3.09 ms as 4 + 4: bench/cpu_chunks.py).
int64_t sample_chunk(int64_t N, int64_t bytes_per_sample) {
  const int64_t threads = std::max<int64_t>(at::get_num_threads(), 1);
  int64_t nb = std::min<int64_t>(N, std::max<int64_t>(chunk_samples(N, bytes_per_sample), threads));
  const int64_t chunks = (N + nb - 1) / nb;
  nb = (N + chunks - 1) / chunks;
  if (nb > threads) nb -= nb % threads;
  return std::max<int64_t>(nb, 1);
}

template <typename A>
void chunk_logits(const Cbam& v, const Weights<A>& w, const at::Tensor& pooled, int64_t n0, int64_t nb,
                  at::Tensor& logits) {
  const at::Tensor in = chunk_mlp_input(v, pooled, n0, nb).contiguous();  // [branches·nb, C]
  const int64_t rows = in.size(0);
  // hᵀ [branches·nb, rd]: each input row against W1's rows.
  at::Tensor h = at::empty({rows, v.rd}, in.options());
  A* hp = h.data_ptr<A>();
  rows_dot(w.w1, in.const_data_ptr<A>(), v.rd, v.C, rows, hp, v.rd, w.pb1());
  for (int64_t i = 0; i < rows * v.rd; ++i) hp[i] = act_forward(v.act, hp[i]);
  // fc2 is linear: mlp(mean) + mlp(max) = W2·(h_mean + h_max) + 2·b2, one
  // product of nb rows instead of 2·nb (fc2 is half the MLP's work).
  if (!v.light)
    for (int64_t i = 0; i < nb * v.rd; ++i) hp[i] += hp[nb * v.rd + i];
  A* out = logits.data_ptr<A>() + n0 * v.C;  // logits rows [n0, n0 + nb): [nb, C]
  rows_dot(w.w2, hp, v.C, v.rd, nb, out, v.C, w.pb2(), v.light ? A(1) : A(2));
}

// g = gate(a) for one sample's C logits (the light channel gate is always a
// sigmoid, as in timm).
template <typename A>
inline void channel_gates(const Cbam& v, const A* a, A* g) {
  gate_into(v.light ? Gate::Sigmoid : v.gate, a, g, v.C);
}

// The conv's input maps of one sample from its channel mean and max.
template <typename A>
void conv_input(const Cbam& v, const A* cmean, const A* cmax, A* m) {
  const int64_t HW = v.HW;
  if (v.light) {
    for (int64_t p = 0; p < HW; ++p) m[p] = A(0.5) * cmean[p] + A(0.5) * cmax[p];
  } else {
    std::copy(v.max_first ? cmax : cmean, (v.max_first ? cmax : cmean) + HW, m);
    std::copy(v.max_first ? cmean : cmax, (v.max_first ? cmean : cmax) + HW, m + HW);
  }
}

// z = conv_kxk(m), 'same' size, zero padding; m [maps, H, W], ws [maps, k, k].
template <typename A>
void conv2d(const Cbam& v, const A* m, const A* ws, A* z) {
  const int64_t H = v.H, W = v.W, k = v.k, pad = (k - 1) / 2;
  std::fill(z, z + v.HW, A(0));
  for (int64_t ch = 0; ch < v.maps(); ++ch) {
    const A* mc = m + ch * v.HW;
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        const A wt = ws[(ch * k + i) * k + j];
        const int64_t dy = i - pad, dx = j - pad;
        const int64_t y0 = std::max<int64_t>(0, -dy), y1 = std::min<int64_t>(H, H - dy);
        const int64_t x0 = std::max<int64_t>(0, -dx), x1 = std::min<int64_t>(W, W - dx);
        for (int64_t y = y0; y < y1; ++y) {
          A* zr = z + y * W;
          const A* mr = mc + (y + dy) * W + dx;
          for (int64_t x = x0; x < x1; ++x) zr[x] += wt * mr[x];
        }
      }
    }
  }
}

// The transposed convolution: dm[ch] = Σ_{i,j} w[ch, i, j]·dz shifted back,
// and dw[ch, i, j] += Σ_p dz[p]·m[ch, p shifted] (this sample's share).
template <typename A>
void conv2d_backward(const Cbam& v, const A* m, const A* ws, const A* dz, A* dm, A* dw) {
  const int64_t H = v.H, W = v.W, k = v.k, pad = (k - 1) / 2;
  std::fill(dm, dm + v.maps() * v.HW, A(0));
  for (int64_t ch = 0; ch < v.maps(); ++ch) {
    const A* mc = m + ch * v.HW;
    A* dmc = dm + ch * v.HW;
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        const A wt = ws[(ch * k + i) * k + j];
        const int64_t dy = i - pad, dx = j - pad;
        const int64_t y0 = std::max<int64_t>(0, -dy), y1 = std::min<int64_t>(H, H - dy);
        const int64_t x0 = std::max<int64_t>(0, -dx), x1 = std::min<int64_t>(W, W - dx);
        // In double: under batch statistics this sum nearly cancels (the
        // BatchNorm makes the loss invariant to the scale of the weights),
        // so float accumulation would leave mostly rounding.
        double acc = 0;
        for (int64_t y = y0; y < y1; ++y) {
          const A* dzr = dz + y * W;
          const A* mr = mc + (y + dy) * W + dx;
          A* dmr = dmc + (y + dy) * W + dx;
          for (int64_t x = x0; x < x1; ++x) {
            dmr[x] += wt * dzr[x];
            acc += static_cast<double>(dzr[x]) * static_cast<double>(mr[x]);
          }
        }
        dw[(ch * k + i) * k + j] += static_cast<A>(acc);
      }
    }
  }
}

// Per-thread scratch, sized for one sample.
template <typename A>
struct Scratch {
  std::vector<A> g, dg;                 // [C]
  std::vector<A> m, s, dm, dwsp;        // the maps, the spatial gate, dL/dmaps, dL/dspatial_weight
  explicit Scratch(const Cbam& v)
      : g(v.C), dg(v.C), m(2 * v.HW), s(v.HW), dm(2 * v.HW), dwsp(2 * v.k * v.k) {}
};

// s = gate(γ·(z − μ)·invstd + β) for one sample.
template <typename A>
void spatial_gate(const Cbam& v, const A* z, A mu, A invstd, A gamma, A beta, A* s) {
  for (int64_t p = 0; p < v.HW; ++p) s[p] = gamma * (z[p] - mu) * invstd + beta;
  gate_into(v.gate, s, s, v.HW);
}

Cbam describe(const Geometry& geo, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& ws, bool light,
              bool max_first, c10::string_view act, c10::string_view gate) {
  Cbam v;
  v.N = geo.N;
  v.C = geo.C;
  v.HW = geo.HW;
  v.H = x.size(2);
  v.W = x.size(3);
  v.rd = w1.size(0);
  v.k = ws.size(-1);
  v.cl = geo.cl;
  v.light = light;
  v.max_first = max_first;
  v.act = parse_act(act);
  v.gate = parse_gate(gate);
  return v;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cbam_forward_cpu(
    const at::Tensor& x_in, const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
    const c10::optional<at::Tensor>& b2, const at::Tensor& ws, const c10::optional<at::Tensor>& bn_w,
    const c10::optional<at::Tensor>& bn_b, const c10::optional<at::Tensor>& bn_rm,
    const c10::optional<at::Tensor>& bn_rv, double eps, c10::string_view act, c10::string_view gate, bool light,
    bool max_first) {
  check_cbam_args(x_in, w1, b1, w2, b2, ws, light);
  check_cbam_bn_args(x_in, bn_w, bn_b, bn_rm, bn_rv);
  TORCH_CHECK(x_in.device().is_cpu(), "fused_attn: cbam_forward_cpu got x on ", x_in.device());
  const Geometry geo = geometry(x_in);
  const Cbam v = describe(geo, x_in, w1, ws, light, max_first, act, gate);
  const auto acc = acc_dtype(x_in);
  const auto aopt = x_in.options().dtype(acc);
  at::Tensor y = at::empty_like(geo.x);
  maybe_poison(y);
  at::Tensor pooled = at::empty({2, v.N, v.C}, aopt);
  at::Tensor logits = at::empty({v.N, v.C}, aopt);
  at::Tensor smap = at::empty({2, v.N, v.HW}, aopt);
  at::Tensor z = at::empty({v.N, v.HW}, aopt);
  at::Tensor stats = at::empty({2}, aopt);
  const bool batch_stats = !(bn_rm && bn_rv);
  if (v.N == 0 || v.C == 0 || v.HW == 0) {
    pooled.zero_();
    logits.zero_();
    smap.zero_();
    z.zero_();
    stats.zero_();
    if (v.HW == 0 || v.C == 0) stats.fill_(std::numeric_limits<double>::quiet_NaN());
    return {y, pooled, logits, smap, z, stats};
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "cbam_forward_cpu", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const Weights<A> w = weights<A>(acc, w1, b1, w2, b2, ws, bn_w, bn_b, /*mlp_16bit=*/true);
    const T* xp = geo.x.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    A* pm = pooled.data_ptr<A>();
    A* lg = logits.data_ptr<A>();
    A* sm = smap.data_ptr<A>();
    A* zp = z.data_ptr<A>();
    const int64_t slice = v.C * v.HW;
    A mu = A(0), invstd = A(1);
    if (!batch_stats) {
      mu = static_cast<A>(value_of(*bn_rm));
      invstd = static_cast<A>(1.0 / std::sqrt(value_of(*bn_rv) + eps));
    }
    const CbamPasses<T> k = cbam_passes<T>();
    const bool nt = stream_output(y, geo.row());
    // Chunks of whole samples small enough to stay in cache (x, and y being
    // written): pool each sample, run the MLP for the chunk at once, then
    // per sample everything up to z, and the rescale too unless it needs the
    // whole batch's statistics.
    const int64_t chunk = sample_chunk(v.N, slice * static_cast<int64_t>(sizeof(T)) * 2);
    for (int64_t c0 = 0; c0 < v.N; c0 += chunk) {
      const int64_t nb = std::min(chunk, v.N - c0);
      at::parallel_for(c0, c0 + nb, 1, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) k.spatial_pool(xp + n * slice, v.C, v.HW, v.cl, pm + n * v.C, pm + (v.N + n) * v.C);
      });
      chunk_logits(v, w, pooled, c0, nb, logits);
      at::parallel_for(c0, c0 + nb, 1, [&](int64_t n0, int64_t n1) {
        Scratch<A> t(v);
        for (int64_t n = n0; n < n1; ++n) {
          const T* xs = xp + n * slice;
          const A* a = lg + n * v.C;
          channel_gates(v, a, t.g.data());
          A* cmean = sm + n * v.HW;
          A* cmax = sm + (v.N + n) * v.HW;
          k.channel_pool(xs, t.g.data(), v.C, v.HW, v.cl, cmean, cmax);
          conv_input(v, cmean, cmax, t.m.data());
          conv2d(v, t.m.data(), w.pws(), zp + n * v.HW);
          if (!batch_stats) {
            spatial_gate(v, zp + n * v.HW, mu, invstd, w.gamma, w.beta, t.s.data());
            k.rescale(xs, t.g.data(), t.s.data(), v.C, v.HW, v.cl, nt, yp + n * slice);
          }
        }
      });
    }
    if (batch_stats) {
      // Mean and biased variance of z over N·H·W, in double, two passes.
      const int64_t count = v.N * v.HW;
      double sum = 0;
      for (int64_t i = 0; i < count; ++i) sum += static_cast<double>(zp[i]);
      const double mean = sum / static_cast<double>(count);
      double ss = 0;
      for (int64_t i = 0; i < count; ++i) {
        const double d = static_cast<double>(zp[i]) - mean;
        ss += d * d;
      }
      const double var = ss / static_cast<double>(count);
      mu = static_cast<A>(mean);
      invstd = static_cast<A>(1.0 / std::sqrt(var + eps));
      stats.data_ptr<A>()[0] = static_cast<A>(mean);
      stats.data_ptr<A>()[1] = static_cast<A>(var);
      at::parallel_for(0, v.N, 1, [&](int64_t n0, int64_t n1) {
        std::vector<A> g(v.C), s(v.HW);
        for (int64_t n = n0; n < n1; ++n) {
          channel_gates(v, lg + n * v.C, g.data());
          spatial_gate(v, zp + n * v.HW, mu, invstd, w.gamma, w.beta, s.data());
          k.rescale(xp + n * slice, g.data(), s.data(), v.C, v.HW, v.cl, nt, yp + n * slice);
        }
      });
    } else {
      stats.data_ptr<A>()[0] = static_cast<A>(value_of(*bn_rm));
      stats.data_ptr<A>()[1] = static_cast<A>(value_of(*bn_rv));
    }
  });
  return {y, pooled, logits, smap, z, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
cbam_backward_cpu(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& w1,
                  const c10::optional<at::Tensor>& b1, const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
                  const at::Tensor& ws, const c10::optional<at::Tensor>& bn_w, const c10::optional<at::Tensor>& bn_b,
                  const at::Tensor& pooled, const at::Tensor& logits, const at::Tensor& smap, const at::Tensor& z,
                  const at::Tensor& stats, bool batch_stats, double eps, c10::string_view act,
                  c10::string_view gate, bool light, bool max_first) {
  check_cbam_args(x_in, w1, b1, w2, b2, ws, light);
  check_cbam_backward_args(dy_in, x_in, pooled, logits, smap, z, stats);
  TORCH_CHECK(x_in.device().is_cpu(), "fused_attn: cbam_backward_cpu got x on ", x_in.device());
  const Geometry geo = geometry(x_in);
  const Cbam v = describe(geo, x_in, w1, ws, light, max_first, act, gate);
  const auto acc = acc_dtype(x_in);
  const auto aopt = x_in.options().dtype(acc);
  const at::Tensor dy = dy_in.contiguous(geo.format);
  at::Tensor dx = at::empty_like(geo.x);
  maybe_poison(dx);
  const int64_t maps = v.maps();
  // Per-sample rows the weight gradients are formed from after the loop.
  at::Tensor da_all = at::zeros({v.N, v.C}, aopt);              // dL/da
  at::Tensor hsum = at::zeros({v.N, v.rd}, aopt);               // Σ_branches act(pre)
  at::Tensor dpre_all = at::zeros({maps, v.N, v.rd}, aopt);     // dL/dpre per branch
  at::Tensor dws_part = at::zeros({v.N, maps, v.k, v.k}, aopt);
  at::Tensor dbn = at::empty({v.N, v.HW}, aopt);                // dL/d(bn output)
  at::Tensor ccnt = at::empty({v.N, v.HW}, aopt);               // ties of the channel max per pixel
  double dgamma = 0, dbeta = 0;

  if (v.N > 0 && v.C > 0 && v.HW > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "cbam_backward_cpu", [&] {
      using T = scalar_t;
      using A = at::opmath_type<T>;
      const Weights<A> w = weights<A>(acc, w1, b1, w2, b2, ws, bn_w, bn_b);
      const T* xp = geo.x.data_ptr<T>();
      const T* dyp = dy.data_ptr<T>();
      T* dxp = dx.data_ptr<T>();
      const A* pm = pooled.data_ptr<A>();
      const A* lg = logits.data_ptr<A>();
      const A* sm = smap.data_ptr<A>();
      const A* zp = z.data_ptr<A>();
      A* dbnp = dbn.data_ptr<A>();
      A* ccp = ccnt.data_ptr<A>();
      const double st_mean = value_of(stats[0]), st_var = value_of(stats[1]);
      const A mu = static_cast<A>(st_mean);
      const A invstd = static_cast<A>(1.0 / std::sqrt(st_var + eps));
      const int64_t slice = v.C * v.HW;
      const CbamPasses<T> k = cbam_passes<T>();
      const bool nt = stream_output(dx, geo.row());

      // Phase 1, per sample: ds = Σ_c dy·x1 per pixel → dL/d(bn output); the
      // ties of each pixel's channel max.
      auto phase1 = [&](int64_t n, Scratch<A>& t) {
        const T* xs = xp + n * slice;
        const T* dys = dyp + n * slice;
        const A* cmax = sm + (v.N + n) * v.HW;
        channel_gates(v, lg + n * v.C, t.g.data());
        A* dsp = t.dm.data();  // scratch [HW]
        A* cc = ccp + n * v.HW;
        k.spatial_grad(dys, xs, t.g.data(), cmax, v.C, v.HW, v.cl, dsp, cc);
        const A* zs = zp + n * v.HW;
        A* bo = t.s.data();  // the BatchNorm's output, then its gate
        A* gs = t.m.data();
        for (int64_t p = 0; p < v.HW; ++p) bo[p] = w.gamma * (zs[p] - mu) * invstd + w.beta;
        gate_into(v.gate, bo, gs, v.HW);
        for (int64_t p = 0; p < v.HW; ++p) dbnp[n * v.HW + p] = gate_grad(v.gate, dsp[p], bo[p], gs[p]);
      };

      // Per chunk of samples whose x, dy and dx stay cached between the
      // passes: stage A per sample (once dz is known): the transposed
      // convolution, dL/dg = Σ_hw dx1·x and da; stage B: the MLP backward of
      // the whole chunk as GEMMs (the weights read once per chunk, not once
      // per sample and branch); stage C per sample: dx. The per-sample rows
      // stage C needs are kept in chunk buffers.
      const int64_t chunk = sample_chunk(v.N, slice * static_cast<int64_t>(sizeof(T)) * 3);
      const auto cbuf = [&](int64_t cols) { return at::empty({chunk, cols}, aopt); };
      at::Tensor cg = cbuf(v.C), ccnt_s = cbuf(v.C), cshare_mean = cbuf(v.C), cshare_max = cbuf(v.C);
      at::Tensor cs = cbuf(v.HW), cdcmean = cbuf(v.HW), cdcmax = cbuf(v.HW);
      const auto row = [](at::Tensor& t, int64_t i) { return t.data_ptr<A>() + i * t.size(1); };

      auto stage_a = [&](int64_t n, int64_t i, Scratch<A>& t, const A* dz) {
        const T* xs = xp + n * slice;
        const T* dys = dyp + n * slice;
        const A* mx = pm + (v.N + n) * v.C;
        const A* a = lg + n * v.C;
        const A* cmean = sm + n * v.HW;
        const A* cmax = sm + (v.N + n) * v.HW;
        const A* cc = ccp + n * v.HW;
        A* g = row(cg, i);
        A* sp = row(cs, i);
        A* dcmean = row(cdcmean, i);
        A* dcmax = row(cdcmax, i);
        channel_gates(v, a, g);
        // s and the conv's input maps.
        const A* zs = zp + n * v.HW;
        spatial_gate(v, zs, mu, invstd, w.gamma, w.beta, sp);
        conv_input(v, cmean, cmax, t.m.data());
        std::fill(t.dwsp.begin(), t.dwsp.end(), A(0));
        conv2d_backward(v, t.m.data(), w.pws(), dz, t.dm.data(), t.dwsp.data());
        std::copy(t.dwsp.begin(), t.dwsp.begin() + maps * v.k * v.k, dws_part.data_ptr<A>() + n * maps * v.k * v.k);
        // dL/dcmean (÷ C: each channel's share) and dL/dcmax (÷ ties).
        const A invC = A(1) / static_cast<A>(v.C);
        for (int64_t p = 0; p < v.HW; ++p) {
          A dmean, dmax;
          if (v.light) {
            dmean = dmax = A(0.5) * t.dm[p];
          } else {
            dmean = t.dm[(v.max_first ? 1 : 0) * v.HW + p];
            dmax = t.dm[(v.max_first ? 0 : 1) * v.HW + p];
          }
          dcmean[p] = dmean * invC;
          dcmax[p] = dmax / cc[p];
        }
        // dx1 = dy·s + the channel pools' shares; dL/dg = Σ_hw dx1·x; the
        // ties of each channel's spatial max.
        const SpatialGrad<A> sg{sp, dcmean, dcmax, cmax};
        k.channel_grad(dys, xs, g, sg, mx, v.C, v.HW, v.cl, t.dg.data(), row(ccnt_s, i));
        A* da = da_all.data_ptr<A>() + n * v.C;
        for (int64_t c = 0; c < v.C; ++c) {
          da[c] = v.light ? t.dg[c] * (A(1) - g[c]) * g[c] : gate_grad(v.gate, t.dg[c], a[c], g[c]);
        }
      };

      // Stage B: dh = da·W2 (the same for both branches), per branch the
      // pre-activation again, dpre, and dL/dpooled = dpre·W1; then the
      // spatial pools' shares per element: the mean's (÷ H·W) and the max's
      // (÷ ties).
      auto stage_b = [&](int64_t c0, int64_t nb) {
        const at::Tensor dh = small_mm(da_all.narrow(0, c0, nb), w.w2);  // [nb, rd]
        const at::Tensor inputs = chunk_mlp_input(v, pooled, c0, nb).contiguous();  // [maps·nb, C]
        const A* dhp = dh.data_ptr<A>();
        A* hs = hsum.data_ptr<A>() + c0 * v.rd;
        std::vector<at::Tensor> dpool;
        for (int64_t b = 0; b < maps; ++b) {
          at::Tensor pre = at::empty({nb, v.rd}, aopt);  // [nb, rd]: the branch's rows against W1's
          rows_dot(w.pw1(), inputs.const_data_ptr<A>() + b * nb * v.C, v.rd, v.C, nb, pre.data_ptr<A>(), v.rd,
                   w.pb1());
          const A* pp = pre.data_ptr<A>();
          at::Tensor dpre = dpre_all[b].narrow(0, c0, nb);
          A* dp = dpre.data_ptr<A>();
          for (int64_t e = 0; e < nb * v.rd; ++e) {
            hs[e] += act_forward(v.act, pp[e]);
            dp[e] = act_backward(v.act, dhp[e], pp[e]);
          }
          dpool.push_back(small_mm(dpre, w.w1));  // [nb, C]
        }
        const A invHW = A(1) / static_cast<A>(v.HW);
        const A* dmean = dpool[0].data_ptr<A>();
        const A* dmax = dpool[v.light ? 0 : 1].data_ptr<A>();
        const A half = v.light ? A(0.5) : A(1);
        for (int64_t i = 0; i < nb; ++i) {
          A* sh_mean = row(cshare_mean, i);
          A* sh_max = row(cshare_max, i);
          const A* cnt = row(ccnt_s, i);
          for (int64_t c = 0; c < v.C; ++c) {
            sh_mean[c] = (half * dmean[i * v.C + c]) * invHW;   // mean's share per pixel
            sh_max[c] = (half * dmax[i * v.C + c]) / cnt[c];    // max's share per tie
          }
        }
      };

      // Stage C: dx = dx1·g + the spatial pools' shares.
      auto stage_c = [&](int64_t n, int64_t i) {
        const SpatialGrad<A> sg{row(cs, i), row(cdcmean, i), row(cdcmax, i), sm + (v.N + n) * v.HW};
        k.dx(dyp + n * slice, xp + n * slice, row(cg, i), sg, pm + (v.N + n) * v.C, row(cshare_mean, i),
             row(cshare_max, i), v.C, v.HW, v.cl, nt, dxp + n * slice);
      };

      // dz from dL/d(bn output): batch statistics make it depend on every
      // sample (the two batch means below); running ones do not.
      auto dz_of = [&](int64_t n, A m_dbn, A m_dbn_zhat, A* dz) {
        const A* zs = zp + n * v.HW;
        const A* d = dbnp + n * v.HW;
        for (int64_t p = 0; p < v.HW; ++p) {
          const A zhat = (zs[p] - mu) * invstd;
          dz[p] = batch_stats ? w.gamma * invstd * (d[p] - m_dbn - zhat * m_dbn_zhat) : w.gamma * invstd * d[p];
        }
      };

      if (batch_stats) {
        at::parallel_for(0, v.N, 1, [&](int64_t n0, int64_t n1) {
          Scratch<A> t(v);
          for (int64_t n = n0; n < n1; ++n) phase1(n, t);
        });
      }
      // The BatchNorm's reductions over N·H·W (fixed order), in double.
      double s_dbn = 0, s_dbn_zhat = 0;
      const int64_t count = v.N * v.HW;
      if (batch_stats) {
        for (int64_t i = 0; i < count; ++i) {
          const double zhat = (static_cast<double>(zp[i]) - st_mean) * static_cast<double>(invstd);
          s_dbn += static_cast<double>(dbnp[i]);
          s_dbn_zhat += static_cast<double>(dbnp[i]) * zhat;
        }
      }
      const A m_dbn = static_cast<A>(s_dbn / static_cast<double>(count));
      const A m_dbn_zhat = static_cast<A>(s_dbn_zhat / static_cast<double>(count));
      for (int64_t c0 = 0; c0 < v.N; c0 += chunk) {
        const int64_t nb = std::min(chunk, v.N - c0);
        at::parallel_for(c0, c0 + nb, 1, [&](int64_t n0, int64_t n1) {
          Scratch<A> t(v);
          std::vector<A> dz(v.HW);
          for (int64_t n = n0; n < n1; ++n) {
            if (!batch_stats) phase1(n, t);
            dz_of(n, m_dbn, m_dbn_zhat, dz.data());
            stage_a(n, n - c0, t, dz.data());
          }
        });
        stage_b(c0, nb);
        at::parallel_for(c0, c0 + nb, 1, [&](int64_t n0, int64_t n1) {
          for (int64_t n = n0; n < n1; ++n) stage_c(n, n - c0);
        });
      }
      if (!batch_stats) {
        for (int64_t i = 0; i < count; ++i) {
          const double zhat = (static_cast<double>(zp[i]) - st_mean) * static_cast<double>(invstd);
          s_dbn += static_cast<double>(dbnp[i]);
          s_dbn_zhat += static_cast<double>(dbnp[i]) * zhat;
        }
      }
      dbeta = s_dbn;
      dgamma = s_dbn_zhat;
    });
  }

  // The weight gradients, whole batch, fixed order.
  const double branches = light ? 1.0 : 2.0;
  at::Tensor dw2 = small_mm_tn(da_all, hsum);                                  // [C, rd]
  at::Tensor dw1 = small_mm_tn(dpre_all.reshape({maps * v.N, v.rd}), chunk_mlp_input(v, pooled, 0, v.N).contiguous());  // [rd, C]
  at::Tensor db1 = dpre_all.sum(at::IntArrayRef{0, 1});  // a bare braced list is ambiguous with torch 2.11 (DimnameList)
  at::Tensor db2 = da_all.sum(0).mul_(branches);
  at::Tensor dws = dws_part.sum(0);
  const auto wopt = ws.options();
  at::Tensor dgw = bn_w ? at::full({1}, dgamma, aopt).to(bn_w->scalar_type()).view(bn_w->sizes())
                        : at::empty({0}, wopt);
  at::Tensor dgb = bn_b ? at::full({1}, dbeta, aopt).to(bn_b->scalar_type()).view(bn_b->sizes())
                        : at::empty({0}, wopt);
  return {dx,
          dw1.to(w1.scalar_type()),
          b1 ? db1.to(b1->scalar_type()) : at::empty({0}, wopt),
          dw2.to(w2.scalar_type()),
          b2 ? db2.to(b2->scalar_type()) : at::empty({0}, wopt),
          dws.to(ws.scalar_type()),
          dgw,
          dgb};
}

TORCH_LIBRARY_IMPL(fused_attn, CPU, m) {
  m.impl("cbam_forward", &cbam_forward_cpu);
  m.impl("cbam_backward", &cbam_backward_cpu);
}

}  // namespace fused_attn::cpu
