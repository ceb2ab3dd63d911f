// Which instruction-set builds of the CPU kernels exist in this binary.
#pragma once

// The AVX2 build uses GCC's `#pragma GCC target`; other compilers and
// architectures get the baseline build only.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FUSED_ATTN_HAVE_AVX2_BUILD 1
#else
#define FUSED_ATTN_HAVE_AVX2_BUILD 0
#endif

namespace fused_attn::cpu {
// "avx2" or "baseline": the build the kernels use on this CPU. The environment
// variable FUSED_ATTN_CPU_ISA=baseline forces the baseline build (for tests).
const char* isa_name();
// Whether the AVX2 build is the one to use (isa_name() == "avx2").
bool use_avx2();
}  // namespace fused_attn::cpu
