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

// ---- access to one block (n <= kBlock elements) in acc_t -------------------
// load_block returns a pointer to the block's values in acc_t: the source
// itself when no conversion is needed, else `buf` filled with the converted
// values. out_block / store_block do the same for writing: compute into
// out_block(dst, buf), then store_block(that pointer, dst, n), which only
// converts (and is a no-op for float and double).

inline const float* load_block(const float* s, float*, int64_t) { return s; }
inline const double* load_block(const double* s, double*, int64_t) { return s; }
inline float* out_block(float* d, float*) { return d; }
inline double* out_block(double* d, double*) { return d; }
inline float* out_block(c10::BFloat16*, float* buf) { return buf; }
inline float* out_block(c10::Half*, float* buf) { return buf; }
inline void store_block(const float*, float*, int64_t) {}
inline void store_block(const double*, double*, int64_t) {}

inline void store_block(const float* s, c10::BFloat16* d, int64_t n);
inline void store_block(const float* s, c10::Half* d, int64_t n);

inline const float* load_block(const c10::BFloat16* s, float* d, int64_t n) {
  const uint16_t* u = reinterpret_cast<const uint16_t*>(s);
  uint32_t bits[kBlock];
  for (int64_t j = 0; j < n; ++j) bits[j] = static_cast<uint32_t>(u[j]) << 16;
  std::memcpy(d, bits, n * sizeof(float));
  return d;
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

inline const float* load_block(const c10::Half* s, float* d, int64_t n) {
  int64_t j = 0;
#ifdef FUSED_ATTN_F16C
  for (; j + 8 <= n; j += 8) {
    _mm256_storeu_ps(d + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j))));
  }
  for (; j < n; ++j) d[j] = _cvtsh_ss(s[j].x);
#else
  for (; j < n; ++j) d[j] = static_cast<float>(s[j]);
#endif
  return d;
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

// Non-temporal ("streaming") stores of one block: the output goes to memory
// without first being read into the cache (no read-for-ownership) and without
// evicting the input chunk that is about to be read again. Used for outputs
// too large to be cache-resident for the next layer anyway. Only the AVX2
// build streams; the baseline build stores normally.
inline void stream_bytes(void* dst, const void* src, int64_t bytes) {
#ifdef FUSED_ATTN_F16C
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  const int64_t head = std::min<int64_t>(bytes, (32 - reinterpret_cast<uintptr_t>(d) % 32) % 32);
  std::memcpy(d, s, head);
  int64_t i = head;
  for (; i + 32 <= bytes; i += 32) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
  }
  std::memcpy(d + i, s + i, bytes - i);
#else
  std::memcpy(dst, src, bytes);
#endif
}

template <typename T, typename A>
inline void stream_block(const A* s, T* d, int64_t n) {
  if constexpr (std::is_same_v<T, A>) {
    stream_bytes(d, s, n * sizeof(T));
  } else {
    T tmp[kBlock];
    store_block(s, tmp, n);
    stream_bytes(d, tmp, n * sizeof(T));
  }
}

// Orders this thread's streaming stores before whatever reads the output next.
inline void stream_fence() {
#ifdef FUSED_ATTN_F16C
  _mm_sfence();
#endif
}

// max that propagates NaN, as torch.amax does.
template <typename A> inline A max_nan(A m, A v) { return (v > m || v != v) ? v : m; }

// Fixed-order pairwise sum / max of L lanes.
template <int64_t L, typename A> inline A lanes_sum(A* a) {
  for (int64_t w = L / 2; w > 0; w /= 2)
    for (int64_t j = 0; j < w; ++j) a[j] += a[j + w];
  return a[0];
}
template <int64_t L, typename A> inline A lanes_max(A* a) {
  for (int64_t w = L / 2; w > 0; w /= 2)
    for (int64_t j = 0; j < w; ++j) a[j] = max_nan(a[j], a[j + w]);
  return a[0];
}

// Writes the block computed by `fill(o)` to dst, streaming it when `nt`.
template <typename T, typename A, typename Fill>
inline void write_block(T* dst, int64_t n, bool nt, A* buf, Fill&& fill) {
  if (nt) {
    fill(buf);
    stream_block(buf, dst, n);
  } else {
    A* o = out_block(dst, buf);
    fill(o);
    store_block(o, dst, n);
  }
}

