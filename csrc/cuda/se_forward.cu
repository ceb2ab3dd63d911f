// SE forward passes on CUDA: pooling (se_pool) and the rescale (se_scale);
// SE's, CBAM's and ECA's excitations on the pooled rows (se_excite_forward,
// cbam_mlp_forward, eca_excite_forward), and SE's straight from the pool's
// partials, in one cooperative launch where the device allows
// (se_excite_forward_pooled).
#include "se_kernels.cuh"

#include <cooperative_groups.h>

#include <atomic>

namespace fused_attn::cuda {

namespace {

namespace cg = cooperative_groups;

// The forward's excitation in one cooperative launch: the pool's partials
// combined (with pool.segments > 1), fc1, fc2 with the gate: each phase is
// the tiles of its own launch (launch_combine's rows, launch_linear's blocks),
// walked by the resident blocks in turn, with a grid.sync() between phases.
struct SeExciteCoop {
  SePass pool;
  SeLinear fc1, fc2;
  int64_t gx1 = 1, gy1 = 1, gz1 = 1;  // fc1's grid, as its own launch would take it (y not capped)
  int64_t gx2 = 1, gy2 = 1;           // fc2's (two layers)
  bool two_layer = true;
};

template <typename T>
constexpr size_t coop_smem() {
  return sizeof(acc_t<T>) * (kLinJ * (kLinK + 1) + kLinN * kLinK);
}

template <typename T>
__global__ void __launch_bounds__(kLinThreads) se_excite_coop_kernel(const SeExciteCoop c) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const LinTiles<A> tiles{reinterpret_cast<A(*)[kLinK + 1]>(smem_raw),
                          reinterpret_cast<A(*)[kLinK]>(smem_raw + sizeof(A) * kLinJ * (kLinK + 1))};
  const cg::grid_group grid = cg::this_grid();
  if (c.pool.segments > 1) {
    const int64_t first = static_cast<int64_t>(blockIdx.x) * kLinThreads + threadIdx.x;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * kLinThreads;
    if (c.pool.ext != nullptr) {
      combine_rows<A, false, true>(c.pool, first, stride);
    } else {
      combine_rows<A, false, false>(c.pool, first, stride);
    }
    grid.sync();
  }
  const int64_t n1 = c.gx1 * c.gy1 * c.gz1;
  for (int64_t b = blockIdx.x; b < n1; b += gridDim.x) {
    const int64_t bx = b % c.gx1, by = (b / c.gx1) % c.gy1, bz = b / (c.gx1 * c.gy1);
    if (c.two_layer) {
      linear_block<T, LinIn::Rows, LinOut::Parts, false>(c.fc1, bx, by, bz, c.gy1, tiles);
    } else {
      linear_block<T, LinIn::Rows, LinOut::Gate, false>(c.fc1, bx, by, bz, c.gy1, tiles);
    }
  }
  if (c.two_layer) {
    grid.sync();
    const int64_t n2 = c.gx2 * c.gy2;
    for (int64_t b = blockIdx.x; b < n2; b += gridDim.x)
      linear_block<T, LinIn::PartsAct, LinOut::Gate, false>(c.fc2, b % c.gx2, b / c.gx2, 0, c.gy2, tiles);
  }
}

// se_excite_coop_kernel<T>'s blocks resident per multiprocessor of the
// current device (0: the device has no cooperative launch), asked once per device.
template <typename T>
int coop_blocks_per_sm() {
  constexpr int kDevices = 64;
  static std::atomic<int> known[kDevices] = {};  // the answer + 1; 0 until asked
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (dev >= 0 && dev < kDevices && known[dev].load() > 0) return known[dev].load() - 1;
  int coop = 0, per_sm = 0;
  if (cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess || !coop ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, se_excite_coop_kernel<T>, kLinThreads, coop_smem<T>()) !=
          cudaSuccess) {
    (void)cudaGetLastError();
    per_sm = 0;
  }
  if (dev >= 0 && dev < kDevices) known[dev].store(per_sm + 1);
  return per_sm;
}

template <typename T>
cudaError_t launch_se_excite_pooled(const SeExcite& p, const SePass& pool, bool cooperative, cudaStream_t stream) {
  if (!se_excite_valid(p) || p.C == 0 || p.rd == 0 || !pool.defer_combine || pool.sum != p.pooled || pool.N != p.N ||
      pool.C != p.C || pool.dtype != p.dtype || (pool.segments > 1 && pool.partials == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (p.N == 0) return cudaSuccess;
  const bool combine = pool.segments > 1;
  if (cooperative && (combine || p.two_layer)) {
    const int per_sm = coop_blocks_per_sm<T>();
    if (per_sm > 0) {
      SeExciteCoop c;
      c.pool = pool;
      c.two_layer = p.two_layer;
      c.gy1 = c.gy2 = ceil_div(p.N, kLinN);
      if (p.two_layer) {
        c.fc1 = fc1_parts_layer(p, p, false, p.partials);
        c.gx1 = ceil_div(p.rd, kLinJ);
        c.gz1 = se_fc1_splits(p);
        c.fc2 = fc2_gate_layer(p, p, false, 1);
        c.gx2 = ceil_div(p.C, kLinJ);
      } else {
        c.fc1 = one_layer_gate(p);
        c.gx1 = ceil_div(p.rd, kLinJ);
      }
      const int64_t tiles = std::max(c.gx1 * c.gy1 * c.gz1, p.two_layer ? c.gx2 * c.gy2 : int64_t{0});
      const int64_t blocks = std::min<int64_t>(tiles, int64_t{per_sm} * p.sm_count);
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(static_cast<unsigned>(blocks));
      cfg.blockDim = dim3(kLinThreads);
      cfg.dynamicSmemBytes = coop_smem<T>();
      cfg.stream = stream;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeCooperative;
      attr[0].val.cooperative = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      cudaError_t err = cudaLaunchKernelEx(&cfg, se_excite_coop_kernel<T>, c);
      if (err == cudaSuccess) err = cudaGetLastError();
      if (err != cudaErrorCooperativeLaunchTooLarge && err != cudaErrorNotSupported) return err;
      // Refused (fewer blocks resident than the occupancy query said: MPS
      // limits, a green context): the launches below. The runtime recorded
      // the refusal as its last error too, which their check would report.
      (void)cudaGetLastError();
    }
  }
  if (combine) {
    if (pool.ext != nullptr) {
      launch_combine<acc_t<T>, false, true>(pool, stream);
    } else {
      launch_combine<acc_t<T>, false, false>(pool, stream);
    }
  }
  return launch_se_excite<T>(p, stream);
}
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

cudaError_t se_excite_forward_pooled(const SeExcite& p, const SePass& pool, bool cooperative, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto tag) {
    return launch_se_excite_pooled<decltype(tag)>(p, pool, cooperative, stream);
  });
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
