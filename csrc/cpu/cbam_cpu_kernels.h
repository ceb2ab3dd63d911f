// CBAM's big-tensor passes on the CPU, for one sample's slice at a time.
//
// Compiled twice, like se_cpu_kernels.h (whose block helpers it uses): for
// the baseline ISA (cbam_kernel.cpp) and with AVX2/FMA/F16C
// (cbam_kernel_avx2.cpp); cbam_kernel.cpp picks one at run time. Included
// inside `namespace fused_attn::cpu::<isa>` after se_cpu_kernels.h.
//
// Every loop runs over fixed-size blocks with one accumulator per lane, so it
// vectorizes without reassociating a reduction: each result's order depends
// on the shape alone. x1 = x·g is rounded to x's dtype (as the modules'
// multiply rounds it) in every pass that uses it, identically, so the ties
// the backward finds are the forward's.
//
// Layout of one sample: NCHW rows are the H·W pixels of a channel;
// channels_last rows are the C channels of a pixel.

// Vector arguments of inlined helpers change no real ABI.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

// Rounds n values to T and back (x1 as the module stores it): a no-op for
// float and double.
template <typename T, typename A>
inline void round_as(A* v, int64_t n) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    // c10::BFloat16's rule: nearest, ties to even; NaN to the quiet NaN.
    uint32_t b[kBlock];
    std::memcpy(b, v, n * sizeof(float));
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t r = (b[j] + 0x7FFFu + ((b[j] >> 16) & 1u)) & 0xFFFF0000u;
      b[j] = (b[j] & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC00000u : r;
    }
    std::memcpy(v, b, n * sizeof(float));
  } else if constexpr (std::is_same_v<T, c10::Half>) {
    T tmp[kBlock];
    store_block(v, tmp, n);
    load_block(tmp, v, n);
  }
}

// t[0, n) = x1 of the block v (x values) with gates g (per element) or gs (one).
template <typename T, typename A>
inline void x1_block(const A* v, const A* g, A* t, int64_t n) {
  for (int64_t j = 0; j < n; ++j) t[j] = v[j] * g[j];
  round_as<T>(t, n);
}
template <typename T, typename A>
inline void x1_block(const A* v, A gs, A* t, int64_t n) {
  for (int64_t j = 0; j < n; ++j) t[j] = v[j] * gs;
  round_as<T>(t, n);
}

// ---- vectors ------------------------------------------------------------------
// GCC's vector extensions, 32 bytes (8 floats, 4 doubles) in both builds (the
// baseline build splits each into two SSE registers), so lane counts, and
// with them every reduction order, are the same in both. GCC's
// auto-vectorizer leaves the NaN-propagating max and the tie counts below
// scalar; written on vectors they compile to compares and blends.
template <typename A> struct VecOf { typedef A type __attribute__((vector_size(32))); };
template <typename A> using Vec = typename VecOf<A>::type;
template <typename A> constexpr int64_t kW = 32 / sizeof(A);
// Lane indices for __builtin_shuffle: integers of A's width.
template <typename A> struct MaskOf { typedef int64_t type __attribute__((vector_size(32))); };
template <> struct MaskOf<float> { typedef int32_t type __attribute__((vector_size(32))); };
template <typename A> using MaskVec = typename MaskOf<A>::type;