// ---- units of work ----------------------------------------------------------
// A pass is made of "read units" (pooling, or Σ dy·x in the backward: they
// only read the big tensors) and "write units" (the rescale, or dx: they write
// one). Each unit's result depends on the shape alone, never on which thread
// runs it or what runs beside it.
//
// NCHW read unit: one row (n, c), reduced over H·W with L lanes (with_lanes).
// channels_last read unit: a segment of one sample's pixel rows, of a length
// fixed by C, summed into its own partial vector; the partials are added in
// segment order afterwards (finish_*).
inline int64_t cl_segment_rows(int64_t C) { return std::max<int64_t>(1, kTaskElems / std::max<int64_t>(C, 1)); }

// Calls body(values, n) for each block of a row of `len` elements, with
// `values` in acc_t. Full blocks pass n as a compile-time constant, so their
// loops compile to straight vector code; only the last, partial block loops
// over a run-time count.
template <int64_t L, typename T, typename Body>
inline void for_blocks(const T* row, int64_t len, Body&& body) {
  using A = acc_t<T>;
  A buf[kBlock];  // kBlock, not L: the converting loads fill up to kBlock
  int64_t i = 0;
  for (; i + L <= len; i += L) body(load_block(row + i, buf, L), std::integral_constant<int64_t, L>{});
  if (i < len) body(load_block(row + i, buf, len - i), len - i);
}

// The same over two rows read in step (dy and x).
template <int64_t L, typename T, typename Body>
inline void for_blocks2(const T* row_a, const T* row_b, int64_t len, Body&& body) {
  using A = acc_t<T>;
  A buf_a[kBlock], buf_b[kBlock];
  int64_t i = 0;
  for (; i + L <= len; i += L)
    body(load_block(row_a + i, buf_a, L), load_block(row_b + i, buf_b, L), std::integral_constant<int64_t, L>{});
  if (i < len) body(load_block(row_a + i, buf_a, len - i), load_block(row_b + i, buf_b, len - i), len - i);
}

// Full blocks accumulate in L lanes (kept in registers: their loops have a
// compile-time trip count); the partial last block goes to a scalar that is
// added after the lanes are folded. Both orders are fixed by the shape.
template <int64_t L, bool kMax, typename T>
inline void pool_row(const T* row, int64_t HW, acc_t<T>& sum, acc_t<T>& mx) {
  using A = acc_t<T>;
  constexpr A kLowest = -std::numeric_limits<A>::infinity();
  A s[L], m[L], buf[kBlock];
  std::fill(s, s + L, A(0));
  if (kMax) std::fill(m, m + L, kLowest);
  int64_t i = 0;
  for (; i + L <= HW; i += L) {
    const A* v = load_block(row + i, buf, L);
    for (int64_t j = 0; j < L; ++j) s[j] += v[j];
    if (kMax)
      for (int64_t j = 0; j < L; ++j) m[j] = max_nan(m[j], v[j]);
  }
  A tail_s = 0, tail_m = kLowest;
  if (i < HW) {
    const A* v = load_block(row + i, buf, HW - i);
    for (int64_t j = 0; j < HW - i; ++j) {
      tail_s += v[j];
      if (kMax) tail_m = max_nan(tail_m, v[j]);
    }
  }
  sum = lanes_sum<L>(s) + tail_s;
  mx = kMax ? max_nan(lanes_max<L>(m), tail_m) : A(0);
}

// Calls f(std::integral_constant<int64_t, L>) with the lane count for rows of
// length HW: 8 or 16 for short rows (less tree to fold per row), kBlock else.
template <typename F>
inline void with_lanes(int64_t HW, F&& f) {
  if (HW < 64) f(std::integral_constant<int64_t, 8>{});
  else if (HW < 256) f(std::integral_constant<int64_t, 16>{});
  else f(std::integral_constant<int64_t, kBlock>{});
}

