// Declarations of CBAM's CPU passes (cbam_cpu_kernels.h), included inside the
// namespace of each ISA build so cbam_kernel.cpp can name both. Each works on
// one sample's slice; per-channel arrays are [C], per-pixel arrays [H·W], in
// acc_t. SpatialGrad comes from se_cpu_jobs.h, outside those namespaces.
template <typename T>
void cbam_spatial_pool(const T* x, int64_t C, int64_t HW, bool cl, acc_t<T>* mean, acc_t<T>* mx);
template <typename T>
void cbam_channel_pool(const T* x, const acc_t<T>* g, int64_t C, int64_t HW, bool cl, acc_t<T>* cmean,
                       acc_t<T>* cmax);
template <typename T>
void cbam_rescale(const T* x, const acc_t<T>* g, const acc_t<T>* s, int64_t C, int64_t HW, bool cl, bool nt, T* y);
template <typename T>
void cbam_spatial_grad(const T* dy, const T* x, const acc_t<T>* g, const acc_t<T>* cmax, int64_t C, int64_t HW,
                       bool cl, acc_t<T>* ds, acc_t<T>* cc);
template <typename T>
void cbam_channel_grad(const T* dy, const T* x, const acc_t<T>* g, const SpatialGrad<acc_t<T>>& sg,
                       const acc_t<T>* mx, int64_t C, int64_t HW, bool cl, acc_t<T>* dg, acc_t<T>* cnt);
template <typename T>
void cbam_dx(const T* dy, const T* x, const acc_t<T>* g, const SpatialGrad<acc_t<T>>& sg, const acc_t<T>* mx,
             const acc_t<T>* share, const acc_t<T>* tie, int64_t C, int64_t HW, bool cl, bool nt, T* dx);
// out[n·ldo + m] = Σ_k a[m·K + k]·b[n·K + k] (+ bias_scale·bias[m]), m in [m0, m1), n < nb
// (the MLP's products). a, the weights, in A or (A float) 16-bit, widened as
// they load (since FUSED_ATTN_ROWS_DOT_16BIT, for the harness's A/B runs).
#define FUSED_ATTN_ROWS_DOT_16BIT 1
template <typename A, typename Tw>
void rows_dot(const Tw* a, const A* b, int64_t K, int64_t m0, int64_t m1, int64_t nb, const A* bias, A bias_scale,
              A* out, int64_t ldo);
// out[r·ldo + j] = Σ_t a[r·ar + t·at]·B[t·ldb + j] for rows r < R, columns j
// in [j0, j1), t < T ascending (the MLP backward's products and the weight
// gradients: a·B, or aᵀ·B with ar = 1).
template <typename A>
void rows_times(const A* a, int64_t ar, int64_t at, const A* B, int64_t ldb, int64_t R, int64_t T, int64_t j0,
                int64_t j1, A* out, int64_t ldo);
