// CBAM's big-tensor passes on the CPU, for one sample's slice at a time.
//
// Compiled twice, like se_cpu_kernels.h (whose block helpers it uses): for
// the baseline ISA (cbam_kernel.cpp) and with AVX2/FMA/F16C
// (cbam_kernel_avx2.cpp); cbam_kernel.cpp picks one at run time. Included
// inside `namespace fused_attn::cpu::<isa>` after se_cpu_kernels.h.
//
// The loops work on whole vectors straight from the tensors (GCC vector
// extensions: 8 floats or 4 doubles, in both builds, so every reduction order
// is the same in both), converting low-precision types on the way in and
// out. Each reduction's order depends on the shape alone. x1 = x·g is rounded
// to x's dtype (as the modules' multiply rounds it) in every pass that uses
// it, identically, so the ties the backward finds are the forward's.
//
// Layout of one sample: NCHW rows are the H·W pixels of a channel;
// channels_last rows are the C channels of a pixel.

// The vector types and loads/stores (Vec, vload_t, vstore_t, ...) are
// se_cpu_kernels.h's.

// The max without NaN checks (one instruction: keeps m when v is NaN). The
// passes that use it take the sum of the same values beside it, which any
// NaN makes NaN, and take the max again with the checks only there.
template <typename V> inline __attribute__((always_inline)) V vmax_fast(V m, V v) { return (v > m) ? v : m; }

// ---- the reductions every pass uses -------------------------------------------

// Two reductions of n terms: the first summed, the second summed or (kMax)
// maxed, without NaN checks (the callers that max recheck where the sum is
// NaN). term(...) gives both terms of a vector of elements, one(...) of a
// single element.
template <bool kMax, typename V> inline __attribute__((always_inline)) V combine2(V a, V b) {
  if constexpr (kMax) return vmax_fast(a, b);
  else return a + b;
}
template <bool kMax, typename A> inline A combine2_one(A a, A b) {
  if constexpr (kMax) return b > a ? b : a;
  else return a + b;
}

// Over one row: term(j, u, v) for the vector at j, one(j, u, v) for element
// j; vectors alternate between two accumulator pairs (vector k into k mod 2),
// then the tail, the lanes folded pairwise: an order fixed by n.
template <bool kMax, typename A, typename Term, typename One>
inline void row_reduce2(int64_t n, Term&& term, One&& one, A& r0, A& r1) {
  constexpr int64_t W = kW<A>;
  const A init = kMax ? -std::numeric_limits<A>::infinity() : A(0);
  Vec<A> a0{}, a1{}, b0 = vsplat(init), b1 = b0;
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    Vec<A> u0, v0, u1, v1;
    term(j, u0, v0);
    term(j + W, u1, v1);
    a0 += u0;
    a1 += u1;
    b0 = combine2<kMax>(b0, v0);
    b1 = combine2<kMax>(b1, v1);
  }
  if (j + W <= n) {
    Vec<A> u0, v0;
    term(j, u0, v0);
    a0 += u0;
    b0 = combine2<kMax>(b0, v0);
    j += W;
  }
  A ta = A(0), tb = init;
  for (; j < n; ++j) {
    A u, v;
    one(j, u, v);
    ta += u;
    tb = combine2_one<kMax>(tb, v);
  }
  Vec<A> va = a0 + a1, vb = combine2<kMax>(b0, b1);
  fold_lanes<kMax, W / 2, A>(va, vb);
  r0 = va[0] + ta;
  r1 = combine2_one<kMax>(vb[0], tb);
}

