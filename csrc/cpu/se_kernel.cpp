// Squeeze-and-Excitation on the CPU: fused_attn::se_forward / se_backward for
// the CPU dispatch key.
//
// Bytes (DESIGN.md §4): the batch is walked in chunks of whole samples small
// enough to stay in cache. For each chunk the forward pools, runs the
// excitation for the chunk's samples at once (se_excite.cpp), and rescales
// while the chunk is still cached, so x comes from DRAM once: 2|x| (read x,
// write y). The backward does the same with Σ dy·x, the excitation backward and
// dx: 3|x| (read dy and x, write dx); the weight gradients are formed once for
// the whole batch at the end. Chunk k's writing pass runs together with chunk
// k + 1's reading pass (se_cpu_kernels.h: interleaved).
#include "../se.h"
#include "se_cpu_isa.h"
#include "se_excite.h"
#include "se_cpu_jobs.h"
#include "channel_gate.h"

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>
#include <unistd.h>
#include <type_traits>
#include <utility>
#include <vector>

namespace fused_attn::cpu {

namespace baseline {
#include "se_cpu_decl.h"
#include "se_cpu_kernels.h"
#include "vec_math.h"
}  // namespace baseline

#if FUSED_ATTN_HAVE_AVX2_BUILD
namespace avx2 {
#include "se_cpu_decl.h"
}  // namespace avx2
#endif

namespace {

template <typename T>
struct Kernels {
  decltype(&baseline::forward_pass<T>) forward;
  decltype(&baseline::backward_pass<T>) backward;
};

template <typename T>
Kernels<T> kernels() {
#if FUSED_ATTN_HAVE_AVX2_BUILD
  if (use_avx2()) return {&avx2::forward_pass<T>, &avx2::backward_pass<T>};
#endif
  return {&baseline::forward_pass<T>, &baseline::backward_pass<T>};
}

// What the excitation reads per call whatever the chunk: its weights.
int64_t weight_bytes(const SeWeights& w) {
  int64_t b = static_cast<int64_t>(w.w1.nbytes());
  for (const auto* t : {&w.b1, &w.w2, &w.b2})
    if (t->has_value()) b += static_cast<int64_t>((*t)->nbytes());
  return b;
}

at::Tensor rows(const at::Tensor& t, int64_t n0, int64_t nb) { return t.numel() ? t.narrow(0, n0, nb) : t; }

template <typename A>
A* ptr_or_null(const at::Tensor& t, int64_t offset) {
  return t.numel() ? t.data_ptr<A>() + offset : nullptr;
}

// Whether at::empty fills new tensors with NaN now
// (torch.use_deterministic_algorithms(True) with
// torch.utils.deterministic.fill_uninitialized_memory, its default): the
// passes' own scratch follows suit, so the tests, which run in that mode too,
// catch a read of scratch nobody wrote.
bool fill_uninitialized() {
  const at::Context& ctx = at::globalContext();
  return ctx.deterministicAlgorithms() && ctx.deterministicFillUninitializedMemory();
}

}  // namespace

// Bytes of the big tensors a chunk may touch and still be cached when it is
// read the second time: half the last-level cache, between 4 and 32 MiB.
// FUSED_ATTN_CPU_CHUNK_BYTES overrides.
static int64_t cache_budget() {
  if (const char* env = std::getenv("FUSED_ATTN_CPU_CHUNK_BYTES")) {
    const long long v = std::atoll(env);
    if (v > 0) return v;
  }
  static const int64_t budget = [] {
    long cache = 0;
#ifdef _SC_LEVEL3_CACHE_SIZE
    cache = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (cache <= 0) cache = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    if (cache <= 0) cache = long{16} << 20;
    return std::clamp<int64_t>(cache / 2, int64_t{4} << 20, int64_t{32} << 20);
  }();
  return budget;
}

int64_t chunk_samples(int64_t N, int64_t bytes_per_sample) {
  return std::clamp<int64_t>(cache_budget() / std::max<int64_t>(bytes_per_sample, 1), 1, std::max<int64_t>(N, 1));
}

// The fixed cost of one chunk of the pipelined passes (a parallel region, the
// excitation's calls), as the bytes DRAM moves meanwhile: ~10 µs at ~25 GB/s,
// read off ECA's forward at 8×2048×7² on the 2-core Xeon VM (two samples per
// chunk beat one by ~20 µs: four chunks fewer).
constexpr int64_t kChunkFixedBytes = int64_t{256} << 10;

int64_t pipeline_chunk(int64_t N, int64_t first_read_bytes, int64_t cached_bytes, int64_t excite_bytes) {
  if (N <= 1) return 1;
  if (const char* env = std::getenv("FUSED_ATTN_CPU_CHUNK_SAMPLES")) {
    const long long v = std::atoll(env);
    if (v > 0) return std::min<int64_t>(v, N);
  }
  const double per_chunk = static_cast<double>(kChunkFixedBytes + std::max<int64_t>(excite_bytes, 0));
  const double best = std::sqrt(static_cast<double>(N) * per_chunk / static_cast<double>(std::max<int64_t>(first_read_bytes, 1)));
  int64_t nb = std::clamp<int64_t>(std::llround(best), 1, std::min(N, chunk_samples(N, cached_bytes)));
  // As many chunks as that takes, evened out (8 as 4 + 4, not 7 + 1).
  const int64_t chunks = (N + nb - 1) / nb;
  return (N + chunks - 1) / chunks;
}

// Stream an output to memory (non-temporal stores) when it is large (8 MiB or
// more: unlikely to be cache-resident for the next layer, and writing it
// through the cache evicts the chunk being re-read) and its rows are whole
// 64-byte lines: partial-line streaming stores are far slower than ordinary
// ones (NCHW with H·W = 49 ran 5x slower). FUSED_ATTN_CPU_STREAM_BYTES
// overrides the size threshold.
bool stream_output(const at::Tensor& out, int64_t row_elems) {
  int64_t threshold = int64_t{8} << 20;
  if (const char* env = std::getenv("FUSED_ATTN_CPU_STREAM_BYTES")) threshold = std::atoll(env);
  const bool whole_lines = (row_elems * static_cast<int64_t>(out.element_size())) % 64 == 0 &&
                           reinterpret_cast<uintptr_t>(out.data_ptr()) % 64 == 0;
  return whole_lines && static_cast<int64_t>(out.nbytes()) >= threshold;
}

void gate_forward_cpu(const Geometry& geo, at::Tensor& y, at::Tensor& pooled, at::Tensor& maxv,
                      int64_t excite_bytes, const ExciteForward& excite) {
  const int64_t N = geo.N, C = geo.C, HW = geo.HW;
  if (N == 0) return;
  const at::Tensor& x = geo.x;
  const auto opts = pooled.options();
  const int64_t xs = C * HW * static_cast<int64_t>(x.element_size());
  const int64_t chunk = pipeline_chunk(N, xs, 2 * xs, excite_bytes);
  const bool nt = stream_output(y, geo.row());
  const bool poison = fill_uninitialized();
  // Software pipeline over chunks: chunk k is rescaled in the same parallel
  // pass that pools chunk k + 1.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gate_forward_cpu", [&] {
    using A = acc_t<scalar_t>;
    using Pool = PoolJob<scalar_t>;
    using Scale = ScaleJob<scalar_t>;
    const Kernels<scalar_t> k = kernels<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    auto pool_job = [&](int64_t n0) {
      if (n0 >= N) return Pool{};
      return Pool{xp + n0 * C * HW, std::min(chunk, N - n0), pooled.data_ptr<A>() + n0 * C,
                  ptr_or_null<A>(maxv, n0 * C), poison};
    };
    at::Tensor gates = at::empty({std::min(chunk, N), C}, opts);
    k.forward(Scale{}, pool_job(0), C, HW, geo.cl, nt);
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      const int64_t nb = std::min(chunk, N - n0);
      at::Tensor g = gates.narrow(0, 0, nb);
      excite(n0, nb, g);
      const int64_t off = n0 * C * HW;
      k.forward(Scale{xp + off, yp + off, g.data_ptr<A>(), nb}, pool_job(n0 + chunk), C, HW, geo.cl, nt);
    }
  });
}