template <typename A> inline __attribute__((always_inline)) Vec<A> vload(const A* p) {
  Vec<A> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename A> inline __attribute__((always_inline)) void vstore(A* p, Vec<A> v) { std::memcpy(p, &v, sizeof v); }
template <typename A> inline __attribute__((always_inline)) Vec<A> vsplat(A a) { return Vec<A>{} + a; }
// max propagating NaN (torch.amax's rule), lane by lane.
template <typename V> inline __attribute__((always_inline)) V vmax_nan(V m, V v) {
  return ((v > m) | (v != v)) ? v : m;
}
// The scalar one, without branches (`|`, not `||`: both sides are cheap).
template <typename A> inline __attribute__((always_inline)) A smax_nan(A m, A v) {
  const bool take = (v > m) | (v != v);
  return take ? v : m;
}
// 1 where a == b, else 0, lane by lane.
template <typename V> inline __attribute__((always_inline)) V veq01(V a, V b) {
  return (a == b) ? (V{} + 1) : V{};
}

// Runs vec(j) over the full vectors of a block of n elements and one(j) over
// the rest.
template <typename A, typename VecBody, typename OneBody>
inline __attribute__((always_inline)) void over_block(int64_t n, VecBody&& vec, OneBody&& one) {
  int64_t j = 0;
  for (; j + kW<A> <= n; j += kW<A>) vec(j);
  for (; j < n; ++j) one(j);
}

// Two reductions over a row [0, len): the first term summed, the second
// summed or (kMax) maxed, in 2·kW lanes (two vectors, alternating) plus a
// scalar tail, folded in a fixed order. vec(i, t0, t1) gives the terms of
// elements i .. i + kW as vectors, one(i, t0, t1) of element i alone; both
// see the row in blocks of kBlock (i relative to the block in `block`, which
// starts the block: see each_block).
template <bool kMax, typename A>
struct Reduce2 {
  Vec<A> a[2], b[2];
  A ta = A(0), tb = kMax ? -std::numeric_limits<A>::infinity() : A(0);
  int64_t k = 0;  // vectors folded so far
  Reduce2() {
    a[0] = a[1] = Vec<A>{};
    b[0] = b[1] = vsplat(tb);
  }
  inline __attribute__((always_inline)) void add(Vec<A> t0, Vec<A> t1) {
    const int64_t u = k++ & 1;
    a[u] += t0;
    b[u] = kMax ? vmax_nan(b[u], t1) : b[u] + t1;
  }
  inline __attribute__((always_inline)) void add_scalar(A t0, A t1) {
    ta += t0;
    tb = kMax ? smax_nan(tb, t1) : tb + t1;
  }
  // Folds n values as both terms (their sum, and their sum or max).
  inline __attribute__((always_inline)) void add_both(const A* v, int64_t n) {
    over_block<A>(n, [&](int64_t j) { const Vec<A> u = vload(v + j); add(u, u); },
                  [&](int64_t j) { add_scalar(v[j], v[j]); });
  }
  inline __attribute__((always_inline)) void result(A& r0, A& r1) const {
    // Pairwise over the lanes (lane j takes lane j + w, w = kW/2 .. 1), by
    // shuffles: the same order as a scalar tree, without its stores.
    Vec<A> va = a[0] + a[1];
    Vec<A> vb = kMax ? vmax_nan(b[0], b[1]) : b[0] + b[1];
    fold<kW<A> / 2>(va, vb);
    r0 = va[0] + ta;
    r1 = kMax ? smax_nan(vb[0], tb) : vb[0] + tb;
  }
  template <int64_t w>
  static inline __attribute__((always_inline)) void fold(Vec<A>& va, Vec<A>& vb) {
    if constexpr (w > 0) {
      MaskVec<A> m;
      for (int64_t j = 0; j < kW<A>; ++j) m[j] = (j + w) % kW<A>;
      va += __builtin_shuffle(va, m);
      const Vec<A> hi = __builtin_shuffle(vb, m);
      vb = kMax ? vmax_nan(vb, hi) : vb + hi;
      fold<w / 2>(va, vb);
    }
  }
};

// Calls body(v, i, n) for the blocks of a row: v = elements i .. i + n in acc_t.
template <typename T, typename Body>
inline void each_block(const T* row, int64_t len, Body&& body) {
  int64_t i = 0;
  for_blocks<kBlock>(row, len, [&](const acc_t<T>* v, auto n) {
    const int64_t m = n;
    if (m > kBlock) __builtin_unreachable();  // tells GCC the block loops' bound
    body(v, i, m);
    i += m;
  });
}
template <typename T, typename Body>
inline void each_block2(const T* row_a, const T* row_b, int64_t len, Body&& body) {
  int64_t i = 0;
  for_blocks2<kBlock>(row_a, row_b, len, [&](const acc_t<T>* va, const acc_t<T>* vb, auto n) {
    const int64_t m = n;
    if (m > kBlock) __builtin_unreachable();
    body(va, vb, i, m);
    i += m;
  });
}

// sum[j] += v[j], mx[j] = max(mx[j], v[j]) (NaN-propagating) for j < n.
template <typename A>
inline void add_max_into(const A* v, int64_t n, A* sum, A* mx) {
  constexpr int64_t W = kW<A>;
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const Vec<A> t = vload(v + j);
    vstore(sum + j, vload(sum + j) + t);
    vstore(mx + j, vmax_nan(vload(mx + j), t));
  }
  for (; j < n; ++j) {
    sum[j] += v[j];
    mx[j] = max_nan(mx[j], v[j]);
  }
}