// Over `rows` rows (row r at offset r·stride), per column j of n:
// first[j] += u and second[j] = combine(second[j], v), (u, v) =
// term(r, off, j, ...) for a vector and one(r, off, j, ...) for an element
// (off = r·stride + j), rows in order. The rows are swept kSweep at a time,
// so each column's running results are loaded and stored once per kSweep
// rows, not once per row. Both start as the caller sets them. Each column's
// terms are combined in row order whatever kSweep: the result does not
// depend on it.
template <int64_t kSweep, bool kMax, typename A, typename Term, typename One>
inline void sweep_rows_k(int64_t rows, int64_t n, int64_t stride, Term&& term, One&& one, A* first, A* second) {
  constexpr int64_t W = kW<A>;
  for (int64_t r0 = 0; r0 < rows; r0 += kSweep) {
    const int64_t r1 = std::min(rows, r0 + kSweep);
    int64_t j = 0;
    for (; j + 2 * W <= n; j += 2 * W) {
      Vec<A> s0 = vload(first + j), s1 = vload(first + j + W), c0 = vload(second + j), c1 = vload(second + j + W);
      for (int64_t r = r0; r < r1; ++r) {
        Vec<A> u0, v0, u1, v1;
        term(r, r * stride + j, j, u0, v0);
        term(r, r * stride + j + W, j + W, u1, v1);
        s0 += u0;
        s1 += u1;
        c0 = combine2<kMax>(c0, v0);
        c1 = combine2<kMax>(c1, v1);
      }
      vstore(first + j, s0);
      vstore(first + j + W, s1);
      vstore(second + j, c0);
      vstore(second + j + W, c1);
    }
    for (; j + W <= n; j += W) {
      Vec<A> s0 = vload(first + j), c0 = vload(second + j);
      for (int64_t r = r0; r < r1; ++r) {
        Vec<A> u0, v0;
        term(r, r * stride + j, j, u0, v0);
        s0 += u0;
        c0 = combine2<kMax>(c0, v0);
      }
      vstore(first + j, s0);
      vstore(second + j, c0);
    }
    for (; j < n; ++j) {
      A s0 = first[j], c0 = second[j];
      for (int64_t r = r0; r < r1; ++r) {
        A u, v;
        one(r, r * stride + j, j, u, v);
        s0 += u;
        c0 = combine2_one<kMax>(c0, v);
      }
      first[j] = s0;
      second[j] = c0;
    }
  }
}

// Whether a pass over rows row_bytes apart goes row by row (sweep_reduce2's
// row_by_row) rather than 8 rows at a time: for rows longer than 512 B and
// shorter than 8 KiB. Reading 8 such rows in step is 8 short interleaved
// streams per tensor, which the hardware prefetchers follow badly from DRAM;
// shorter rows make a band of at most 4 KiB (one stream), longer ones
// streams long enough to be followed. Cold (from DRAM), one thread, N = 8
// (bench/cpu_harness/cbam_passes.cpp; cpu_harness_ab_5887fc8.txt, AMD EPYC):
// channels_last 256×56×56 spatial pool 2.5-2.6 → 1.4 ms, channel grad
// 6.3-6.8 → 2.3-3.9 ms; NCHW 1024×14×14 spatial grad 1.45-1.76 → 0.55-0.57
// ms. From cache (the harness warm), 8 rows at a time stays faster for one
// tensor (the forward's channel pool of a cached chunk keeps it); for two
// (dy and x: 16 streams) row by row was faster there too.
inline bool by_row(int64_t row_bytes) { return row_bytes > 512 && row_bytes < 8192; }

// sweep_rows_k 8 rows at a time, or row by row (each row read front to
// back, the running results loaded and stored per row): the same results.
template <bool kMax, typename A, typename Term, typename One>
inline void sweep_reduce2(int64_t rows, int64_t n, int64_t stride, bool row_by_row, Term&& term, One&& one,
                          A* first, A* second) {
  if (row_by_row) sweep_rows_k<1, kMax>(rows, n, stride, term, one, first, second);
  else sweep_rows_k<8, kMax>(rows, n, stride, term, one, first, second);
}

// ---- forward ------------------------------------------------------------------

// v = x, or (kScale) x1 = x·g rounded to T: a vector at p, one element at p.
template <bool kScale, typename T>
inline __attribute__((always_inline)) Vec<acc_t<T>> pool_val(const T* p, Vec<acc_t<T>> g) {
  if constexpr (kScale) return vround_t<T>(vload_t(p) * g);
  else return vload_t(p);
}
template <bool kScale, typename T>
inline acc_t<T> pool_one(const T* p, acc_t<T> g) {
  if constexpr (kScale) return round_t<T>(static_cast<acc_t<T>>(*p) * g);
  else return static_cast<acc_t<T>>(*p);
}

// The sum and the max of a row of n values v(j) (x, or kScale: x1 with
// per-element gates g[j]). The max is NaN-checked only when the sum is NaN
// (a NaN among the values, or inf − inf).
template <bool kScale, typename T>
inline void row_sum_max(const T* x, const acc_t<T>* g, int64_t n, acc_t<T>& sum, acc_t<T>& mx) {
  using A = acc_t<T>;
  row_reduce2<true, A>(
      n,
      [&](int64_t j, Vec<A>& u, Vec<A>& v) __attribute__((always_inline)) {
        u = v = pool_val<kScale>(x + j, kScale ? vload(g + j) : Vec<A>{});
      },
      [&](int64_t j, A& u, A& v) { u = v = pool_one<kScale>(x + j, kScale ? g[j] : A(0)); }, sum, mx);
  if (sum != sum) {
    mx = -std::numeric_limits<A>::infinity();
    for (int64_t i = 0; i < n; ++i) mx = max_nan(mx, pool_one<kScale>(x + i, kScale ? g[i] : A(0)));
  }
}

