// The SE CPU passes compiled for AVX2 + FMA + F16C (chosen at run time by
// se_kernel.cpp when the CPU has them). Torch headers come first, outside the
// target region, so no torch code is compiled for AVX2.
#include "se_cpu_isa.h"
#include "se_cpu_jobs.h"

#if FUSED_ATTN_HAVE_AVX2_BUILD
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#define FUSED_ATTN_F16C 1

namespace fused_attn::cpu::avx2 {
#include "se_cpu_decl.h"
#include "se_cpu_kernels.h"
#include "vec_math.h"
}  // namespace fused_attn::cpu::avx2

#pragma GCC pop_options
#endif
