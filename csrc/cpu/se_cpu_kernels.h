// SE big-tensor passes on the CPU: pooling, rescale, and their backward.
//
// This header is compiled twice: once for the baseline ISA (se_kernel.cpp) and
// once with AVX2/FMA/F16C enabled (se_kernel_avx2.cpp); the op picks one at run
// time. It is included inside `namespace fused_attn::cpu::<isa>` after the
// torch headers and se_cpu_decl.h, so everything defined here is compiled for
// that ISA and nothing from torch is.
//
// The loops are written over fixed-size blocks with one accumulator per lane
// (`acc[j] += v[j]`), which the compiler vectorizes without reassociating a
// reduction, so results do not depend on the vector width or on the number of
// threads: every reduction order is fixed by the shape alone. (The AVX2 build
// may contract a·b + c into an FMA, so the two builds can differ in the last
// bit; each is deterministic run to run.)
//
// Layouts: NCHW rows are the H·W pixels of one (n, c); channels_last rows are
// the C channels of one (n, h, w). Each sample's slice is the contiguous range
// [n·C·HW, (n+1)·C·HW) in both.

constexpr int64_t kBlock = 64;           // lanes per block
constexpr int64_t kTaskElems = 1 << 14;  // elements per parallel task, at least

// ---- conversion of one block (n <= kBlock elements) to and from acc_t ------

inline void load_block(const float* s, float* d, int64_t n) { std::memcpy(d, s, n * sizeof(float)); }
inline void load_block(const double* s, double* d, int64_t n) { std::memcpy(d, s, n * sizeof(double)); }
inline void store_block(const float* s, float* d, int64_t n) { std::memcpy(d, s, n * sizeof(float)); }
inline void store_block(const double* s, double* d, int64_t n) { std::memcpy(d, s, n * sizeof(double)); }

inline void load_block(const c10::BFloat16* s, float* d, int64_t n) {
  const uint16_t* u = reinterpret_cast<const uint16_t*>(s);
  uint32_t bits[kBlock];
  for (int64_t j = 0; j < n; ++j) bits[j] = static_cast<uint32_t>(u[j]) << 16;
  std::memcpy(d, bits, n * sizeof(float));
}

// Round to nearest even, NaN to the canonical quiet NaN: c10::BFloat16's rule.
inline void store_block(const float* s, c10::BFloat16* d, int64_t n) {
  uint32_t bits[kBlock];
  uint16_t out[kBlock];
  std::memcpy(bits, s, n * sizeof(float));
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t b = bits[j];
    const uint32_t rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
    out[j] = (b & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
  }
  std::memcpy(d, out, n * sizeof(uint16_t));
}

inline void load_block(const c10::Half* s, float* d, int64_t n) {
  int64_t j = 0;
#ifdef FUSED_ATTN_F16C
  for (; j + 8 <= n; j += 8) {
    _mm256_storeu_ps(d + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j))));
  }
  for (; j < n; ++j) d[j] = _cvtsh_ss(s[j].x);
#else
  for (; j < n; ++j) d[j] = static_cast<float>(s[j]);
#endif
}

inline void store_block(const float* s, c10::Half* d, int64_t n) {
  int64_t j = 0;
#ifdef FUSED_ATTN_F16C
  for (; j + 8 <= n; j += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + j),
                     _mm256_cvtps_ph(_mm256_loadu_ps(s + j), _MM_FROUND_TO_NEAREST_INT));
  }
  uint16_t* u = reinterpret_cast<uint16_t*>(d);
  for (; j < n; ++j) u[j] = _cvtss_sh(s[j], _MM_FROUND_TO_NEAREST_INT);
#else
  for (; j < n; ++j) d[j] = c10::Half(s[j]);
#endif
}

// max that propagates NaN, as torch.amax does.
template <typename A> inline A max_nan(A m, A v) { return (v > m || v != v) ? v : m; }