// Per column j of `rows` rows of n values (row r at x + r·stride):
// sum[j] += v(r, j), mx[j] = max(mx[j], v(r, j)), v = x (kScale: x1 with
// the row's gate g[r]); columns whose sum is NaN get their max again with
// NaN checks.
template <bool kScale, typename T>
inline void sweep_sum_max(const T* x, int64_t rows, int64_t n, int64_t stride, bool row_by_row, const acc_t<T>* g,
                          acc_t<T>* sum, acc_t<T>* mx) {
  using A = acc_t<T>;
  sweep_reduce2<true, A>(
      rows, n, stride, row_by_row,
      [&](int64_t r, int64_t off, int64_t, Vec<A>& u, Vec<A>& v) __attribute__((always_inline)) {
        u = v = pool_val<kScale>(x + off, kScale ? vsplat(g[r]) : Vec<A>{});
      },
      [&](int64_t r, int64_t off, int64_t, A& u, A& v) { u = v = pool_one<kScale>(x + off, kScale ? g[r] : A(0)); },
      sum, mx);
  for (int64_t j = 0; j < n; ++j) {
    if (sum[j] != sum[j]) {
      A m0 = -std::numeric_limits<A>::infinity();
      for (int64_t r = 0; r < rows; ++r) m0 = max_nan(m0, pool_one<kScale>(x + r * stride + j, kScale ? g[r] : A(0)));
      mx[j] = m0;
    }
  }
}

// mean [C], mx [C]: the spatial mean and max of each channel of x.
template <typename T>
void cbam_spatial_pool(const T* x, int64_t C, int64_t HW, bool cl, acc_t<T>* mean, acc_t<T>* mx) {
  using A = acc_t<T>;
  const A inv = A(1) / static_cast<A>(HW);
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) {
      A sum;
      row_sum_max<false>(x + c * HW, static_cast<const A*>(nullptr), HW, sum, mx[c]);
      mean[c] = sum * inv;
    }
    return;
  }
  std::fill(mean, mean + C, A(0));
  std::fill(mx, mx + C, -std::numeric_limits<A>::infinity());
  // The forward's first read of x: from DRAM.
  sweep_sum_max<false>(x, HW, C, C, by_row(C * static_cast<int64_t>(sizeof(T))), static_cast<const A*>(nullptr),
                       mean, mx);
  for (int64_t c = 0; c < C; ++c) mean[c] *= inv;
}

// cmean [HW], cmax [HW]: the channel mean and max of x1 = x·g at each pixel.
template <typename T>
void cbam_channel_pool(const T* x, const acc_t<T>* g, int64_t C, int64_t HW, bool cl, acc_t<T>* cmean,
                       acc_t<T>* cmax) {
  using A = acc_t<T>;
  const A inv = A(1) / static_cast<A>(C);
  if (!cl) {
    std::fill(cmean, cmean + HW, A(0));
    std::fill(cmax, cmax + HW, -std::numeric_limits<A>::infinity());
    sweep_sum_max<true>(x, C, HW, HW, false, g, cmean, cmax);  // x cached (the chunk): 8 rows at a time
    for (int64_t p = 0; p < HW; ++p) cmean[p] *= inv;
    return;
  }
  for (int64_t p = 0; p < HW; ++p) {
    A sum;
    row_sum_max<true>(x + p * C, g, C, sum, cmax[p]);
    cmean[p] = sum * inv;
  }
}

// y[j] = x1·s of a row of n elements, x1 = x[j]·g (one gate, or kGateVec:
// g[j]) rounded to T, s one value (or kScaleVec: s[j]); kNt: streaming stores.
// Whole vectors over the row, the last one overlapping (over_row).
template <bool kGateVec, bool kScaleVec, bool kNt, typename T>
inline void rescale_row(const T* x, const acc_t<T>* g, const acc_t<T>* s, int64_t n, T* y) {
  using A = acc_t<T>;
  const Coef<kGateVec, A> cg(g);
  const Coef<kScaleVec, A> cs(s);
  over_row<kNt, kW<A>>(
      n,
      [&](int64_t j, auto nt) {
        vstore_t<decltype(nt)::value>(y + j, vround_t<T>(vload_t(x + j) * cg.at(j)) * cs.at(j));
      },
      [&](int64_t j) {
        const A t = round_t<T>(static_cast<A>(x[j]) * g[kGateVec ? j : 0]);
        store_t(y + j, t * s[kScaleVec ? j : 0]);
      });
}