// sum[j] += a[j]·b[j], cnt[j] += (b[j] == ref[j]) for j < n.
template <typename A>
inline void add_prod_count_into(const A* a, const A* b, const A* ref, int64_t n, A* sum, A* cnt) {
  constexpr int64_t W = kW<A>;
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const Vec<A> u = vload(b + j);
    vstore(sum + j, vload(sum + j) + vload(a + j) * u);
    vstore(cnt + j, vload(cnt + j) + veq01(u, vload(ref + j)));
  }
  for (; j < n; ++j) {
    sum[j] += a[j] * b[j];
    cnt[j] += b[j] == ref[j] ? A(1) : A(0);
  }
}

// ---- forward ------------------------------------------------------------------

// mean [C], mx [C]: the spatial mean and max of each channel of x.
template <typename T>
void cbam_spatial_pool(const T* x, int64_t C, int64_t HW, bool cl, acc_t<T>* mean, acc_t<T>* mx) {
  using A = acc_t<T>;
  const A inv = A(1) / static_cast<A>(HW);
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) {
      Reduce2<true, A> r;
      each_block(x + c * HW, HW, [&](const A* v, int64_t, int64_t n) { r.add_both(v, n); });
      A sum, m;
      r.result(sum, m);
      mean[c] = sum * inv;
      mx[c] = m;
    }
    return;
  }
  std::fill(mean, mean + C, A(0));
  std::fill(mx, mx + C, -std::numeric_limits<A>::infinity());
  for (int64_t p = 0; p < HW; ++p) {
    each_block(x + p * C, C, [&](const A* v, int64_t c0, int64_t n) { add_max_into(v, n, mean + c0, mx + c0); });
  }
  for (int64_t c = 0; c < C; ++c) mean[c] *= inv;
}

// cmean [HW], cmax [HW]: the channel mean and max of x1 = x·g at each pixel.
template <typename T>
void cbam_channel_pool(const T* x, const acc_t<T>* g, int64_t C, int64_t HW, bool cl, acc_t<T>* cmean,
                       acc_t<T>* cmax) {
  using A = acc_t<T>;
  const A inv = A(1) / static_cast<A>(C);
  A t[kBlock];
  if (!cl) {
    std::fill(cmean, cmean + HW, A(0));
    std::fill(cmax, cmax + HW, -std::numeric_limits<A>::infinity());
    for (int64_t c = 0; c < C; ++c) {
      const A gc = g[c];
      each_block(x + c * HW, HW, [&](const A* v, int64_t p0, int64_t n) {
        x1_block<T>(v, gc, t, n);
        add_max_into(t, n, cmean + p0, cmax + p0);
      });
    }
    for (int64_t p = 0; p < HW; ++p) cmean[p] *= inv;
    return;
  }
  for (int64_t p = 0; p < HW; ++p) {
    Reduce2<true, A> r;
    each_block(x + p * C, C, [&](const A* v, int64_t c0, int64_t n) {
      x1_block<T>(v, g + c0, t, n);
      r.add_both(t, n);
    });
    A sum, m;
    r.result(sum, m);
    cmean[p] = sum * inv;
    cmax[p] = m;
  }
}

