// SE backward passes on CUDA: Σ dy·x with the max-tie counts (se_reduce) and
// dx (se_dx); SE's, CBAM's and ECA's excitation backward (se_excite_backward,
// cbam_mlp_backward, eca_excite_backward).
#include "se_kernels.cuh"

namespace fused_attn::cuda {

cudaError_t se_reduce(const SePass& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_reduce<decltype(tag), true>(p, stream); });
}

cudaError_t se_dx(const SePass& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_apply<decltype(tag), true>(p, stream); });
}

int64_t se_excite_backward_workspace(const SeExcite& p) { return se_excite_bwd_workspace(p); }

cudaError_t se_excite_backward(const SeExcite& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_se_excite_bwd<decltype(tag)>(p, stream); });
}

int64_t cbam_mlp_backward_workspace(const SeExcite& p, bool light) {
  return p.C > 0 && p.rd > 0 ? cbam_mlp_bwd_space(p, light).total : 0;
}

cudaError_t cbam_mlp_backward(const SeExcite& p, bool light, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_cbam_mlp_bwd<decltype(tag)>(p, light, stream); });
}

cudaError_t sum_partials(const PartialSums& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_grad_sum<decltype(tag)>(p, stream); });
}

int64_t eca_excite_partials(const EcaExcite& p) {
  const dim3 grid = eca_excite_bwd_grid(p);
  return int64_t{grid.x} * grid.y * (p.k + 1);
}

cudaError_t eca_excite_backward(const EcaExcite& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_eca_excite_bwd<decltype(tag)>(p, stream); });
}

}  // namespace fused_attn::cuda