// y = x1·s (s [HW], the spatial gate); nt: streaming stores.
template <typename T>
void cbam_rescale(const T* x, const acc_t<T>* g, const acc_t<T>* s, int64_t C, int64_t HW, bool cl, bool nt,
                  T* y) {
  auto rows = [&](auto nt_) {
    constexpr bool kNt = decltype(nt_)::value;
    if (!cl) {
      for (int64_t c = 0; c < C; ++c) rescale_row<false, true, kNt>(x + c * HW, g + c, s, HW, y + c * HW);
    } else {
      for (int64_t p = 0; p < HW; ++p) rescale_row<true, false, kNt>(x + p * C, g, s + p, C, y + p * C);
    }
  };
  if (nt) {
    rows(std::true_type{});
    stream_fence();
  } else {
    rows(std::false_type{});
  }
}

// ---- backward -----------------------------------------------------------------
// The same loops as the forward (row_reduce2, sweep_reduce2), with sums for
// both reductions. Ties are counted exactly (1 per equal element), so their
// order does not matter.

// dx1 at a vector of pixels p .. p + kW (NCHW: every term per pixel), for x1
// values t and dy values d.
template <typename A>
inline __attribute__((always_inline)) Vec<A> dx1_vec(const SpatialGrad<A>& sg, int64_t p, Vec<A> d, Vec<A> t) {
  return d * vload(sg.s + p) + vload(sg.dcmean + p) +
         ((t == vload(sg.cmax + p)) ? vload(sg.dcmax + p) : Vec<A>{});
}
template <typename A>
inline A dx1_one(const SpatialGrad<A>& sg, int64_t p, A d, A t) {
  return d * sg.s[p] + sg.dcmean[p] + (t == sg.cmax[p] ? sg.dcmax[p] : A(0));
}

// The terms of one pixel p splat (channels_last: one value each for its C
// channels), for dx1 of a vector of those channels; dx1_one for one.
template <typename A>
struct PixelGrad {
  Vec<A> s, dm, dmx, mp;
  PixelGrad(const SpatialGrad<A>& sg, int64_t p)
      : s(vsplat(sg.s[p])), dm(vsplat(sg.dcmean[p])), dmx(vsplat(sg.dcmax[p])), mp(vsplat(sg.cmax[p])) {}
  inline __attribute__((always_inline)) Vec<A> dx1(Vec<A> d, Vec<A> t) const {
    return d * s + dm + ((t == mp) ? dmx : Vec<A>{});
  }
};

// ds [HW] = Σ_c dy·x1 and cc [HW] = #{c : x1 == cmax} at each pixel.
template <typename T>
void cbam_spatial_grad(const T* dy, const T* x, const acc_t<T>* g, const acc_t<T>* cmax, int64_t C, int64_t HW,
                       bool cl, acc_t<T>* ds, acc_t<T>* cc) {
  using A = acc_t<T>;
  if (!cl) {
    std::fill(ds, ds + HW, A(0));
    std::fill(cc, cc + HW, A(0));
    sweep_reduce2<false, A>(
        C, HW, HW, by_row(HW * static_cast<int64_t>(sizeof(T))),
        [&](int64_t c, int64_t off, int64_t p, Vec<A>& u, Vec<A>& v) __attribute__((always_inline)) {
          const Vec<A> t = vround_t<T>(vload_t(x + off) * vsplat(g[c]));
          u = vload_t(dy + off) * t;
          v = veq01(t, vload(cmax + p));
        },
        [&](int64_t c, int64_t off, int64_t p, A& u, A& v) {
          const A t = round_t<T>(static_cast<A>(x[off]) * g[c]);
          u = static_cast<A>(dy[off]) * t;
          v = t == cmax[p] ? A(1) : A(0);
        },
        ds, cc);
    return;
  }
  for (int64_t p = 0; p < HW; ++p) {
    const T* xp = x + p * C;
    const T* dp = dy + p * C;
    const A mp = cmax[p];
    const Vec<A> vm = vsplat(mp);
    row_reduce2<false, A>(
        C,
        [&](int64_t c, Vec<A>& u, Vec<A>& v) __attribute__((always_inline)) {
          const Vec<A> t = vround_t<T>(vload_t(xp + c) * vload(g + c));
          u = vload_t(dp + c) * t;
          v = veq01(t, vm);
        },
        [&](int64_t c, A& u, A& v) {
          const A t = round_t<T>(static_cast<A>(xp[c]) * g[c]);
          u = static_cast<A>(dp[c]) * t;
          v = t == mp ? A(1) : A(0);
        },
        ds[p], cc[p]);
  }
}