// Fixed-order pairwise sum / max of the kBlock lanes.
template <typename A> inline A lanes_sum(A* a) {
  for (int64_t w = kBlock / 2; w > 0; w /= 2)
    for (int64_t j = 0; j < w; ++j) a[j] += a[j + w];
  return a[0];
}
template <typename A> inline A lanes_max(A* a) {
  for (int64_t w = kBlock / 2; w > 0; w /= 2)
    for (int64_t j = 0; j < w; ++j) a[j] = max_nan(a[j], a[j + w]);
  return a[0];
}

inline int64_t grain_rows(int64_t row_len) { return std::max<int64_t>(1, kTaskElems / std::max<int64_t>(row_len, 1)); }

// channels_last reductions split each sample's H·W rows into segments of a
// size fixed by the shape; each task sums whole rows of its segment into its
// own partial vector and the partials are added in segment order.
inline int64_t cl_segment_rows(int64_t C) { return grain_rows(C); }

// ---- forward --------------------------------------------------------------

// pooled[n, c] = mean(x[n, c]) or 0.5·mean + 0.5·max; maxv[n, c] = max when
// `maxv` is not null. x holds `nb` samples.
template <typename T>
void pool(const T* x, int64_t nb, int64_t C, int64_t HW, bool cl, acc_t<T>* pooled, acc_t<T>* maxv) {
  using A = acc_t<T>;
  const A inv_hw = A(1) / A(HW);
  const bool want_max = maxv != nullptr;
  auto finish = [&](int64_t r, A sum, A mx) {
    const A mean = sum * inv_hw;
    if (want_max) {
      maxv[r] = mx;
      pooled[r] = A(0.5) * mean + A(0.5) * mx;
    } else {
      pooled[r] = mean;
    }
  };
  if (!cl) {
    at::parallel_for(0, nb * C, grain_rows(HW), [&](int64_t r0, int64_t r1) {
      A buf[kBlock], s[kBlock], m[kBlock];
      for (int64_t r = r0; r < r1; ++r) {
        const T* row = x + r * HW;
        std::fill(s, s + kBlock, A(0));
        std::fill(m, m + kBlock, -std::numeric_limits<A>::infinity());
        for (int64_t i = 0; i < HW; i += kBlock) {
          const int64_t n = std::min(kBlock, HW - i);
          load_block(row + i, buf, n);
          for (int64_t j = 0; j < n; ++j) s[j] += buf[j];
          if (want_max)
            for (int64_t j = 0; j < n; ++j) m[j] = max_nan(m[j], buf[j]);
        }
        finish(r, lanes_sum(s), want_max ? lanes_max(m) : A(0));
      }
    });
    return;
  }
  const int64_t seg = cl_segment_rows(C);
  const int64_t nseg = (HW + seg - 1) / seg;
  std::vector<A> psum(nb * nseg * C);
  std::vector<A> pmax(want_max ? nb * nseg * C : 0);
  at::parallel_for(0, nb * nseg, 1, [&](int64_t t0, int64_t t1) {
    A buf[kBlock];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nseg, hw0 = (t % nseg) * seg, hw1 = std::min(HW, hw0 + seg);
      A* s = psum.data() + t * C;
      A* m = want_max ? pmax.data() + t * C : nullptr;
      std::fill(s, s + C, A(0));
      if (want_max) std::fill(m, m + C, -std::numeric_limits<A>::infinity());
      for (int64_t hw = hw0; hw < hw1; ++hw) {
        const T* row = x + (n * HW + hw) * C;
        for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
          const int64_t k = std::min(kBlock, C - c0);
          load_block(row + c0, buf, k);
          for (int64_t j = 0; j < k; ++j) s[c0 + j] += buf[j];
          if (want_max)
            for (int64_t j = 0; j < k; ++j) m[c0 + j] = max_nan(m[c0 + j], buf[j]);
        }
      }
    }
  });
  at::parallel_for(0, nb * C, grain_rows(nseg), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / C, c = r % C;
      A sum = 0, mx = -std::numeric_limits<A>::infinity();
      for (int64_t g = 0; g < nseg; ++g) {
        sum += psum[(n * nseg + g) * C + c];
        if (want_max) mx = max_nan(mx, pmax[(n * nseg + g) * C + c]);
      }
      finish(r, sum, mx);
    }
  });
}

