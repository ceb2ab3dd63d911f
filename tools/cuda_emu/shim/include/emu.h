// CPU emulation shim for CUDA kernels: one fiber (its own stack) per CUDA thread,
// one block at a time, barriers / warp exchanges as cooperative switches.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#include <string>
#include <vector>

// The grid.y / grid.z cap the kernels' launchers clamp to (prepare.py writes
// EMU_CAP_65535 for their literal 65535): a GPU's 65535, or 2 (emu_test
// --cap2), so that the grid-stride loops over samples run at small N.
namespace emu { extern int64_t grid_cap; }
#define EMU_CAP_65535 (::emu::grid_cap)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Per-block storage: function statics shared by the block's fibers (one block
// runs at a time); prepare.py adds emu::shared_decl after each declaration,
// which fills the array with 0xFF bytes (NaN) once per block.
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 { unsigned x, y, z; };
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9,
                   cudaErrorInvalidDevice = 101, cudaErrorCooperativeLaunchTooLarge = 720,
                   cudaErrorNotSupported = 801, cudaErrorInvalidClusterSize = 912 };
typedef struct CUstream_st* cudaStream_t;
cudaError_t cudaGetLastError();
#define __align__(n) __attribute__((aligned(n)))

// Single rounded arithmetic (the shim builds for baseline x86-64: no
// contraction into fused multiply-adds anywhere).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }

// ---- half / bfloat16 (storage types; conversions round to nearest even) ----
struct __half { uint16_t x; };
struct __nv_bfloat16 { uint16_t x; };

inline float __half2float(__half h) {
  const uint32_t s = (h.x & 0x8000u) << 16, e = (h.x >> 10) & 0x1f, m = h.x & 0x3ff;
  uint32_t u;
  if (e == 0) {
    if (m == 0) u = s;
    else {  // subnormal: m * 2^-24
      float f = std::ldexp(static_cast<float>(m), -24);
      std::memcpy(&u, &f, 4);
      u |= s;
    }
  } else if (e == 31) {
    u = s | 0x7f800000u | (m << 13);
  } else {
    u = s | ((e + 112) << 23) | (m << 13);
  }
  float f; std::memcpy(&f, &u, 4); return f;
}
inline __half __float2half_rn(float f) {
  uint32_t u; std::memcpy(&u, &f, 4);
  const uint16_t s = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  __half h;
  if (a > 0x7f800000u) { h.x = s | 0x7e00u; return h; }                 // NaN
  if (a >= 0x477ff000u) { h.x = s | 0x7c00u; return h; }                // >= 65520: inf
  if (a >= 0x38800000u) {                                                // normal half
    const uint32_t mant = a & 0x7fffff, exp = (a >> 23) - 112;
    uint32_t r = (exp << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) ++r;
    h.x = static_cast<uint16_t>(s | r); return h;
  }
  // subnormal or zero: value = a_float / 2^-24, rounded to an integer (ties to even)
  float af; std::memcpy(&af, &a, 4);
  const double q = static_cast<double>(af) * 16777216.0;  // exact
  double r = std::nearbyint(q);                             // default mode: ties to even
  h.x = static_cast<uint16_t>(s | static_cast<uint16_t>(r)); return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
  uint32_t u = static_cast<uint32_t>(b.x) << 16; float f; std::memcpy(&f, &u, 4); return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u; std::memcpy(&u, &f, 4);
  __nv_bfloat16 b;
  if ((u & 0x7fffffffu) > 0x7f800000u) { b.x = static_cast<uint16_t>((u >> 16) | 0x40); return b; }
  u += 0x7fffu + ((u >> 16) & 1);
  b.x = static_cast<uint16_t>(u >> 16); return b;
}

namespace emu {

// Scheduling policies (threads within a block, and blocks): 0 in order,
// 1 reversed, 2 random.
extern int policy;
extern unsigned long long launches, blocks_run;
// The names of the kernels launched since the last call ("cudaLaunchKernelEx"
// for a cluster launch), in order; clears them.
std::vector<std::string> take_trace();
extern bool dry_run;  // validate the launch configuration only

// A watched range of device memory cut into granules (emu_device.cpp's
// watch op): every launch that reads it through load_pack (prepare.py's
// rewrite calls on_load) logs the granules in the order it first read them,
// "kernel: i j k ..." (take_reads: those logged since the last call; watch
// starts afresh). The order the blocks of a grid walk memory, for the passes
// that choose it: meaningful under policy 0 (blocks in grid order), the
// glue's.
void watch(const void* base, size_t bytes, size_t granule);
void on_load(const void* p);
std::vector<std::string> take_reads();

struct Cfg {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  dim3 cluster{1, 1, 1};       // thread-block cluster (cudaLaunchKernelEx's attribute)
  bool cooperative = false;    // cudaLaunchKernelEx's cudaLaunchAttributeCooperative: all blocks resident, grid.sync
  const void* func = nullptr;  // the kernel (cudaLaunchKernelEx): its function attributes are checked
  Cfg(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr) : grid(g), block(b), smem(s), stream(st) {}
};
void launch(const char* name, const char* where, const Cfg& cfg, const std::function<void()>& body);
void syncthreads();
// Exchange through the warp: every lane of the warp deposits `bytes`, then reads lane src's.
void warp_exchange(const void* in, void* out, size_t bytes, unsigned mask, int src_lane);
int lane_id();
void shared_decl(void* p, size_t bytes);
// Clusters (shim/include/cooperative_groups.h), dynamic shared memory (one
// exactly sized, NaN-poisoned buffer per block of a running cluster) and the
// asynchronous copies of cuda_pipeline_primitives.h (queued per thread, done
// at __pipeline_wait_prior).
unsigned char* dyn_smem(const char* kernel);
unsigned cluster_rank();
unsigned cluster_size();
void cluster_sync();
// cooperative_groups::this_grid().sync(): a barrier over every thread of a
// cooperative launch (which runs all its blocks together, as one cluster).
void grid_sync();
void* map_shared(void* p, unsigned rank);
void async_copy(void* dst, const void* src, size_t bytes);
void pipe_commit();
void pipe_wait(unsigned n);
// Coverage: a named launch argument of the next launch.
void note(const char* name, long v);
void print_coverage();
size_t stack_size();        // each fiber's stack, in bytes
size_t stack_high_water();  // the most any fiber has used so far
[[noreturn]] void fail(const char* fmt, ...);

}  // namespace emu

