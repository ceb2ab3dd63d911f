// SE forward passes on CUDA: pooling (se_pool) and the rescale (se_scale);
// SE's, CBAM's and ECA's excitations on the pooled rows (se_excite_forward,
// cbam_mlp_forward, eca_excite_forward).
#include "se_kernels.cuh"

namespace fused_attn::cuda {

namespace {
template <typename T>
int64_t segments_of(const SePass& p, bool backward) {
  return backward ? reduce_segments<T, true>(p) : reduce_segments<T, false>(p);
}
}  // namespace

int64_t se_reduce_segments(const SePass& p, bool backward) {
  switch (p.dtype) {
    case DType::F32: return segments_of<float>(p, backward);
    case DType::F64: return segments_of<double>(p, backward);
    case DType::F16: return segments_of<__half>(p, backward);
    case DType::BF16: return segments_of<__nv_bfloat16>(p, backward);
  }
  return 1;
}

cudaError_t se_pool(const SePass& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_reduce<decltype(tag), false>(p, stream); });
}

cudaError_t se_scale(const SePass& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_apply<decltype(tag), false>(p, stream); });
}

int64_t se_excite_partials(const SeExcite& p) {
  return p.two_layer && p.C > 0 ? se_fc1_splits(p) * p.N * p.rd : 0;
}

cudaError_t se_excite_forward(const SeExcite& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_se_excite<decltype(tag)>(p, stream); });
}

int64_t cbam_mlp_partials(const SeExcite& p, bool light) {
  const SeExcite rows = cbam_mlp_rows(p, light);
  return p.C > 0 ? se_fc1_splits(rows) * rows.N * p.rd : 0;
}

cudaError_t cbam_mlp_forward(const SeExcite& p, bool light, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_cbam_mlp<decltype(tag)>(p, light, stream); });
}

cudaError_t eca_excite_forward(const EcaExcite& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_eca_excite_fwd<decltype(tag)>(p, stream); });
}

}  // namespace fused_attn::cuda
