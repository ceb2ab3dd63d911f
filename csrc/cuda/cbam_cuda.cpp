// CBAM on CUDA: fused_attn::cbam_forward / cbam_backward for the CUDA dispatch
// key. The torch glue around cbam_kernels.cu (and SE's spatial pool and
// linear kernels): checks, the device guard and current stream, allocations,
// and the few ATen ops left on the small [N, C] and [N, H·W] tensors, on the
// same stream — the algorithm and the passes of fused_attn/triton/cbam.py:
//
//   forward   3 passes, 4|x|: spatial pool (read x), channel pool of x1
//             (read x), rescale (read x, write y)
//   backward  3 passes, 7|x|: Σ_c dy·x1 (read dy, x), Σ_hw dx1·x (read dy,
//             x), dx (read dy, x, write dx)
//
// Each direction's second pass walks the batch from the last sample back
// (CbamPass::reverse), the first and third from the first on: a pass then
// starts on what the pass before it read last, which L2 may still hold (50 MB
// on an H100), instead of on what was evicted first. Where |x| is larger
// than L2 (the first ResNet-50 sites at N = 32 and 128; smaller tensors stay
// in L2 either way) that should save up to an L2's worth of DRAM reads per
// pass, a GPU measurement still to be made (bench/ab_cbam_order.py; with
// FUSED_ATTN_CUDA_ORDER=forward every pass walks forward). No launch is
// added and no result changes: each output is reduced in the same order
// either way.
//
// The MLP runs once per batch: forward as two launches of SE's linear kernel
// (cbam_mlp_forward, se_kernels.cuh), backward as four (cbam_mlp_backward:
// fc1 recomputed, then the two layers' backward and the weight gradients;
// ATen's ops only without hidden units); the spatial gate on the [N, H·W]
// maps is our own kernels: the forward's (the k×k
// convolution, the BatchNorm's batch statistics in double, the gate) two
// launches (cbam_spatial_gate), the backward's (the gate and BatchNorm
// backward, the flipped convolution, the weight gradient) four
// (cbam_spatial_grad), instead of some sixty small ATen ops (no cuDNN
// algorithm choice, no atomics): deterministic, and nothing synchronizes with
// the host, so the ops can be captured in CUDA graphs.
#include "../cbam.h"
#include "cbam_cuda.h"
#include "channel_gate.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <vector>

