// SE backward passes on CUDA: Σ dy·x with the max-tie counts (se_reduce) and
// dx (se_dx).
#include "se_kernels.cuh"

namespace fused_attn::cuda {

cudaError_t se_reduce(const SePass& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_reduce<decltype(tag), true>(p, stream); });
}

cudaError_t se_dx(const SePass& p, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) { return launch_apply<decltype(tag), true>(p, stream); });
}

}  // namespace fused_attn::cuda
