// Declarations of the SE CPU passes (se_cpu_kernels.h), included inside the
// namespace of each ISA build so the dispatcher can name both.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using acc_t = typename AccType<T>::type;

template <typename T>
void pool(const T* x, int64_t nb, int64_t C, int64_t HW, bool cl, acc_t<T>* pooled, acc_t<T>* maxv);
template <typename T>
void scale(const T* x, T* y, const acc_t<T>* g, int64_t nb, int64_t C, int64_t HW, bool cl);
template <typename T>
void backward_reduce(const T* dy, const T* x, const acc_t<T>* maxv, int64_t nb, int64_t C, int64_t HW, bool cl,
                     acc_t<T>* s_out, acc_t<T>* cnt_out);
template <typename T>
void backward_dx(const T* dy, const T* x, T* dx, const acc_t<T>* g, const acc_t<T>* a, const acc_t<T>* b,
                 const acc_t<T>* maxv, int64_t nb, int64_t C, int64_t HW, bool cl);