// dg [C] = Σ_hw dx1·x and cnt [C] = #{hw : x == mx} for each channel.
template <typename T>
void cbam_channel_grad(const T* dy, const T* x, const acc_t<T>* g, const SpatialGrad<acc_t<T>>& sg,
                       const acc_t<T>* mx, int64_t C, int64_t HW, bool cl, acc_t<T>* dg, acc_t<T>* cnt) {
  using A = acc_t<T>;
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) {
      const T* xr = x + c * HW;
      const T* dr = dy + c * HW;
      const A gc = g[c], mc = mx[c];
      const Vec<A> vg = vsplat(gc), vm = vsplat(mc);
      row_reduce2<false, A>(
          HW,
          [&](int64_t p, Vec<A>& u, Vec<A>& v) __attribute__((always_inline)) {
            const Vec<A> xv = vload_t(xr + p);
            u = dx1_vec(sg, p, vload_t(dr + p), vround_t<T>(xv * vg)) * xv;
            v = veq01(xv, vm);
          },
          [&](int64_t p, A& u, A& v) {
            const A xv = static_cast<A>(xr[p]);
            u = dx1_one(sg, p, static_cast<A>(dr[p]), round_t<T>(xv * gc)) * xv;
            v = xv == mc ? A(1) : A(0);
          },
          dg[c], cnt[c]);
    }
    return;
  }
  std::fill(dg, dg + C, A(0));
  std::fill(cnt, cnt + C, A(0));
  // Rows are pixels: each one's terms are splat per row and column block.
  sweep_reduce2<false, A>(
      HW, C, C, by_row(C * static_cast<int64_t>(sizeof(T))),
      [&](int64_t p, int64_t off, int64_t c, Vec<A>& u, Vec<A>& v) __attribute__((always_inline)) {
        const Vec<A> xv = vload_t(x + off);
        u = PixelGrad<A>(sg, p).dx1(vload_t(dy + off), vround_t<T>(xv * vload(g + c))) * xv;
        v = veq01(xv, vload(mx + c));
      },
      [&](int64_t p, int64_t off, int64_t c, A& u, A& v) {
        const A xv = static_cast<A>(x[off]);
        u = dx1_one(sg, p, static_cast<A>(dy[off]), round_t<T>(xv * g[c])) * xv;
        v = xv == mx[c] ? A(1) : A(0);
      },
      dg, cnt);
}

// dx = dx1·g + share (+ tie where x is its channel's spatial max mx), per
// channel share and tie; nt: streaming stores. Whole vectors over each row,
// the last one overlapping (over_row).
template <typename T>
void cbam_dx(const T* dy, const T* x, const acc_t<T>* g, const SpatialGrad<acc_t<T>>& sg, const acc_t<T>* mx,
             const acc_t<T>* share, const acc_t<T>* tie, int64_t C, int64_t HW, bool cl, bool nt, T* dx) {
  using A = acc_t<T>;
  constexpr int64_t W = kW<A>;
  auto rows = [&](auto nt_) {
    constexpr bool kNt = decltype(nt_)::value;
    if (!cl) {
      for (int64_t c = 0; c < C; ++c) {
        const T* xr = x + c * HW;
        const T* dr = dy + c * HW;
        T* out = dx + c * HW;
        const A gc = g[c], sh = share[c], tc = tie[c], mc = mx[c];
        const Vec<A> vg = vsplat(gc), vsh = vsplat(sh), vtc = vsplat(tc), vm = vsplat(mc);
        over_row<kNt, W>(
            HW,
            [&](int64_t p, auto nt) {
              const Vec<A> xv = vload_t(xr + p);
              const Vec<A> d1 = dx1_vec(sg, p, vload_t(dr + p), vround_t<T>(xv * vg));
              vstore_t<decltype(nt)::value>(out + p, d1 * vg + vsh + ((xv == vm) ? vtc : Vec<A>{}));
            },
            [&](int64_t p) {
              const A xv = static_cast<A>(xr[p]);
              const A d1 = dx1_one(sg, p, static_cast<A>(dr[p]), round_t<T>(xv * gc));
              store_t(out + p, d1 * gc + sh + (xv == mc ? tc : A(0)));
            });
      }
    } else {
      for (int64_t p = 0; p < HW; ++p) {
        const T* xr = x + p * C;
        const T* dr = dy + p * C;
        T* out = dx + p * C;
        const PixelGrad<A> pg(sg, p);
        over_row<kNt, W>(
            C,
            [&](int64_t c, auto nt) {
              const Vec<A> xv = vload_t(xr + c), vg = vload(g + c);
              const Vec<A> d1 = pg.dx1(vload_t(dr + c), vround_t<T>(xv * vg));
              vstore_t<decltype(nt)::value>(
                  out + c, d1 * vg + vload(share + c) + ((xv == vload(mx + c)) ? vload(tie + c) : Vec<A>{}));
            },
            [&](int64_t c) {
              const A xv = static_cast<A>(xr[c]);
              const A d1 = dx1_one(sg, p, static_cast<A>(dr[c]), round_t<T>(xv * g[c]));
              store_t(out + c, d1 * g[c] + share[c] + (xv == mx[c] ? tie[c] : A(0)));
            });
      }
    }
  };
  if (nt) {
    rows(std::true_type{});
    stream_fence();
  } else {
    rows(std::false_type{});
  }
}