// y[n, c, hw] = x[n, c, hw] · g[n, c].
template <typename T>
void scale(const T* x, T* y, const acc_t<T>* g, int64_t nb, int64_t C, int64_t HW, bool cl) {
  using A = acc_t<T>;
  if (!cl) {
    at::parallel_for(0, nb * C, grain_rows(HW), [&](int64_t r0, int64_t r1) {
      A buf[kBlock];
      for (int64_t r = r0; r < r1; ++r) {
        const A gr = g[r];
        for (int64_t i = 0; i < HW; i += kBlock) {
          const int64_t n = std::min(kBlock, HW - i);
          load_block(x + r * HW + i, buf, n);
          for (int64_t j = 0; j < n; ++j) buf[j] *= gr;
          store_block(buf, y + r * HW + i, n);
        }
      }
    });
    return;
  }
  at::parallel_for(0, nb * HW, grain_rows(C), [&](int64_t r0, int64_t r1) {
    A buf[kBlock];
    for (int64_t r = r0; r < r1; ++r) {
      const A* gn = g + (r / HW) * C;
      for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
        const int64_t k = std::min(kBlock, C - c0);
        load_block(x + r * C + c0, buf, k);
        for (int64_t j = 0; j < k; ++j) buf[j] *= gn[c0 + j];
        store_block(buf, y + r * C + c0, k);
      }
    }
  });
}

// ---- backward -------------------------------------------------------------

// s[n, c] = Σ_hw dy·x; cnt[n, c] = #{hw : x == maxv[n, c]} when maxv is not null.
template <typename T>
void backward_reduce(const T* dy, const T* x, const acc_t<T>* maxv, int64_t nb, int64_t C, int64_t HW,
                     bool cl, acc_t<T>* s_out, acc_t<T>* cnt_out) {
  using A = acc_t<T>;
  const bool want_cnt = maxv != nullptr;
  if (!cl) {
    at::parallel_for(0, nb * C, grain_rows(HW), [&](int64_t r0, int64_t r1) {
      A bx[kBlock], bd[kBlock], s[kBlock], k[kBlock];
      for (int64_t r = r0; r < r1; ++r) {
        std::fill(s, s + kBlock, A(0));
        std::fill(k, k + kBlock, A(0));
        const A m = want_cnt ? maxv[r] : A(0);
        for (int64_t i = 0; i < HW; i += kBlock) {
          const int64_t n = std::min(kBlock, HW - i);
          load_block(x + r * HW + i, bx, n);
          load_block(dy + r * HW + i, bd, n);
          for (int64_t j = 0; j < n; ++j) s[j] += bd[j] * bx[j];
          if (want_cnt)
            for (int64_t j = 0; j < n; ++j) k[j] += bx[j] == m ? A(1) : A(0);
        }
        s_out[r] = lanes_sum(s);
        if (want_cnt) cnt_out[r] = lanes_sum(k);
      }
    });
    return;
  }
  const int64_t seg = cl_segment_rows(C);
  const int64_t nseg = (HW + seg - 1) / seg;
  std::vector<A> ps(nb * nseg * C);
  std::vector<A> pk(want_cnt ? nb * nseg * C : 0);
  at::parallel_for(0, nb * nseg, 1, [&](int64_t t0, int64_t t1) {
    A bx[kBlock], bd[kBlock];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nseg, hw0 = (t % nseg) * seg, hw1 = std::min(HW, hw0 + seg);
      A* s = ps.data() + t * C;
      A* k = want_cnt ? pk.data() + t * C : nullptr;
      const A* m = want_cnt ? maxv + n * C : nullptr;
      std::fill(s, s + C, A(0));
      if (want_cnt) std::fill(k, k + C, A(0));
      for (int64_t hw = hw0; hw < hw1; ++hw) {
        const int64_t off = (n * HW + hw) * C;
        for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
          const int64_t w = std::min(kBlock, C - c0);
          load_block(x + off + c0, bx, w);
          load_block(dy + off + c0, bd, w);
          for (int64_t j = 0; j < w; ++j) s[c0 + j] += bd[j] * bx[j];
          if (want_cnt)
            for (int64_t j = 0; j < w; ++j) k[c0 + j] += bx[j] == m[c0 + j] ? A(1) : A(0);
        }
      }
    }
  });
  at::parallel_for(0, nb * C, grain_rows(nseg), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / C, c = r % C;
      A s = 0, k = 0;
      for (int64_t g = 0; g < nseg; ++g) {
        s += ps[(n * nseg + g) * C + c];
        if (want_cnt) k += pk[(n * nseg + g) * C + c];
      }
      s_out[r] = s;
      if (want_cnt) cnt_out[r] = k;
    }
  });
}

