// The shared channel-gate passes on CUDA (channel_gate.h).
#include "channel_gate.h"

#include "se_cuda.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/div.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

namespace fused_attn::cuda {

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::F32;
    case at::kDouble: return DType::F64;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    default: TORCH_CHECK_TYPE(false, "fused_attn: unsupported dtype ", t);
  }
}

// Multiprocessors per device, read once per device.
int sm_count(int device) {
  static std::array<std::atomic<int>, 64> cache{};
  if (device >= 0 && device < static_cast<int>(cache.size())) {
    if (const int known = cache[device].load(std::memory_order_relaxed)) return known;
  }
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < static_cast<int>(cache.size())) cache[device].store(count, std::memory_order_relaxed);
  return count;
}

namespace {

// Which of the named choices an environment variable holds (the first, the
// default, when it is unset or empty), or a ValueError naming the variable
// and its choices: the CUDA backend's A/B knobs.
size_t env_choice(const char* name, std::initializer_list<const char*> choices) {
  const char* v = std::getenv(name);
  if (v == nullptr || v[0] == '\0') return 0;
  size_t i = 0;
  std::string list;
  for (const char* c : choices) {
    if (std::strcmp(v, c) == 0) return i;
    list += i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ";
    list += c;
    ++i;
  }
  TORCH_CHECK_VALUE(false, "fused_attn: ", name, " must be ", list, "; got '", v, "'");
}

enum class Path { Auto, Fused, TwoPhase };

Path cuda_path() { return static_cast<Path>(env_choice("FUSED_ATTN_CUDA_PATH", {"auto", "fused", "two_phase"})); }

}  // namespace

bool plan_single_launch(SeFused& f, const Geometry& geo, bool backward) {
  const Path path = cuda_path();
  // An x with no elements (C or H·W zero) has nothing to launch, even when the
  // single launch is forced: the two-phase path returns its empty (or NaN-mean) outputs.
  if (path == Path::TwoPhase || geo.x.numel() == 0) return false;
  f.dtype = dtype_of(geo.x.scalar_type());
  f.N = geo.N;
  f.C = geo.C;
  f.HW = geo.HW;
  f.channels_last = geo.cl;
  const bool ok = se_fused_plan(f, backward, path == Path::Fused);
  TORCH_CHECK(ok || path != Path::Fused, "fused_attn: FUSED_ATTN_CUDA_PATH=fused, but the single-launch ",
              f.eca ? "ECA " : "SE ", backward ? "backward" : "forward", " has no plan for x of shape ",
              geo.x.sizes(), " (", geo.x.scalar_type(), ", ", geo.cl ? "channels_last" : "NCHW",
              ") on this device: it needs sm_90 or newer, float32/float16/bfloat16, and a group of samples whose ",
              "slices fit in the shared memory of a cluster of at most 16 blocks",
              se_fused_refusal().empty() ? "" : "; the runtime refused the last plan it was asked about: ",
              se_fused_refusal());
  return ok;
}

void* ptr_or_null(at::Tensor& t) { return t.defined() && t.numel() ? t.data_ptr() : nullptr; }
const void* ptr_or_null(const at::Tensor& t) { return t.defined() && t.numel() ? t.const_data_ptr() : nullptr; }

at::Tensor single_launch_grad(const SeFused& f, const at::Tensor& like, c10::IntArrayRef shape) {
  const bool partial = f.groups > 1;
  std::vector<int64_t> sizes(shape.begin(), shape.end());
  if (partial) sizes.insert(sizes.begin(), f.groups);
  at::Tensor t = at::empty(sizes, like.options().dtype(partial ? at::kFloat : like.scalar_type()));
  maybe_poison(t);
  return t;
}