// ---- the MLP's small matrix products --------------------------------------------

// out[n·ldo + m] = Σ_k a[m·K + k]·b[n·K + k] (+ bias_scale·bias[m] when bias
// is given) for rows m of a in [m0, m1) and the nb rows n of b: dot products
// of contiguous rows, in kW lanes (the last K % kW terms zero-padded to a
// whole vector), then the lanes folded: an order fixed by K, whatever the
// weights' type (float, or 16-bit widened as it loads). The MLP's matrices are a few rows of pooled vectors
// against weight matrices of up to 2048×128: MKL's GEMM takes 2-5x the time
// of these loops at 2-8 rows (measured on the 2-core EPYC VM:
// [2048×128]·[128×2] in 250 µs).
//
// kM = 3 rows of a against kN = 4 rows of b at a time: twelve independent
// accumulators, 7 loads per 12 FMAs, 16 vector registers in all (AVX2 has
// 16). One row of a against four (four FMA chains) left the FMA units
// waiting on their latency, and 2×4 (8 chains, 6 loads per 8 FMAs) was still
// bound by its loads: fc1 at 2048×128, 16 rows, one thread: 1×4 200-201 µs,
// 2×4 147-161 µs, 3×4 97-113 µs (bench/cpu_harness/rows_dot.cpp;
// cpu_harness_ab.txt, cpu_harness_ab_acaeacd.txt). Rows of a
// left over go two or one at a time. The blocking changes which loads are
// shared, not any element's sum: each element is accumulated, folded and
// finished the same way whatever block it falls in.
//
// kPf > 0: while it runs, prefetch the next block's kM rows of a (the
// weights: contiguous after this block's), kM·W elements per step, into L1
// (kPf = 3) or L2 (kPf = 2). In a network the weights come from DRAM at
// every call; the hardware prefetchers left fc2's short rows waiting on it.
// rows_dot harness, one thread, weights from DRAM, 2048×128: fc1 164-181 →
// 122-132 µs, fc2 185-192 → 129-130 µs (cpu_harness_ab_9dc29ba.txt). fc1's
// next block (24 KiB) goes to L2: it does not fit in L1 beside the current
// one.
template <int64_t kM, int64_t kN, typename A, int kPf = 0, typename Tw = A>
inline void dot_block(const Tw* a, const A* b, int64_t K, const A* bias, A bias_scale, A* out, int64_t ldo) {
  constexpr int64_t W = kW<A>;
  Vec<A> acc[kM][kN];
  for (int64_t i = 0; i < kM; ++i)
    for (int64_t j = 0; j < kN; ++j) acc[i][j] = Vec<A>{};
  int64_t k = 0;
  const char* pf = reinterpret_cast<const char*>(a + kM * K);
  for (; k + W <= K; k += W) {
    if constexpr (kPf > 0) {
      static_assert(kM * W * sizeof(Tw) <= 128, "two lines per step cover the next block");
      const char* p = pf + k * kM * static_cast<int64_t>(sizeof(Tw));
      __builtin_prefetch(p, 0, kPf);
      __builtin_prefetch(p + 64, 0, kPf);
    }
    Vec<A> av[kM];
    for (int64_t i = 0; i < kM; ++i) av[i] = vload_t(a + i * K + k);
    for (int64_t j = 0; j < kN; ++j) {
      const Vec<A> bv = vload(b + j * K + k);
      for (int64_t i = 0; i < kM; ++i) acc[i][j] += av[i] * bv;
    }
  }
  if (k < K) {
    // The last K - k (< W) terms as one more step, zero-padded: the same
    // vector arithmetic as the rest. (A scalar tail loop was compiled
    // differently per weight type: GCC vectorized float's products and
    // added them one by one, and fused bfloat16's into FMAs: one ulp apart.)
    Vec<A> av[kM];
    for (int64_t i = 0; i < kM; ++i) {
      Tw part[W] = {};
      for (int64_t t = k; t < K; ++t) part[t - k] = a[i * K + t];
      av[i] = vload_t(part);
    }
    for (int64_t j = 0; j < kN; ++j) {
      A part[W] = {};
      for (int64_t t = k; t < K; ++t) part[t - k] = b[j * K + t];
      const Vec<A> bv = vload(part);
      for (int64_t i = 0; i < kM; ++i) acc[i][j] += av[i] * bv;
    }
  }
  for (int64_t i = 0; i < kM; ++i) {
    const A bm = bias ? bias_scale * bias[i] : A(0);
    for (int64_t j = 0; j < kN; ++j) {
      Vec<A> va = acc[i][j], unused = acc[i][j];
      fold_lanes<false, W / 2, A>(va, unused);
      out[j * ldo + i] = va[0] + bm;
    }
  }
}

