// Declarations of the SE CPU passes (se_cpu_kernels.h), included inside the
// namespace of each ISA build so the dispatcher can name both. The job types
// come from se_cpu_jobs.h, outside those namespaces.

// One parallel pass running a write job (one chunk) and a read job (usually the
// next chunk) together. `nt`: stream the written tensor to memory.
template <typename T>
void forward_pass(const ScaleJob<T>& write, const PoolJob<T>& read, int64_t C, int64_t HW, bool cl, bool nt);
template <typename T>
void backward_pass(const DxJob<T>& write, const ReduceJob<T>& read, int64_t C, int64_t HW, bool cl, bool nt);
// g = 1 / (1 + e^-z) for n floats (vec_math.h).
void sigmoid_rows(const float* z, float* g, int64_t n);