template <int64_t L, bool kCnt, typename T>
inline void reduce_row(const T* dy, const T* x, int64_t HW, acc_t<T> m, acc_t<T>& s_out, acc_t<T>& k_out) {
  using A = acc_t<T>;
  A s[L], k[L], bd[kBlock], bx[kBlock];
  std::fill(s, s + L, A(0));
  if (kCnt) std::fill(k, k + L, A(0));
  int64_t i = 0;
  for (; i + L <= HW; i += L) {
    const A* vd = load_block(dy + i, bd, L);
    const A* vx = load_block(x + i, bx, L);
    for (int64_t j = 0; j < L; ++j) s[j] += vd[j] * vx[j];
    if (kCnt)
      for (int64_t j = 0; j < L; ++j) k[j] += vx[j] == m ? A(1) : A(0);
  }
  A tail_s = 0, tail_k = 0;
  if (i < HW) {
    const A* vd = load_block(dy + i, bd, HW - i);
    const A* vx = load_block(x + i, bx, HW - i);
    for (int64_t j = 0; j < HW - i; ++j) {
      tail_s += vd[j] * vx[j];
      if (kCnt) tail_k += vx[j] == m ? A(1) : A(0);
    }
  }
  s_out = lanes_sum<L>(s) + tail_s;
  k_out = kCnt ? lanes_sum<L>(k) + tail_k : A(0);
}

// Runs write units [0, nw) and read units [0, nr) in one parallel region,
// interleaved within each task in proportion to their sizes, so that the read
// stream (the next chunk) and the write stream (this chunk's output) are in
// flight together, as they are in a copy.
template <typename WriteUnit, typename ReadUnit>
void interleaved(int64_t nw, int64_t w_elems, WriteUnit&& write_unit, int64_t nr, int64_t r_elems,
                 ReadUnit&& read_unit) {
  const int64_t total = nw * w_elems + nr * r_elems;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(std::max(nw, nr), total / kTaskElems));
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      int64_t a = nw * p / parts, a1 = nw * (p + 1) / parts;
      int64_t b = nr * p / parts, b1 = nr * (p + 1) / parts;
      const int64_t a0 = a, b0 = b;
      while (a < a1 || b < b1) {
        if (b >= b1 || (a < a1 && (a - a0) * w_elems <= (b - b0) * r_elems)) {
          write_unit(a++);
        } else {
          read_unit(b++);
        }
      }
    }
    stream_fence();
  });
}

// ---- forward ------------------------------------------------------------------