// dx = dy·g + a (+ b where x == maxv), all coefficients per (n, c):
// a = dL/dp · (avg weight) / HW, b = dL/dp · (max weight) / count of maxima.
template <typename T>
void backward_dx(const T* dy, const T* x, T* dx, const acc_t<T>* g, const acc_t<T>* a, const acc_t<T>* b,
                 const acc_t<T>* maxv, int64_t nb, int64_t C, int64_t HW, bool cl) {
  using A = acc_t<T>;
  const bool use_max = maxv != nullptr;
  if (!cl) {
    at::parallel_for(0, nb * C, grain_rows(HW), [&](int64_t r0, int64_t r1) {
      A bx[kBlock], bd[kBlock];
      for (int64_t r = r0; r < r1; ++r) {
        const A gr = g[r], ar = a[r];
        for (int64_t i = 0; i < HW; i += kBlock) {
          const int64_t n = std::min(kBlock, HW - i);
          load_block(dy + r * HW + i, bd, n);
          for (int64_t j = 0; j < n; ++j) bd[j] = bd[j] * gr + ar;
          if (use_max) {
            const A m = maxv[r], br = b[r];
            load_block(x + r * HW + i, bx, n);
            for (int64_t j = 0; j < n; ++j) bd[j] += bx[j] == m ? br : A(0);
          }
          store_block(bd, dx + r * HW + i, n);
        }
      }
    });
    return;
  }
  at::parallel_for(0, nb * HW, grain_rows(C), [&](int64_t r0, int64_t r1) {
    A bx[kBlock], bd[kBlock];
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t nC = (r / HW) * C;
      for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
        const int64_t w = std::min(kBlock, C - c0);
        const A* gn = g + nC + c0;
        const A* an = a + nC + c0;
        load_block(dy + r * C + c0, bd, w);
        for (int64_t j = 0; j < w; ++j) bd[j] = bd[j] * gn[j] + an[j];
        if (use_max) {
          const A* mn = maxv + nC + c0;
          const A* bn = b + nC + c0;
          load_block(x + r * C + c0, bx, w);
          for (int64_t j = 0; j < w; ++j) bd[j] += bx[j] == mn[j] ? bn[j] : A(0);
        }
        store_block(bd, dx + r * C + c0, w);
      }
    }
  });
}

#define FUSED_ATTN_INSTANTIATE(T)                                                                          \
  template void pool<T>(const T*, int64_t, int64_t, int64_t, bool, acc_t<T>*, acc_t<T>*);               \
  template void scale<T>(const T*, T*, const acc_t<T>*, int64_t, int64_t, int64_t, bool);               \
  template void backward_reduce<T>(const T*, const T*, const acc_t<T>*, int64_t, int64_t, int64_t, bool, \
                                   acc_t<T>*, acc_t<T>*);                                                \
  template void backward_dx<T>(const T*, const T*, T*, const acc_t<T>*, const acc_t<T>*, const acc_t<T>*, \
                               const acc_t<T>*, int64_t, int64_t, int64_t, bool);
FUSED_ATTN_INSTANTIATE(float)
FUSED_ATTN_INSTANTIATE(double)
FUSED_ATTN_INSTANTIATE(c10::Half)
FUSED_ATTN_INSTANTIATE(c10::BFloat16)
#undef FUSED_ATTN_INSTANTIATE