namespace fused_attn::cuda {
namespace {

using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Backward =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

at::Tensor fc(const at::Tensor& v, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
  return b ? at::addmm(*b, v, w.t()) : v.mm(w.t());
}

// Runs one reduction into sum / ext (contiguous, accumulation dtype), with
// the workspace its segments need. The channel pool and the channel reduce,
// each its direction's second pass, walk the batch from the last sample back
// (channel_gate.h's alternate_order).
void reduce(CbamPass p, CbamReduce kind, const Geometry& geo, const at::Tensor& sum, const at::Tensor& ext) {
  p.reverse = kind != CbamReduce::PixelReduce && alternate_order();
  p.sum = sum.data_ptr();
  p.ext = ext.data_ptr();
  p.segments = cbam_reduce_segments(p, kind);
  at::Tensor workspace;
  if (p.segments > 1) {
    const int64_t outputs = kind == CbamReduce::ChannelReduce ? geo.C : geo.HW;
    workspace = at::empty({2 * p.segments * geo.N * outputs}, sum.options());
    p.partials = workspace.data_ptr();
  }
  C10_CUDA_CHECK(cbam_reduce(p, kind, stream()));
}

// The MLP's input rows from pooled [2, N, C] (contiguous): both pools as one
// [2N, C] matrix (the spatial means, then the maxima), or ½mean + ½max [N, C]
// when light (½max added with alpha: halving is exact, so the same bits as
// two halves and a sum, in one launch fewer).
at::Tensor mlp_input(const at::Tensor& pooled, bool light) {
  if (light) return pooled[0].mul(0.5).add(pooled[1], 0.5);
  return pooled.view({2 * pooled.size(1), pooled.size(2)});
}

// The logits from the hidden rows h of mlp_input: fc2 of each row, the two
// pools' summed when not light — by linearity fc2 once on the sum of the
// hidden rows (with the bias twice), as the CPU backend does.
at::Tensor mlp_logits(const at::Tensor& h, const at::Tensor& w2, const c10::optional<at::Tensor>& b2, bool light) {
  if (light) return fc(h, w2, b2);
  const at::Tensor hsum = h.view({2, h.size(0) / 2, h.size(1)}).sum(0);
  return b2 ? at::addmm(*b2, hsum, w2.t(), /*beta=*/2) : hsum.mm(w2.t());
}

static_assert(kCbamMaxSpatialK == kMaxSpatialKernel, "the spatial kernels stage at most the ops' largest kernel");

// The spatial gate's launch struct for both directions, with the tensors its
// pointers name: the conv weight and the BatchNorm's affine scalars (in their
// own dtypes), and the partials' workspace.
struct Spatial {
  CbamSpatial sp;
  at::Tensor w, gamma, beta, workspace;
};

Spatial spatial_of(const at::Tensor& smap, const at::Tensor& ws, const c10::optional<at::Tensor>& bn_w,
                   const c10::optional<at::Tensor>& bn_b, double eps, int64_t H, int64_t W, Gate gate, bool light,
                   bool max_first, bool batch_stats) {
  const auto acc = smap.scalar_type();
  Spatial r;
  CbamSpatial& sp = r.sp;
  // The conv weight (x's dtype) and the BatchNorm's affine scalars read as
  // they are, converted by the kernels; only a dtype they do not read (a
  // float8 scalar) is converted here.
  const auto as_read = [&](const at::Tensor& t) { return kernel_dtype(t.scalar_type()) ? t : t.to(acc); };
  r.w = as_read(ws).contiguous();
  sp.w_dtype = dtype_of(r.w.scalar_type());
  if (bn_w) r.gamma = as_read(bn_w->reshape({})), sp.gamma_dtype = dtype_of(r.gamma.scalar_type());
  if (bn_b) r.beta = as_read(bn_b->reshape({})), sp.beta_dtype = dtype_of(r.beta.scalar_type());
  sp.acc = dtype_of(acc);
  sp.N = smap.size(1), sp.H = H, sp.W = W;
  sp.k = static_cast<int>(ws.size(-1));
  sp.light = light;
  sp.max_first = max_first;
  sp.gate = static_cast<int8_t>(gate);
  sp.batch_stats = batch_stats;
  sp.eps = eps;
  sp.smap = smap.const_data_ptr();
  sp.w = r.w.const_data_ptr();
  sp.gamma = r.gamma.defined() ? r.gamma.const_data_ptr() : nullptr;
  sp.beta = r.beta.defined() ? r.beta.const_data_ptr() : nullptr;
  r.workspace = at::empty({3 * cbam_spatial_blocks(sp)}, smap.options().dtype(at::kDouble));
  sp.partials = r.workspace.data_ptr();
  return r;
}

// SE's excitation params for the channel MLP (cbam_mlp_forward /
// cbam_mlp_backward) on pooled [2, N, C], with the contiguous weights its
// pointers name; light CBAM's gate is a sigmoid.
struct Mlp {
  SeExcite e;
  at::Tensor w1, b1, w2, b2;
};

Mlp mlp_of(const Geometry& geo, const at::Tensor& pooled, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
           const at::Tensor& w2, const c10::optional<at::Tensor>& b2, Act act, Gate gate, bool light) {
  Mlp m;
  const SePass pass = pass_of<SePass>(geo);  // the dtype and the device's multiprocessors
  SeExcite& e = m.e;
  e.dtype = pass.dtype;
  e.sm_count = pass.sm_count;
  e.N = geo.N, e.C = geo.C, e.rd = w1.size(0), e.HW = geo.HW;
  e.act = static_cast<int8_t>(act);
  e.gate = static_cast<int8_t>(light ? Gate::Sigmoid : gate);
  m.w1 = w1.contiguous(), m.w2 = w2.contiguous();
  if (b1) m.b1 = b1->contiguous();
  if (b2) m.b2 = b2->contiguous();
  e.w1 = m.w1.const_data_ptr(), e.b1 = ptr_or_null(m.b1), e.w2 = m.w2.const_data_ptr(), e.b2 = ptr_or_null(m.b2);
  e.pooled = pooled.const_data_ptr();
  return m;
}

at::Tensor acc_empty(int64_t a, int64_t b, const at::TensorOptions& opts) {
  at::Tensor t = at::empty({a, b}, opts);
  maybe_poison(t);
  return t;
}

// g = gate(logits) [N, C] by cbam_channel_gate: the function the MLP's fc2
// applies in the forward, so the backward's g has the forward's bits.
at::Tensor channel_gate(const at::Tensor& logits, Gate gate, bool light) {
  const at::Tensor z = logits.contiguous();
  at::Tensor g = acc_empty(z.size(0), z.size(1), z.options());
  C10_CUDA_CHECK(cbam_channel_gate(dtype_of(z.scalar_type()), static_cast<int8_t>(light ? Gate::Sigmoid : gate),
                                   z.numel(), z.const_data_ptr(), g.data_ptr(), stream()));
  return g;
}

}  // namespace

Forward cbam_forward_cuda(const at::Tensor& x_in, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                          const at::Tensor& w2, const c10::optional<at::Tensor>& b2, const at::Tensor& ws,
                          const c10::optional<at::Tensor>& bn_w, const c10::optional<at::Tensor>& bn_b,
                          const c10::optional<at::Tensor>& bn_rm, const c10::optional<at::Tensor>& bn_rv, double eps,
                          c10::string_view act_name, c10::string_view gate_name, bool light, bool max_first) {
  check_cbam_args(x_in, w1, b1, w2, b2, ws, light);
  check_cbam_bn_args(x_in, bn_w, bn_b, bn_rm, bn_rv);
  const Act act = parse_act(act_name);
  const Gate gate = parse_gate(gate_name);
  TORCH_CHECK(x_in.is_cuda(), "fused_attn: cbam_forward_cuda got x on ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Geometry geo = geometry(x_in);
  const int64_t N = geo.N, C = geo.C, HW = geo.HW, H = x_in.size(2), W = x_in.size(3);
  const auto acc = acc_dtype(x_in);
  const auto aopt = x_in.options().dtype(acc);
  at::Tensor y = at::empty_like(geo.x);
  maybe_poison(y);
  const bool batch_stats = !(bn_rm && bn_rv);
  if (N == 0 || C == 0 || HW == 0) {  // as the other backends: zeros, and NaN statistics of nothing
    at::Tensor stats = at::zeros({2}, aopt);
    if (C == 0 || HW == 0) stats.fill_(std::numeric_limits<double>::quiet_NaN());
    return {y, at::zeros({2, N, C}, aopt), at::zeros({N, C}, aopt), at::zeros({2, N, HW}, aopt),
            at::zeros({N, HW}, aopt), stats};
  }

  // The channel gate: spatial mean and max of x, the MLP for the batch.
  at::Tensor pooled = at::empty({2, N, C}, aopt);
  maybe_poison(pooled);
  at::Tensor pmean = pooled[0], pmax = pooled[1];
  pool_pass(geo, pmean, pmax, /*plain_mean=*/true);
  // The channel max of x1 = x·g is saved, and the backward finds its ties
  // by recomputing x·g: its g (cbam_channel_gate) and this one are the same
  // function of the same logits, so they have the same bits.
  at::Tensor logits, g;
  if (w1.size(0) > 0) {
    // The logits and the gate in two launches of ours (cbam_mlp_forward: fc2 applies the gate).
    Mlp mlp = mlp_of(geo, pooled, w1, b1, w2, b2, act, gate, light);
    SeExcite& e = mlp.e;
    logits = acc_empty(N, C, aopt);
    g = acc_empty(N, C, aopt);
    e.logits = logits.data_ptr();
    e.g = g.data_ptr();
    at::Tensor workspace = at::empty({cbam_mlp_partials(e, light)}, aopt);
    e.partials = ptr_or_null(workspace);
    C10_CUDA_CHECK(cbam_mlp_forward(e, light, stream()));
  } else {  // no hidden units: the logits by ATen's ops, the gate by ours
    const SeWeights w = se_weights(w1, b1, w2, b2, acc);
    logits = mlp_logits(activation(act, fc(mlp_input(pooled, light), w.w1, w.b1)), *w.w2, w.b2, light).contiguous();
    g = channel_gate(logits, gate, light);
  }

  // The spatial gate: channel mean and max of x1, the conv, the BatchNorm.
  at::Tensor smap = at::empty({2, N, HW}, aopt);
  maybe_poison(smap);
  CbamPass p = pass_of<CbamPass>(geo);
  p.g = g.const_data_ptr();
  reduce(p, CbamReduce::ChannelPool, geo, smap[0], smap[1]);
  // The spatial gate in two launches: z, the statistics (the batch's, or the
  // running buffers read in place), s.
  at::Tensor z = acc_empty(N, HW, aopt), s = acc_empty(N, HW, aopt);
  at::Tensor stats = at::empty({2}, aopt);
  maybe_poison(stats);
  Spatial spatial = spatial_of(smap, ws, bn_w, bn_b, eps, H, W, gate, light, max_first, batch_stats);
  CbamSpatial& sp = spatial.sp;
  sp.z = z.data_ptr();
  at::Tensor rm, rv;
  if (!batch_stats) {
    rm = bn_rm->reshape({}), rv = bn_rv->reshape({});
    if (rm.scalar_type() != rv.scalar_type() || !kernel_dtype(rm.scalar_type()))
      rm = rm.to(at::kDouble), rv = rv.to(at::kDouble);  // mixed or float8 buffers: two launches
    sp.running_mean = rm.const_data_ptr();
    sp.running_var = rv.const_data_ptr();
    sp.running_dtype = dtype_of(rm.scalar_type());
  }
  sp.stats_acc = stats.data_ptr();
  sp.s = s.data_ptr();
  C10_CUDA_CHECK(cbam_spatial_gate(sp, stream()));

  p.s = s.const_data_ptr();
  p.out = y.data_ptr();
  C10_CUDA_CHECK(cbam_rescale(p, stream()));
  return {y, pooled, logits, smap, z, stats};
}

Backward cbam_backward_cuda(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& w1,
                            const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                            const c10::optional<at::Tensor>& b2, const at::Tensor& ws,
                            const c10::optional<at::Tensor>& bn_w, const c10::optional<at::Tensor>& bn_b,
                            const at::Tensor& pooled, const at::Tensor& logits, const at::Tensor& smap,
                            const at::Tensor& z, const at::Tensor& stats, bool batch_stats, double eps,
                            c10::string_view act_name, c10::string_view gate_name, bool light, bool max_first) {
  check_cbam_args(x_in, w1, b1, w2, b2, ws, light);
  check_cbam_backward_args(dy_in, x_in, pooled, logits, smap, z, stats);
  const Act act = parse_act(act_name);
  const Gate gate = parse_gate(gate_name);
  TORCH_CHECK(x_in.is_cuda(), "fused_attn: cbam_backward_cuda got x on ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Geometry geo = geometry(x_in);
  const int64_t N = geo.N, C = geo.C, HW = geo.HW, H = x_in.size(2), W = x_in.size(3);
  const int64_t k = ws.size(-1), maps = light ? 1 : 2;
  const auto acc = acc_dtype(x_in);
  const auto aopt = x_in.options().dtype(acc);
  at::Tensor dx = at::empty_like(geo.x);
  maybe_poison(dx);
  const auto param_grad = [&](const c10::optional<at::Tensor>& t, const at::Tensor& grad) {
    return t ? grad.to(t->scalar_type()).view(t->sizes()) : at::empty({0}, ws.options());
  };
  const auto grads = [&](const at::Tensor& dw1, const at::Tensor& db1, const at::Tensor& dw2, const at::Tensor& db2,
                         const at::Tensor& dws, const at::Tensor& dgamma, const at::Tensor& dbeta) -> Backward {
    return {dx, dw1.to(w1.scalar_type()), param_grad(b1, db1), dw2.to(w2.scalar_type()), param_grad(b2, db2),
            dws.to(ws.scalar_type()), param_grad(bn_w, dgamma), param_grad(bn_b, dbeta)};
  };
  if (N == 0 || C == 0 || HW == 0) {  // nothing flows: zero weight gradients
    return grads(at::zeros(w1.sizes(), aopt), at::zeros({w1.size(0)}, aopt), at::zeros(w2.sizes(), aopt),
                 at::zeros({C}, aopt), at::zeros({maps, k, k}, aopt), at::zeros({}, aopt), at::zeros({}, aopt));
  }
  const at::Tensor dy = dy_in.contiguous(geo.format);
  const at::Tensor cmax = smap[1];
  const at::Tensor g = channel_gate(logits, gate, light);  // the forward's bits (cbam_forward_cuda)
  CbamPass p = pass_of<CbamPass>(geo);
  p.dy = dy.const_data_ptr();
  p.g = g.const_data_ptr();
  p.cmax = cmax.const_data_ptr();

  // Pass 1: the spatial gate's gradient per pixel, and the channel max's ties.
  const at::Tensor ds = acc_empty(N, HW, aopt), ccnt = acc_empty(N, HW, aopt);
  reduce(p, CbamReduce::PixelReduce, geo, ds, ccnt);

  // The spatial gate's backward in four launches: s and the BatchNorm's
  // gradient (through the batch mean and variance too with batch
  // statistics), dz, the maps' gradients through the flipped kernel, and each
  // sample's conv weight gradient, summed here.
  const at::Tensor s = acc_empty(N, HW, aopt), dz = acc_empty(N, HW, aopt);
  const at::Tensor dcmean = acc_empty(N, HW, aopt), dcmax = acc_empty(N, HW, aopt);
  const at::Tensor wpart = acc_empty(N, maps * k * k, aopt);
  // dgamma and dbeta written by the kernel in the parameter's dtype where
  // rounding once to the accumulation type, then to that dtype, is what a
  // conversion launch after it would give (float64 to a 16-bit type would
  // round twice: converted here instead).
  const auto grad_dtype = [&](const c10::optional<at::Tensor>& t) {
    if (!t) return acc;
    const auto d = t->scalar_type();
    const bool sixteen = d == at::kHalf || d == at::kBFloat16;
    return kernel_dtype(d) && !(sixteen && acc == at::kDouble) ? d : acc;
  };
  at::Tensor dgamma = at::empty({}, aopt.dtype(grad_dtype(bn_w))), dbeta = at::empty({}, aopt.dtype(grad_dtype(bn_b)));
  maybe_poison(dgamma);
  maybe_poison(dbeta);
  const at::Tensor smap_c = smap.contiguous(), z_c = z.contiguous(), stats_c = stats.contiguous();
  Spatial spatial = spatial_of(smap_c, ws, bn_w, bn_b, eps, H, W, gate, light, max_first, batch_stats);
  CbamSpatial& sp = spatial.sp;
  sp.C = C;
  sp.z = const_cast<void*>(z_c.const_data_ptr());  // the backward only reads z and the statistics
  sp.stats_acc = const_cast<void*>(stats_c.const_data_ptr());
  sp.ds = ds.const_data_ptr();
  sp.ccnt = ccnt.const_data_ptr();
  sp.s = s.data_ptr();
  sp.dz = dz.data_ptr();
  sp.dcmean = dcmean.data_ptr();
  sp.dcmax = dcmax.data_ptr();
  sp.dgamma = dgamma.data_ptr();
  sp.dbeta = dbeta.data_ptr();
  sp.dgamma_dtype = dtype_of(dgamma.scalar_type());
  sp.dbeta_dtype = dtype_of(dbeta.scalar_type());
  sp.wpart = wpart.data_ptr();
  C10_CUDA_CHECK(cbam_spatial_grad(sp, stream()));
  // The samples' conv weight gradients summed in order, in the weight's dtype
  // (sum_partials; float64 by ATen: the partials are double).
  at::Tensor dws;
  if (acc == at::kFloat) {
    dws = at::empty({maps, k, k}, ws.options().memory_format(at::MemoryFormat::Contiguous));
    maybe_poison(dws);
    PartialSums q;
    q.dtype = dtype_of(ws.scalar_type());
    q.groups = N, q.count = 1;
    q.parts[0] = wpart.const_data_ptr<float>(), q.out[0] = dws.data_ptr(), q.len[0] = maps * k * k;
    C10_CUDA_CHECK(sum_partials(q, stream()));
  } else {
    dws = wpart.sum(0).view({maps, k, k});
  }

  // Pass 2: the channel gate's gradient per channel, and the spatial max's ties.
  const at::Tensor mx = pooled[1];
  p.s = s.const_data_ptr();
  p.dcmean = dcmean.const_data_ptr();
  p.dcmax = dcmax.const_data_ptr();
  p.mx = mx.const_data_ptr();
  const at::Tensor dg = acc_empty(N, C, aopt), scnt = acc_empty(N, C, aopt);
  reduce(p, CbamReduce::ChannelReduce, geo, dg, scnt);

  // The channel gate and the MLP backward, once for the batch: four launches
  // of ours (cbam_mlp_backward) with hidden units; without, ATen's ops.
  const int64_t rd = w1.size(0);
  if (rd > 0) {
    Mlp mlp = mlp_of(geo, pooled, w1, b1, w2, b2, act, gate, light);
    SeExcite& e = mlp.e;
    e.s = dg.const_data_ptr(), e.saved_logits = logits.const_data_ptr();
    e.cnt = scnt.const_data_ptr();
    const at::Tensor a = acc_empty(N, C, aopt), b = acc_empty(N, C, aopt);
    e.a = a.data_ptr(), e.b = b.data_ptr();
    at::Tensor workspace = at::empty({cbam_mlp_backward_workspace(e, light)}, aopt);
    maybe_poison(workspace);
    e.partials = workspace.data_ptr();
    const auto wopts = w1.options().memory_format(at::MemoryFormat::Contiguous);
    at::Tensor dw1 = at::empty(w1.sizes(), wopts), dw2 = at::empty(w2.sizes(), wopts);
    at::Tensor db1 = at::empty({b1 ? rd : 0}, wopts), db2 = at::empty({b2 ? C : 0}, wopts);
    for (at::Tensor* t : {&dw1, &db1, &dw2, &db2}) maybe_poison(*t);
    e.dw1 = dw1.data_ptr(), e.db1 = ptr_or_null(db1), e.dw2 = dw2.data_ptr(), e.db2 = ptr_or_null(db2);
    C10_CUDA_CHECK(cbam_mlp_backward(e, light, stream()));

    // Pass 3: dx.
    p.a = a.const_data_ptr();
    p.b = b.const_data_ptr();
    p.out = dx.data_ptr();
    C10_CUDA_CHECK(cbam_input_grad(p, stream()));
    return grads(dw1, db1, dw2, db2, dws, dgamma, dbeta);
  }
  const at::Tensor da = gate_backward(light ? Gate::Sigmoid : gate, dg, logits, g);
  const SeWeights w = se_weights(w1, b1, w2, c10::nullopt, acc);
  const at::Tensor dh = da.mm(*w.w2);  // [N, rd]: the same for both pools' rows
  const at::Tensor v = mlp_input(pooled, light);  // [rows, C], rows = N (light) or 2N
  const at::Tensor pre = fc(v, w.w1, w.b1);
  const at::Tensor dpre = light ? activation_backward(act, dh, pre)
                                : activation_backward(act, dh.unsqueeze(0).expand({2, N, rd}), pre.view({2, N, rd}))
                                      .reshape({2 * N, rd});
  const at::Tensor h = activation(act, pre);
  const at::Tensor dw2 = da.t().mm(light ? h : h.view({2, N, rd}).sum(0));
  const at::Tensor dw1 = dpre.t().mm(v);
  const at::Tensor db1 = b1 ? dpre.sum(0) : at::Tensor();
  const at::Tensor db2 = b2 ? (light ? da.sum(0) : da.sum(0).mul(2.0)) : at::Tensor();
  at::Tensor dpool = dpre.mm(w.w1);  // [rows, C]
  at::Tensor dmean, dmax;
  if (light) {
    dmean = dmax = dpool.mul(0.5);
  } else {
    dmean = dpool.narrow(0, 0, N);
    dmax = dpool.narrow(0, N, N);
  }
  const at::Tensor a = dmean.mul(1.0 / static_cast<double>(HW)).contiguous();  // the mean's share per pixel
  const at::Tensor b = dmax.div(scnt).contiguous();                            // the max's share per tie

  // Pass 3: dx.
  p.a = a.const_data_ptr();
  p.b = b.const_data_ptr();
  p.out = dx.data_ptr();
  C10_CUDA_CHECK(cbam_input_grad(p, stream()));
  return grads(dw1, db1, dw2, db2, dws, dgamma, dbeta);
}

TORCH_LIBRARY_IMPL(fused_attn, CUDA, m) {
  m.impl("cbam_forward", &cbam_forward_cuda);
  m.impl("cbam_backward", &cbam_backward_cuda);
}

}  // namespace fused_attn::cuda
