// The work descriptions shared by every ISA build of the CPU passes (SE and
// CBAM).
#pragma once

#include <cstdint>

namespace fused_attn::cpu {

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using acc_t = typename AccType<T>::type;

// Each job covers `nb` whole samples (nb == 0: nothing to do); pointers are at
// the job's first sample. Per-(n, c) arrays are [nb, C] in acc_t.

// Forward write job: y = x · g.
template <typename T> struct ScaleJob {
  const T* x = nullptr; T* y = nullptr; const acc_t<T>* g = nullptr; int64_t nb = 0;
};
// Forward read job: pooled = mean (or 0.5·mean + 0.5·max, when maxv is set,
// which also receives the max).
template <typename T> struct PoolJob {
  const T* x = nullptr; int64_t nb = 0; acc_t<T>* pooled = nullptr; acc_t<T>* maxv = nullptr;
  bool poison = false;  // fill the pass's scratch with NaN first (fill_uninitialized())
};
// Backward write job: dx = dy·g + a (+ b where x == maxv, when maxv is set).
template <typename T> struct DxJob {
  const T* dy = nullptr; const T* x = nullptr; T* dx = nullptr;
  const acc_t<T>* g = nullptr; const acc_t<T>* a = nullptr; const acc_t<T>* b = nullptr;
  const acc_t<T>* maxv = nullptr; int64_t nb = 0;
};
// Backward read job: s = Σ dy·x (and cnt = #{x == maxv}, when maxv is set).
template <typename T> struct ReduceJob {
  const T* dy = nullptr; const T* x = nullptr; const acc_t<T>* maxv = nullptr; int64_t nb = 0;
  acc_t<T>* s = nullptr; acc_t<T>* cnt = nullptr;
  bool poison = false;  // as PoolJob's
};

// CBAM backward: what dx1 = dL/dx1 is made of at each pixel p of a sample:
// dx1 = dy·s[p] + dcmean[p] (+ dcmax[p] where x1 is the channel max cmax[p]).
template <typename A> struct SpatialGrad {
  const A* s = nullptr; const A* dcmean = nullptr; const A* dcmax = nullptr; const A* cmax = nullptr;
};

}  // namespace fused_attn::cpu