template <typename T>
void forward_pass(const ScaleJob<T>& sj, const PoolJob<T>& pj, int64_t C, int64_t HW, bool cl, bool nt) {
  using A = acc_t<T>;
  const bool want_max = pj.maxv != nullptr;
  const A inv_hw = A(1) / A(HW);
  auto finish = [&](int64_t r, A sum, A mx) {
    const A mean = sum * inv_hw;
    if (want_max) {
      pj.maxv[r] = mx;
      pj.pooled[r] = A(0.5) * mean + A(0.5) * mx;
    } else {
      pj.pooled[r] = mean;
    }
  };
  if (!cl) {
    auto scale_row = [&](int64_t r) {
      const A gr = sj.g[r];
      A obuf[kBlock];
      int64_t i = 0;
      for_blocks<kBlock>(sj.x + r * HW, HW, [&](const A* v, auto n) {
        write_block(sj.y + r * HW + i, n, nt, obuf, [&](A* o) {
          for (int64_t j = 0; j < n; ++j) o[j] = v[j] * gr;
        });
        i += n;
      });
    };
    auto pool_unit = [&](int64_t r) {
      A sum, mx;
      with_lanes(HW, [&](auto lanes) {
        if (want_max) pool_row<lanes, true>(pj.x + r * HW, HW, sum, mx);
        else pool_row<lanes, false>(pj.x + r * HW, HW, sum, mx);
      });
      finish(r, sum, mx);
    };
    interleaved(sj.nb * C, HW, scale_row, pj.nb * C, HW, pool_unit);
    return;
  }
  const int64_t seg = cl_segment_rows(C);
  const int64_t nseg = (HW + seg - 1) / seg;
  std::vector<A> psum(pj.nb * nseg * C);
  std::vector<A> pmax(want_max ? pj.nb * nseg * C : 0);
  auto scale_row = [&](int64_t r) {  // pixel row r = n·HW + hw
    const A* gn = sj.g + (r / HW) * C;
    A obuf[kBlock];
    int64_t c0 = 0;
    for_blocks<kBlock>(sj.x + r * C, C, [&](const A* v, auto k) {
      write_block(sj.y + r * C + c0, k, nt, obuf, [&](A* o) {
        for (int64_t j = 0; j < k; ++j) o[j] = v[j] * gn[c0 + j];
      });
      c0 += k;
    });
  };
  auto pool_unit = [&](int64_t t) {  // segment t of sample t / nseg
    const int64_t n = t / nseg, hw0 = (t % nseg) * seg, hw1 = std::min(HW, hw0 + seg);
    A* s = psum.data() + t * C;
    A* m = want_max ? pmax.data() + t * C : nullptr;
    std::fill(s, s + C, A(0));
    if (want_max) std::fill(m, m + C, -std::numeric_limits<A>::infinity());
    for (int64_t hw = hw0; hw < hw1; ++hw) {
      int64_t c0 = 0;
      for_blocks<kBlock>(pj.x + (n * HW + hw) * C, C, [&](const A* v, auto k) {
        for (int64_t j = 0; j < k; ++j) s[c0 + j] += v[j];
        if (want_max)
          for (int64_t j = 0; j < k; ++j) m[c0 + j] = max_nan(m[c0 + j], v[j]);
        c0 += k;
      });
    }
  };
  interleaved(sj.nb * HW, C, scale_row, pj.nb * nseg, seg * C, pool_unit);
  if (pj.nb == 0) return;
  at::parallel_for(0, pj.nb * C, std::max<int64_t>(1, kTaskElems / nseg), [&](int64_t r0, int64_t r1) {
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

// ---- backward -----------------------------------------------------------------

// Write units: dx = dy·g + a (+ b where x == maxv), coefficients per (n, c):
// a = dL/dp · (avg weight) / HW, b = dL/dp · (max weight) / count of maxima.
// Read units: s = Σ_hw dy·x and cnt = #{x == maxv} per (n, c).
template <typename T>
void backward_pass(const DxJob<T>& dj, const ReduceJob<T>& rj, int64_t C, int64_t HW, bool cl, bool nt) {
  using A = acc_t<T>;
  const bool dx_max = dj.maxv != nullptr;
  const bool want_cnt = rj.maxv != nullptr;
  if (!cl) {
    auto dx_row = [&](int64_t r) {
      const A gr = dj.g[r], ar = dj.a[r];
      const A m = dx_max ? dj.maxv[r] : A(0), br = dx_max ? dj.b[r] : A(0);
      A obuf[kBlock];
      const int64_t off = r * HW;
      int64_t i = 0;
      auto body = [&](const A* vd, const A* vx, auto n) {
        write_block(dj.dx + off + i, n, nt, obuf, [&](A* o) {
          if (dx_max) {
            for (int64_t j = 0; j < n; ++j) o[j] = vd[j] * gr + ar + (vx[j] == m ? br : A(0));
          } else {
            for (int64_t j = 0; j < n; ++j) o[j] = vd[j] * gr + ar;
          }
        });
        i += n;
      };
      if (dx_max) for_blocks2<kBlock>(dj.dy + off, dj.x + off, HW, body);
      else for_blocks<kBlock>(dj.dy + off, HW, [&](const A* vd, auto n) { body(vd, vd, n); });
    };
    auto reduce_unit = [&](int64_t r) {
      A k = 0;
      with_lanes(HW, [&](auto lanes) {
        if (want_cnt) reduce_row<lanes, true>(rj.dy + r * HW, rj.x + r * HW, HW, rj.maxv[r], rj.s[r], k);
        else reduce_row<lanes, false>(rj.dy + r * HW, rj.x + r * HW, HW, A(0), rj.s[r], k);
      });
      if (want_cnt) rj.cnt[r] = k;
    };
    interleaved(dj.nb * C, HW, dx_row, rj.nb * C, 2 * HW, reduce_unit);
    return;
  }
  const int64_t seg = cl_segment_rows(C);
  const int64_t nseg = (HW + seg - 1) / seg;
  std::vector<A> ps(rj.nb * nseg * C);
  std::vector<A> pk(want_cnt ? rj.nb * nseg * C : 0);
  auto dx_row = [&](int64_t r) {
    const int64_t nC = (r / HW) * C;
    A obuf[kBlock];
    int64_t c0 = 0;
    auto body = [&](const A* vd, const A* vx, auto w) {
      const A* gn = dj.g + nC + c0;
      const A* an = dj.a + nC + c0;
      write_block(dj.dx + r * C + c0, w, nt, obuf, [&](A* o) {
        if (dx_max) {
          const A* mn = dj.maxv + nC + c0;
          const A* bn = dj.b + nC + c0;
          for (int64_t j = 0; j < w; ++j) o[j] = vd[j] * gn[j] + an[j] + (vx[j] == mn[j] ? bn[j] : A(0));
        } else {
          for (int64_t j = 0; j < w; ++j) o[j] = vd[j] * gn[j] + an[j];
        }
      });
      c0 += w;
    };
    if (dx_max) for_blocks2<kBlock>(dj.dy + r * C, dj.x + r * C, C, body);
    else for_blocks<kBlock>(dj.dy + r * C, C, [&](const A* vd, auto w) { body(vd, vd, w); });
  };
  auto reduce_unit = [&](int64_t t) {
    const int64_t n = t / nseg, hw0 = (t % nseg) * seg, hw1 = std::min(HW, hw0 + seg);
    A* s = ps.data() + t * C;
    A* k = want_cnt ? pk.data() + t * C : nullptr;
    const A* m = want_cnt ? rj.maxv + n * C : nullptr;
    std::fill(s, s + C, A(0));
    if (want_cnt) std::fill(k, k + C, A(0));
    for (int64_t hw = hw0; hw < hw1; ++hw) {
      const int64_t off = (n * HW + hw) * C;
      int64_t c0 = 0;
      for_blocks2<kBlock>(rj.dy + off, rj.x + off, C, [&](const A* vd, const A* vx, auto w) {
        for (int64_t j = 0; j < w; ++j) s[c0 + j] += vd[j] * vx[j];
        if (want_cnt)
          for (int64_t j = 0; j < w; ++j) k[c0 + j] += vx[j] == m[c0 + j] ? A(1) : A(0);
        c0 += w;
      });
    }
  };
  interleaved(dj.nb * HW, C, dx_row, rj.nb * nseg, 2 * seg * C, reduce_unit);
  if (rj.nb == 0) return;
  at::parallel_for(0, rj.nb * C, std::max<int64_t>(1, kTaskElems / nseg), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / C, c = r % C;
      A s = 0, k = 0;
      for (int64_t g = 0; g < nseg; ++g) {
        s += ps[(n * nseg + g) * C + c];
        if (want_cnt) k += pk[(n * nseg + g) * C + c];
      }
      rj.s[r] = s;
      if (want_cnt) rj.cnt[r] = k;
    }
  });
}

// A file that only wants the block helpers above (CBAM's passes) defines
// FUSED_ATTN_SE_HELPERS_ONLY, so the SE passes are instantiated once per ISA.
#ifndef FUSED_ATTN_SE_HELPERS_ONLY
#define FUSED_ATTN_INSTANTIATE(T)                                                                 \
  template void forward_pass<T>(const ScaleJob<T>&, const PoolJob<T>&, int64_t, int64_t, bool, bool); \
  template void backward_pass<T>(const DxJob<T>&, const ReduceJob<T>&, int64_t, int64_t, bool, bool);
FUSED_ATTN_INSTANTIATE(float)
FUSED_ATTN_INSTANTIATE(double)
FUSED_ATTN_INSTANTIATE(c10::Half)
FUSED_ATTN_INSTANTIATE(c10::BFloat16)
#undef FUSED_ATTN_INSTANTIATE
#endif  // FUSED_ATTN_SE_HELPERS_ONLY