// kM rows of a (from row m) against all nb rows of b, four at a time; the
// first block of 4 prefetches the next kM rows of a (into L1 when they take
// at most 8 KiB, else L2). With fewer than 4 rows of b (batches of N ≤ 3:
// SE's products, CBAM's fc2) none does: prefetching variants of the tail
// blocks made the compiled loops slower. (The 3×4 block's 16 registers are
// AVX2's; the baseline build splits each vector in two SSE registers and
// spills: it is the fallback for CPUs without AVX2.)
template <int64_t kM, typename A, typename Tw>
inline void dot_rows(const Tw* a, const A* b, int64_t K, int64_t m, int64_t nb, const A* bias, A bias_scale,
                     A* out, int64_t ldo) {
  const Tw* am = a + m * K;
  const A* bias_m = bias ? bias + m : nullptr;
  A* om = out + m;
  int64_t n = 0;
  if (nb >= 4) {
    if (kM * K * static_cast<int64_t>(sizeof(Tw)) <= 8192) dot_block<kM, 4, A, 3>(am, b, K, bias_m, bias_scale, om, ldo);
    else dot_block<kM, 4, A, 2>(am, b, K, bias_m, bias_scale, om, ldo);
    n = 4;
  }
  for (; n + 4 <= nb; n += 4) dot_block<kM, 4>(am, b + n * K, K, bias_m, bias_scale, om + n * ldo, ldo);
  switch (nb - n) {
    case 3: dot_block<kM, 3>(am, b + n * K, K, bias_m, bias_scale, om + n * ldo, ldo); break;
    case 2: dot_block<kM, 2>(am, b + n * K, K, bias_m, bias_scale, om + n * ldo, ldo); break;
    case 1: dot_block<kM, 1>(am, b + n * K, K, bias_m, bias_scale, om + n * ldo, ldo); break;
    default: break;
  }
}

template <typename A, typename Tw>
void rows_dot(const Tw* a, const A* b, int64_t K, int64_t m0, int64_t m1, int64_t nb, const A* bias, A bias_scale,
              A* out, int64_t ldo) {
  int64_t m = m0;
  for (; m + 3 <= m1; m += 3) dot_rows<3>(a, b, K, m, nb, bias, bias_scale, out, ldo);
  for (; m + 2 <= m1; m += 2) dot_rows<2>(a, b, K, m, nb, bias, bias_scale, out, ldo);
  if (m < m1) dot_rows<1>(a, b, K, m, nb, bias, bias_scale, out, ldo);
}
#define FUSED_ATTN_INSTANTIATE_ROWS_DOT(A, Tw) \
  template void rows_dot<A, Tw>(const Tw*, const A*, int64_t, int64_t, int64_t, int64_t, const A*, A, A*, int64_t);
FUSED_ATTN_INSTANTIATE_ROWS_DOT(float, float)
FUSED_ATTN_INSTANTIATE_ROWS_DOT(double, double)
FUSED_ATTN_INSTANTIATE_ROWS_DOT(float, c10::BFloat16)
FUSED_ATTN_INSTANTIATE_ROWS_DOT(float, c10::Half)
#undef FUSED_ATTN_INSTANTIATE_ROWS_DOT

// Rows of a times B, as sums of B's rows scaled by a's elements: for kR rows
// of the output and two vectors of its columns at once, accumulators in
// registers, t ascending. Each output element is one accumulator over t in
// order whatever the blocking, so the columns left over, done one element at
// a time, and any split of the columns across threads give the same bits.
// The MLP backward's products (dL/da·W2, dL/dpre·W1: a few rows of pooled
// width) and the weight gradients (Σ_n outer products over a few samples),
// where MKL's GEMM is as slow as for the forward's (see rows_dot).
template <int64_t kR, typename A>
inline void times_block(const A* a, int64_t ar, int64_t at, const A* B, int64_t ldb, int64_t T, A* out,
                        int64_t ldo) {
  constexpr int64_t W = kW<A>;
  Vec<A> acc[kR][2];
  for (int64_t r = 0; r < kR; ++r) acc[r][0] = acc[r][1] = Vec<A>{};
  for (int64_t t = 0; t < T; ++t) {
    const Vec<A> b0 = vload(B + t * ldb), b1 = vload(B + t * ldb + W);
    for (int64_t r = 0; r < kR; ++r) {
      const A s = a[r * ar + t * at];
      acc[r][0] += s * b0;
      acc[r][1] += s * b1;
    }
  }
  for (int64_t r = 0; r < kR; ++r) {
    vstore(out + r * ldo, acc[r][0]);
    vstore(out + r * ldo + W, acc[r][1]);
  }
}

