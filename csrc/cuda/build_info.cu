// What the CUDA part of the extension was built with, for
// fused_attn.backends(). Compiled by nvcc, so every build with CUDA checks the
// toolkit end to end. The SE CUDA kernels themselves are issue 3.
#include <cuda_runtime_api.h>

// Declared in csrc/se.h; not included here so nvcc never parses torch headers.
namespace fused_attn {
int cuda_compiled_version();
const char* cuda_compiled_archs();

int cuda_compiled_version() { return CUDART_VERSION; }

// nvcc defines __CUDA_ARCH_LIST__ (e.g. 800,900) in host compilation since 11.5.
#define FUSED_ATTN_STR2(...) #__VA_ARGS__
#define FUSED_ATTN_STR(...) FUSED_ATTN_STR2(__VA_ARGS__)
const char* cuda_compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
  return FUSED_ATTN_STR(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}

}  // namespace fused_attn