void gate_backward_cpu(const Geometry& geo, const at::Tensor& dy, const at::Tensor& maxv, at::Tensor& dx,
                       int64_t excite_bytes, const ExciteBackward& excite) {
  const int64_t N = geo.N, C = geo.C, HW = geo.HW;
  if (N == 0) return;
  const at::Tensor& x = geo.x;
  const bool with_max = maxv.numel() > 0;
  const auto opts = x.options().dtype(acc_dtype(x));
  at::Tensor s = at::empty({N, C}, opts);
  at::Tensor cnt = at::empty({with_max ? N : 0, with_max ? C : 0}, opts);
  // The first chunk's reduction reads dy and x; a chunk touches dy, x and dx.
  const int64_t xs = C * HW * static_cast<int64_t>(x.element_size());
  const int64_t chunk = pipeline_chunk(N, 2 * xs, 3 * xs, excite_bytes);
  const bool nt = stream_output(dx, geo.row());
  const bool poison = fill_uninitialized();
  // The same pipeline as the forward: dx of chunk k and Σ dy·x of chunk
  // k + 1 in one pass.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gate_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    using Reduce = ReduceJob<scalar_t>;
    using Dx = DxJob<scalar_t>;
    const Kernels<scalar_t> k = kernels<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    auto reduce_job = [&](int64_t n0) {
      if (n0 >= N) return Reduce{};
      const int64_t off = n0 * C * HW;
      return Reduce{dyp + off, xp + off, ptr_or_null<A>(maxv, n0 * C), std::min(chunk, N - n0),
                    s.data_ptr<A>() + n0 * C, ptr_or_null<A>(cnt, n0 * C), poison};
    };
    k.backward(Dx{}, reduce_job(0), C, HW, geo.cl, nt);
    const int64_t max_nb = std::min(chunk, N);
    at::Tensor gates = at::empty({max_nb, C}, opts), dps = at::empty({max_nb, C}, opts);
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      const int64_t nb = std::min(chunk, N - n0);
      const int64_t off = n0 * C * HW;
      at::Tensor g = gates.narrow(0, 0, nb), dp = dps.narrow(0, 0, nb);
      excite(n0, nb, s.narrow(0, n0, nb), g, dp);
      // Split dL/dp between the mean (spread over H·W) and the max (spread
      // over the tied maxima, as torch.amax's gradient is).
      const at::Tensor a = dp.mul((with_max ? 0.5 : 1.0) / static_cast<double>(HW));
      const at::Tensor b = with_max ? dp.mul(0.5).div_(cnt.narrow(0, n0, nb)) : at::Tensor();
      const Dx job{dyp + off, xp + off, dxp + off, g.data_ptr<A>(), a.data_ptr<A>(),
                   with_max ? b.data_ptr<A>() : nullptr, ptr_or_null<A>(maxv, n0 * C), nb};
      k.backward(job, reduce_job(n0 + chunk), C, HW, geo.cl, nt);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_forward_cpu(
    const at::Tensor& x_in, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
    const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& b2, c10::string_view act_name,
    c10::string_view gate_name, c10::string_view pool_name) {
  check_se_args(x_in, w1, b1, w2, b2);
  const Act act = parse_act(act_name);
  const Gate gate = parse_gate(gate_name);
  const Pool pool = parse_pool(pool_name);
  TORCH_CHECK(x_in.device().is_cpu(), "fused_attn: se_forward_cpu got x on ", x_in.device());

  const Geometry geo = geometry(x_in);
  SeForwardOutputs out = se_forward_outputs(geo, w1, w2.has_value(), pool);
  if (geo.N == 0) return out.tuple();

  // 16-bit weights are read as they are where every chunk's products go
  // through the row kernels (N ≤ kExciteFewRows), not copied to float per call.
  const SeWeights w = se_weights(w1, b1, w2, b2, acc_dtype(x_in), /*keep_16bit=*/geo.N <= kExciteFewRows);
  gate_forward_cpu(geo, out.y, out.pooled, out.maxv, weight_bytes(w), [&](int64_t n0, int64_t nb, at::Tensor& g) {
    at::Tensor h = rows(out.hidden, n0, nb);
    at::Tensor z = out.logits.narrow(0, n0, nb);
    excite_forward(w, act, gate, out.pooled.narrow(0, n0, nb), h, z, g);
  });
  return out.tuple();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_backward_cpu(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& w1, const c10::optional<at::Tensor>& w2,
    const at::Tensor& pooled, const at::Tensor& maxv, const at::Tensor& hidden, const at::Tensor& logits,
    c10::string_view act_name, c10::string_view gate_name, c10::string_view pool_name, bool has_b1, bool has_b2) {
  const Pool pool = parse_pool(pool_name);
  check_se_backward_args(dy_in, x_in, w1, w2, pooled, maxv, hidden, logits, pool);
  const Act act = parse_act(act_name);
  const Gate gate = parse_gate(gate_name);
  TORCH_CHECK(x_in.device().is_cpu(), "fused_attn: se_backward_cpu got x on ", x_in.device());
  const Geometry geo = geometry(x_in);
  const int64_t N = geo.N, C = geo.C;
  const auto acc = acc_dtype(x_in);
  const auto opts = x_in.options().dtype(acc);
  const bool two = w2.has_value();
  const at::Tensor dy = dy_in.contiguous(geo.format);

  at::Tensor dx = at::empty_like(geo.x);
  maybe_poison(dx);
  const SeWeights w = se_weights(w1, c10::nullopt, w2, c10::nullopt, acc);
  const int64_t rd = w1.size(0);
  at::Tensor dz = at::zeros({N, C}, opts);             // dL/dlogits, every sample: for the weight gradients
  at::Tensor dh = at::zeros({two ? N : 0, rd}, opts);  // dL/dhidden
  // The excitation backward's weights count four times: an empirical factor
  // (its two products, dz·W2 and dh·W1, are the row kernels of small_mm_out).
  // At 8×2048×7² the whole batch in one chunk beat two chunks by 9%
  // (bench/cpu_chunks.py), where the weights counted once would split it.
  gate_backward_cpu(geo, dy, maxv, dx, 4 * weight_bytes(w), [&](int64_t n0, int64_t nb, const at::Tensor& s, at::Tensor& g, at::Tensor& dp) {
    at::Tensor dz_c = dz.narrow(0, n0, nb), dh_c = rows(dh, n0, nb);
    excite_backward(w, act, gate, s, rows(hidden, n0, nb), logits.narrow(0, n0, nb), g, dz_c, dh_c, dp);
  });
  const ExciteWeightGrads grads = excite_weight_grads(w, act, pooled, hidden, dz, dh, has_b1, has_b2 && two);
  return {dx, weight_grad_or_empty(grads.dw1, w1), weight_grad_or_empty(grads.db1, w1),
          weight_grad_or_empty(grads.dw2, w1), weight_grad_or_empty(grads.db2, w1)};
}

bool use_avx2() {
#if FUSED_ATTN_HAVE_AVX2_BUILD
  const char* forced = std::getenv("FUSED_ATTN_CPU_ISA");
  if (forced != nullptr && std::strcmp(forced, "baseline") == 0) return false;
  static const bool supported =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return supported;
#else
  return false;
#endif
}

void sigmoid_into(const float* z, float* g, int64_t n) {
#if FUSED_ATTN_HAVE_AVX2_BUILD
  if (use_avx2()) return avx2::sigmoid_rows(z, g, n);
#endif
  baseline::sigmoid_rows(z, g, n);
}

const char* isa_name() { return use_avx2() ? "avx2" : "baseline"; }

TORCH_LIBRARY_IMPL(fused_attn, CPU, m) {
  m.impl("se_forward", &se_forward_cpu);
  m.impl("se_backward", &se_backward_cpu);
}

}  // namespace fused_attn::cpu