template <typename A>
void rows_times(const A* a, int64_t ar, int64_t at, const A* B, int64_t ldb, int64_t R, int64_t T, int64_t j0,
                int64_t j1, A* out, int64_t ldo) {
  constexpr int64_t JB = 2 * kW<A>;
  // Column panels of B small enough to stay in L1 (about 16 KiB) while every
  // block of rows passes over them; within a panel, rows outer, so each block
  // writes its output rows in runs of the panel's width (columns outer
  // scattered the writes over all R rows, 64 bytes each: a weight gradient
  // of 128 rows ran at half the speed of the same work in 16 rows).
  const int64_t panel = std::max<int64_t>(JB, (int64_t{4096} * 4 / static_cast<int64_t>(sizeof(A)) /
                                               std::max<int64_t>(T, 1)) / JB * JB);
  const int64_t jv = j0 + (j1 - j0) / JB * JB;  // the end of the whole blocks
  for (int64_t p0 = j0; p0 < jv; p0 += panel) {
    const int64_t p1 = std::min(jv, p0 + panel);
    auto blocks = [&](auto rows, int64_t r) {
      constexpr int64_t kR = decltype(rows)::value;
      for (int64_t j = p0; j < p1; j += JB) times_block<kR>(a + r * ar, ar, at, B + j, ldb, T, out + r * ldo + j, ldo);
    };
    // Six rows at a time (12 accumulators), the last 7 or 8 as 4 + 3 or
    // 4 + 4, not 6 + 1 or 6 + 2 (a block of 2 rows has 4 FMA chains: too
    // few to hide their latency over long sums).
    for (int64_t r = 0; r < R;) {
      const int64_t left = R - r;
      switch (left >= 9 || left == 6 ? 6 : left >= 7 ? 4 : left) {
        case 6: blocks(std::integral_constant<int64_t, 6>{}, r); r += 6; break;
        case 5: blocks(std::integral_constant<int64_t, 5>{}, r); r += 5; break;
        case 4: blocks(std::integral_constant<int64_t, 4>{}, r); r += 4; break;
        case 3: blocks(std::integral_constant<int64_t, 3>{}, r); r += 3; break;
        case 2: blocks(std::integral_constant<int64_t, 2>{}, r); r += 2; break;
        default: blocks(std::integral_constant<int64_t, 1>{}, r); r += 1; break;
      }
    }
  }
  for (int64_t j = jv; j < j1; ++j) {
    for (int64_t r = 0; r < R; ++r) {
      A acc = A(0);
      for (int64_t t = 0; t < T; ++t) acc += a[r * ar + t * at] * B[t * ldb + j];
      out[r * ldo + j] = acc;
    }
  }
}
template void rows_times<float>(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, int64_t,
                                int64_t, float*, int64_t);
template void rows_times<double>(const double*, int64_t, int64_t, const double*, int64_t, int64_t, int64_t,
                                 int64_t, int64_t, double*, int64_t);

#define FUSED_ATTN_INSTANTIATE_CBAM(T)                                                                         \
  template void cbam_spatial_pool<T>(const T*, int64_t, int64_t, bool, acc_t<T>*, acc_t<T>*);                 \
  template void cbam_channel_pool<T>(const T*, const acc_t<T>*, int64_t, int64_t, bool, acc_t<T>*, acc_t<T>*); \
  template void cbam_rescale<T>(const T*, const acc_t<T>*, const acc_t<T>*, int64_t, int64_t, bool, bool, T*); \
  template void cbam_spatial_grad<T>(const T*, const T*, const acc_t<T>*, const acc_t<T>*, int64_t, int64_t,   \
                                     bool, acc_t<T>*, acc_t<T>*);                                              \
  template void cbam_channel_grad<T>(const T*, const T*, const acc_t<T>*, const SpatialGrad<acc_t<T>>&,        \
                                     const acc_t<T>*, int64_t, int64_t, bool, acc_t<T>*, acc_t<T>*);           \
  template void cbam_dx<T>(const T*, const T*, const acc_t<T>*, const SpatialGrad<acc_t<T>>&, const acc_t<T>*, \
                           const acc_t<T>*, const acc_t<T>*, int64_t, int64_t, bool, bool, T*);
FUSED_ATTN_INSTANTIATE_CBAM(float)
FUSED_ATTN_INSTANTIATE_CBAM(double)
FUSED_ATTN_INSTANTIATE_CBAM(c10::Half)
FUSED_ATTN_INSTANTIATE_CBAM(c10::BFloat16)
#undef FUSED_ATTN_INSTANTIATE_CBAM