#define __syncthreads() ::emu::syncthreads()

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16, "shfl type");
  const int lane = ::emu::lane_id();
  int src = lane ^ lane_mask;
  if (width != 32) src = (lane & ~(width - 1)) | (src & (width - 1));
  T r;
  ::emu::warp_exchange(&v, &r, sizeof(T), mask, src);
  return r;
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::emu::lane_id();
  int src = lane + static_cast<int>(delta);
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
  T r;
  ::emu::warp_exchange(&v, &r, sizeof(T), mask, src);
  return r;
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  const int lane = ::emu::lane_id();
  int src = (lane & ~(width - 1)) | (src_lane & (width - 1));
  T r;
  ::emu::warp_exchange(&v, &r, sizeof(T), mask, src);
  return r;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  int d = 0, r;
  ::emu::warp_exchange(&d, &r, sizeof(int), mask, ::emu::lane_id());
}
template <class T> inline T __ldg(const T* p) { return *p; }

// ---- the runtime API the single-launch SE's host code uses (se_fused.cu) ----
// Emulated devices (emu.cpp's table, chosen with cudaSetDevice): sm_90 parts
// with different multiprocessor counts, shared memory and largest cluster.
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrCooperativeLaunch = 95,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributeNonPortableClusterSizeAllowed = 12,
};
struct cudaFuncAttributes {
  size_t sharedSizeBytes = 0, constSizeBytes = 0, localSizeBytes = 0;
  int maxThreadsPerBlock = 0, numRegs = 0, ptxVersion = 0, binaryVersion = 0, cacheModeCA = 0;
  int maxDynamicSharedSizeBytes = 0;
};
enum cudaLaunchAttributeID { cudaLaunchAttributeCooperative = 2, cudaLaunchAttributeClusterDimension = 4 };
union cudaLaunchAttributeValue {
  struct { unsigned x, y, z; } clusterDim;
  int cooperative;
  char pad[64];
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned numAttrs;
};
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetDevice(int* dev);
cudaError_t cudaSetDevice(int dev);
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int dev);
namespace emu {
cudaError_t func_get_attributes(cudaFuncAttributes* a, const void* f);
cudaError_t func_set_attribute(const void* f, cudaFuncAttribute a, int v);
cudaError_t max_active_clusters(int* n, const void* f, const cudaLaunchConfig_t* cfg);
cudaError_t max_active_blocks(int* n, const void* f, int threads, size_t smem);
cudaError_t launch_error();  // the last launch's own refusal, or cudaSuccess
Cfg cfg_of(const cudaLaunchConfig_t* cfg, const void* f);
}  // namespace emu
template <class F> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, F* f) {
  return ::emu::func_get_attributes(a, reinterpret_cast<const void*>(f));
}
template <class F> cudaError_t cudaFuncSetAttribute(F* f, cudaFuncAttribute a, int v) {
  return ::emu::func_set_attribute(reinterpret_cast<const void*>(f), a, v);
}
template <class F> cudaError_t cudaOccupancyMaxActiveClusters(int* n, F* f, const cudaLaunchConfig_t* cfg) {
  return ::emu::max_active_clusters(n, reinterpret_cast<const void*>(f), cfg);
}
template <class F> cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, F* f, int threads, size_t smem) {
  return ::emu::max_active_blocks(n, reinterpret_cast<const void*>(f), threads, smem);
}
template <class... Exp, class... Act>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* cfg, void (*k)(Exp...), Act&&... args) {
  const ::emu::Cfg c = ::emu::cfg_of(cfg, reinterpret_cast<const void*>(k));
  ::emu::launch("cudaLaunchKernelEx", __PRETTY_FUNCTION__, c, [&] { k(args...); });
  // As the runtime: a refused launch returns its error, which is also the
  // last error (cudaGetLastError) until read; a cooperative launch's refusal
  // is tested so (the excitation's fallback must clear it). Cluster launches
  // keep the error for cudaGetLastError only, as the emulation always had.
  return c.cooperative ? ::emu::launch_error() : cudaSuccess;
}