std::vector<at::Tensor> single_launch_grad_results(const SeFused& f, const std::vector<at::Tensor>& grads,
                                                   const at::Tensor& like) {
  std::vector<at::Tensor> out;
  PartialSums q;
  q.dtype = dtype_of(like.scalar_type());
  q.groups = f.groups;
  for (const at::Tensor& grad : grads) {
    if (!grad.defined()) {
      out.push_back(at::empty({0}, like.options()));
    } else if (f.groups <= 1) {
      out.push_back(weight_grad_or_empty(grad, like));
    } else {
      TORCH_CHECK(q.count < kMaxPartialSums && grad.scalar_type() == at::kFloat && grad.is_contiguous(),
                  "fused_attn: single_launch_grad_results takes at most ", kMaxPartialSums, " float partials");
      at::Tensor sum = at::empty(grad.sizes().slice(1), like.options().memory_format(at::MemoryFormat::Contiguous));
      maybe_poison(sum);
      q.parts[q.count] = grad.const_data_ptr<float>();
      q.out[q.count] = sum.data_ptr();
      q.len[q.count] = sum.numel();
      // (an empty gradient has nothing to sum)
      if (sum.numel() > 0) ++q.count;
      out.push_back(sum);
    }
  }
  if (q.count > 0) C10_CUDA_CHECK(sum_partials(q, c10::cuda::getCurrentCUDAStream()));
  return out;
}

namespace {

// For tests of the planner on any machine with the CUDA build: the plan
// se_fused_plan would make for this call on an sm_90 device with `sms`
// multiprocessors and `smem_optin` bytes of opt-in shared memory per block,
// as [cluster, group, groups, cb, vec, staged, smem], or [] without one.
// `aligned`: x and the outputs start 16-byte aligned.
std::vector<int64_t> single_launch_plan(int64_t N, int64_t C, int64_t HW, int64_t rd, c10::string_view dtype,
                                        bool channels_last, bool two_layer, bool with_max, bool eca, bool backward,
                                        bool force, bool aligned, int64_t sms, int64_t smem_optin) {
  SeFused f;
  const std::string name(dtype.data(), dtype.size());
  if (name == "float32") {
    f.dtype = DType::F32;
  } else if (name == "float16") {
    f.dtype = DType::F16;
  } else if (name == "bfloat16") {
    f.dtype = DType::BF16;
  } else {
    TORCH_CHECK_VALUE(name == "float64", "fused_attn: unknown dtype '", name, "'");
    f.dtype = DType::F64;
  }
  f.N = N, f.C = C, f.HW = HW, f.rd = rd;
  f.channels_last = channels_last;
  f.two_layer = two_layer, f.with_max = with_max, f.eca = eca;
  // Stand-in addresses: planning looks only at their alignment.
  const uintptr_t base = aligned ? 256 : 258;
  f.x = f.dy = reinterpret_cast<const void*>(base);
  f.y = f.dx = reinterpret_cast<void*>(base + 4096);
  if (!se_fused_plan_for(f, backward, force, static_cast<int>(sms), smem_optin)) return {};
  return {f.cluster, f.group, f.groups, f.cb, f.vec ? 1 : 0, f.staged ? 1 : 0, f.smem};
}

TORCH_LIBRARY_FRAGMENT(fused_attn, m) {
  m.def(
      "_single_launch_plan(int N, int C, int HW, int rd, str dtype, bool channels_last, bool two_layer, "
      "bool with_max, bool eca, bool backward, bool force, bool aligned, int sms, int smem_optin) -> int[]",
      &single_launch_plan);
}


cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

// Sizes the split of H·W for a reduction pass and allocates its workspace
// (from the caching allocator: graph-capture safe). The workspace is returned
// so it lives until the launches are queued.
at::Tensor split_reduction(SePass& p, const Geometry& geo, bool backward) {
  p.segments = se_reduce_segments(p, backward);
  if (p.segments == 1) return at::Tensor();
  at::Tensor workspace = at::empty({2 * geo.N * geo.C * p.segments}, geo.x.options().dtype(acc_dtype(geo.x)));
  p.partials = workspace.data_ptr();
  return workspace;
}

}  // namespace