// y = x1·s (s [HW], the spatial gate); nt: streaming stores.
template <typename T>
void cbam_rescale(const T* x, const acc_t<T>* g, const acc_t<T>* s, int64_t C, int64_t HW, bool cl, bool nt,
                  T* y) {
  using A = acc_t<T>;
  A t[kBlock], obuf[kBlock];
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) {
      const A gc = g[c];
      each_block(x + c * HW, HW, [&](const A* v, int64_t p0, int64_t n) {
        x1_block<T>(v, gc, t, n);
        write_block(y + c * HW + p0, n, nt, obuf, [&](A* o) {
          for (int64_t j = 0; j < n; ++j) o[j] = t[j] * s[p0 + j];
        });
      });
    }
  } else {
    for (int64_t p = 0; p < HW; ++p) {
      const A sp = s[p];
      each_block(x + p * C, C, [&](const A* v, int64_t c0, int64_t n) {
        x1_block<T>(v, g + c0, t, n);
        write_block(y + p * C + c0, n, nt, obuf, [&](A* o) {
          for (int64_t j = 0; j < n; ++j) o[j] = t[j] * sp;
        });
      });
    }
  }
  stream_fence();
}

// ---- backward -----------------------------------------------------------------

// ds [HW] = Σ_c dy·x1 and cc [HW] = #{c : x1 == cmax} at each pixel.
template <typename T>
void cbam_spatial_grad(const T* dy, const T* x, const acc_t<T>* g, const acc_t<T>* cmax, int64_t C, int64_t HW,
                       bool cl, acc_t<T>* ds, acc_t<T>* cc) {
  using A = acc_t<T>;
  A t[kBlock];
  if (!cl) {
    std::fill(ds, ds + HW, A(0));
    std::fill(cc, cc + HW, A(0));
    for (int64_t c = 0; c < C; ++c) {
      const A gc = g[c];
      each_block2(dy + c * HW, x + c * HW, HW, [&](const A* d, const A* v, int64_t p0, int64_t n) {
        x1_block<T>(v, gc, t, n);
        add_prod_count_into(d, t, cmax + p0, n, ds + p0, cc + p0);
      });
    }
    return;
  }
  for (int64_t p = 0; p < HW; ++p) {
    const A mp = cmax[p];
    const Vec<A> vm = vsplat(mp);
    Reduce2<false, A> r;
    each_block2(dy + p * C, x + p * C, C, [&](const A* d, const A* v, int64_t c0, int64_t n) {
      x1_block<T>(v, g + c0, t, n);
      over_block<A>(n, [&](int64_t j) { const Vec<A> u = vload(t + j); r.add(vload(d + j) * u, veq01(u, vm)); },
                    [&](int64_t j) { r.add_scalar(d[j] * t[j], t[j] == mp ? A(1) : A(0)); });
    });
    r.result(ds[p], cc[p]);
  }
}

// out = dx1 of a block of n elements (x1 values t, dy values d) at pixels
// p0 .. p0 + n (NCHW); out may alias t.
template <typename A>
inline void dx1_block(const SpatialGrad<A>& sg, const A* d, const A* t, int64_t p0, int64_t n, A* out) {
  constexpr int64_t W = kW<A>;
  const A* s = sg.s + p0;
  const A* dm = sg.dcmean + p0;
  const A* dmx = sg.dcmax + p0;
  const A* mx = sg.cmax + p0;
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const Vec<A> u = vload(t + j);
    vstore(out + j, vload(d + j) * vload(s + j) + vload(dm + j) + ((u == vload(mx + j)) ? vload(dmx + j) : Vec<A>{}));
  }
  for (; j < n; ++j) out[j] = d[j] * s[j] + dm[j] + (t[j] == mx[j] ? dmx[j] : A(0));
}
// The same for n channels of one pixel p (channels_last).
template <typename A>
inline void dx1_block_at(const SpatialGrad<A>& sg, const A* d, const A* t, int64_t p, int64_t n, A* out) {
  constexpr int64_t W = kW<A>;
  const A sp = sg.s[p], dm = sg.dcmean[p], dmx = sg.dcmax[p], mp = sg.cmax[p];
  const Vec<A> vs = vsplat(sp), vdm = vsplat(dm), vdmx = vsplat(dmx), vmp = vsplat(mp);
  int64_t j = 0;
  for (; j + W <= n; j += W) vstore(out + j, vload(d + j) * vs + vdm + ((vload(t + j) == vmp) ? vdmx : Vec<A>{}));
  for (; j < n; ++j) out[j] = d[j] * sp + dm + (t[j] == mp ? dmx : A(0));
}

