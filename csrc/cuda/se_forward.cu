// SE forward passes on CUDA: pooling (se_pool) and the rescale (se_scale).
#include "se_kernels.cuh"

namespace fused_attn::cuda {

cudaError_t se_pool(const SePass& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_reduce<decltype(tag), false>(p, stream); });
}

cudaError_t se_scale(const SePass& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_apply<decltype(tag), false>(p, stream); });
}

}  // namespace fused_attn::cuda