namespace {

// The pool (se_pool) or, with dy, Σ dy·x (se_reduce), launched; defer: its
// segments' partials left for the excitation to combine.
DeferredPool reduction(const Geometry& geo, const at::Tensor* dy, const at::Tensor& maxv, at::Tensor& sum,
                       at::Tensor& ext, bool plain_mean, bool defer) {
  DeferredPool d;
  d.pass = pass_of<SePass>(geo);
  d.pass.plain_mean = plain_mean;
  d.pass.sum = sum.data_ptr();
  d.pass.ext = ptr_or_null(ext);
  if (dy != nullptr) d.pass.dy = dy->const_data_ptr(), d.pass.maxv = ptr_or_null(maxv);
  d.pass.defer_combine = defer;
  d.workspace = split_reduction(d.pass, geo, dy != nullptr);
  C10_CUDA_CHECK(dy != nullptr ? se_reduce(d.pass, stream()) : se_pool(d.pass, stream()));
  return d;
}

}  // namespace

void pool_pass(const Geometry& geo, at::Tensor& pooled, at::Tensor& maxv, bool plain_mean) {
  reduction(geo, nullptr, maxv, pooled, maxv, plain_mean, false);
}

DeferredPool pool_pass_deferred(const Geometry& geo, at::Tensor& pooled, at::Tensor& maxv) {
  return reduction(geo, nullptr, maxv, pooled, maxv, false, true);
}

DeferredPool reduce_pass_deferred(const Geometry& geo, const at::Tensor& dy, const at::Tensor& maxv, at::Tensor& s,
                                  at::Tensor& cnt) {
  return reduction(geo, &dy, maxv, s, cnt, false, true);
}

bool cooperative_excite() { return env_choice("FUSED_ATTN_CUDA_EXCITE", {"cooperative", "launches"}) == 0; }

bool alternate_order() { return env_choice("FUSED_ATTN_CUDA_ORDER", {"alternate", "forward"}) == 0; }

void scale_pass(const Geometry& geo, const at::Tensor& g, at::Tensor& y) {
  SePass p = pass_of<SePass>(geo);
  p.reverse = alternate_order();  // from where the pool ended
  p.out = y.data_ptr();
  p.g = g.const_data_ptr();
  C10_CUDA_CHECK(se_scale(p, stream()));
}

void reduce_pass(const Geometry& geo, const at::Tensor& dy, const at::Tensor& maxv, at::Tensor& s, at::Tensor& cnt) {
  reduction(geo, &dy, maxv, s, cnt, false, false);
}

void input_grad_pass(const Geometry& geo, const at::Tensor& dy, const at::Tensor& g, const at::Tensor& dp,
                const at::Tensor& maxv, const at::Tensor& cnt, at::Tensor& dx) {
  const bool with_max = maxv.numel() > 0;
  // dL/dpooled spread back over H·W: the mean's share to every element, the
  // max's share split between the tied maxima (as torch.amax's gradient is).
  const at::Tensor a = dp.mul((with_max ? 0.5 : 1.0) / static_cast<double>(geo.HW)).contiguous();
  const at::Tensor b = with_max ? dp.mul(0.5).div(cnt).contiguous() : at::Tensor();
  dx_pass(geo, dy, g.contiguous(), a, b, maxv, dx);
}

void dx_pass(const Geometry& geo, const at::Tensor& dy, const at::Tensor& g, const at::Tensor& a,
             const at::Tensor& b, const at::Tensor& maxv, at::Tensor& dx) {
  SePass p = pass_of<SePass>(geo);
  p.reverse = alternate_order();  // from where Σ dy·x ended
  p.dy = dy.const_data_ptr();
  p.out = dx.data_ptr();
  p.g = g.const_data_ptr();
  p.a = a.const_data_ptr();
  p.b = ptr_or_null(b);
  p.maxv = ptr_or_null(maxv);
  C10_CUDA_CHECK(se_dx(p, stream()));
}

}  // namespace fused_attn::cuda