// dg [C] = Σ_hw dx1·x and cnt [C] = #{hw : x == mx} for each channel.
template <typename T>
void cbam_channel_grad(const T* dy, const T* x, const acc_t<T>* g, const SpatialGrad<acc_t<T>>& sg,
                       const acc_t<T>* mx, int64_t C, int64_t HW, bool cl, acc_t<T>* dg, acc_t<T>* cnt) {
  using A = acc_t<T>;
  A t[kBlock];
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) {
      const A gc = g[c], mc = mx[c];
      const Vec<A> vm = vsplat(mc);
      Reduce2<false, A> r;
      each_block2(dy + c * HW, x + c * HW, HW, [&](const A* d, const A* v, int64_t p0, int64_t n) {
        x1_block<T>(v, gc, t, n);
        dx1_block(sg, d, t, p0, n, t);
        over_block<A>(n, [&](int64_t j) { const Vec<A> u = vload(v + j); r.add(vload(t + j) * u, veq01(u, vm)); },
                      [&](int64_t j) { r.add_scalar(t[j] * v[j], v[j] == mc ? A(1) : A(0)); });
      });
      r.result(dg[c], cnt[c]);
    }
    return;
  }
  std::fill(dg, dg + C, A(0));
  std::fill(cnt, cnt + C, A(0));
  for (int64_t p = 0; p < HW; ++p) {
    each_block2(dy + p * C, x + p * C, C, [&](const A* d, const A* v, int64_t c0, int64_t n) {
      x1_block<T>(v, g + c0, t, n);
      dx1_block_at(sg, d, t, p, n, t);
      add_prod_count_into(t, v, mx + c0, n, dg + c0, cnt + c0);
    });
  }
}

// dx = dx1·g + share (+ tie where x is its channel's spatial max mx), per
// channel share and tie; nt: streaming stores.
template <typename T>
void cbam_dx(const T* dy, const T* x, const acc_t<T>* g, const SpatialGrad<acc_t<T>>& sg, const acc_t<T>* mx,
             const acc_t<T>* share, const acc_t<T>* tie, int64_t C, int64_t HW, bool cl, bool nt, T* dx) {
  using A = acc_t<T>;
  constexpr int64_t W = kW<A>;
  A t[kBlock], obuf[kBlock];
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) {
      const A gc = g[c], sh = share[c], tc = tie[c], mc = mx[c];
      const Vec<A> vg = vsplat(gc), vsh = vsplat(sh), vtc = vsplat(tc), vm = vsplat(mc);
      each_block2(dy + c * HW, x + c * HW, HW, [&](const A* d, const A* v, int64_t p0, int64_t n) {
        x1_block<T>(v, gc, t, n);
        dx1_block(sg, d, t, p0, n, t);
        write_block(dx + c * HW + p0, n, nt, obuf, [&](A* o) {
          int64_t j = 0;
          for (; j + W <= n; j += W)
            vstore(o + j, vload(t + j) * vg + vsh + ((vload(v + j) == vm) ? vtc : Vec<A>{}));
          for (; j < n; ++j) o[j] = t[j] * gc + sh + (v[j] == mc ? tc : A(0));
        });
      });
    }
  } else {
    for (int64_t p = 0; p < HW; ++p) {
      each_block2(dy + p * C, x + p * C, C, [&](const A* d, const A* v, int64_t c0, int64_t n) {
        x1_block<T>(v, g + c0, t, n);
        dx1_block_at(sg, d, t, p, n, t);
        const A* gp = g + c0;
        const A* sp = share + c0;
        const A* tp = tie + c0;
        const A* mp = mx + c0;
        write_block(dx + p * C + c0, n, nt, obuf, [&](A* o) {
          int64_t j = 0;
          for (; j + W <= n; j += W)
            vstore(o + j, vload(t + j) * vload(gp + j) + vload(sp + j) +
                              ((vload(v + j) == vload(mp + j)) ? vload(tp + j) : Vec<A>{}));
          for (; j < n; ++j) o[j] = t[j] * gp[j] + sp[j] + (v[j] == mp[j] ? tp[j] : A(0));
        });
      });
    }
  }
  stream_fence();
}

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

#pragma GCC diagnostic pop
