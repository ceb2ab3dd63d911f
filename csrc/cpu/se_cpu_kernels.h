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
// threads: every reduction order is fixed by the shape alone. NCHW rows are
// reduced on explicit 32-byte vectors (GCC vector extensions, the same lanes
// in both builds), short rows several at a time (pool_rows_vec /
// reduce_rows_vec). (The AVX2 build
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
// values. store_block converts n values of acc_t to a reduced-precision T.

inline const float* load_block(const float* s, float*, int64_t) { return s; }
inline const double* load_block(const double* s, double*, int64_t) { return s; }

inline void store_block(const float* s, c10::BFloat16* d, int64_t n);
inline void store_block(const float* s, c10::Half* d, int64_t n);

inline const float* load_block(const c10::BFloat16* s, float* d, int64_t n);  // after vload_t

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

// Orders this thread's streaming stores before whatever reads the output next.
inline void stream_fence() {
#ifdef FUSED_ATTN_F16C
  _mm_sfence();
#endif
}

// Vector arguments of inlined helpers change no real ABI. (Not popped at the
// end: GCC reports it for the instantiations at the end of the including
// file, and only the CPU kernel files include this one.)
#pragma GCC diagnostic ignored "-Wpsabi"

// ---- vectors ------------------------------------------------------------------
// GCC's vector extensions, 32 bytes (8 floats, 4 doubles) in both builds (the
// baseline build splits each into two SSE registers), so lane counts, and
// with them every reduction order, are the same in both.
template <typename A> struct VecOf { typedef A type __attribute__((vector_size(32))); };
template <typename A> using Vec = typename VecOf<A>::type;
template <typename A> constexpr int64_t kW = 32 / sizeof(A);
// v's lanes rotated down by w: lane j takes lane (j + w) mod kW. Clang has
// __builtin_shufflevector (constant lane indices) but not GCC's
// __builtin_shuffle (a vector of indices); GCC has both since 12, and there
// takes the same branch as Clang, so CI runs the code Clang compiles.
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define FUSED_ATTN_SHUFFLEVECTOR 1
#endif
#endif
template <int64_t w, typename A, size_t... J>
inline __attribute__((always_inline)) Vec<A> rotate_lanes(Vec<A> v, std::index_sequence<J...>) {
#ifdef FUSED_ATTN_SHUFFLEVECTOR
  return __builtin_shufflevector(v, v, ((J + w) % kW<A>)...);
#else
  typedef std::conditional_t<sizeof(A) == 4, int32_t, int64_t> I;
  typedef I Mask __attribute__((vector_size(32)));
  return __builtin_shuffle(v, Mask{static_cast<I>((J + w) % kW<A>)...});
#endif
}
template <int64_t w, typename A>
inline __attribute__((always_inline)) Vec<A> rotate_lanes(Vec<A> v) {
  return rotate_lanes<w, A>(v, std::make_index_sequence<kW<A>>{});
}

template <typename A> inline __attribute__((always_inline)) Vec<A> vload(const A* p) {
  Vec<A> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename A> inline __attribute__((always_inline)) void vstore(A* p, Vec<A> v) { std::memcpy(p, &v, sizeof v); }
// a in every lane, as one broadcast (-0 stays -0: `Vec<A>{} + a` would make
// it +0; a lane-by-lane loop compiles to stores and a reload, which cost the
// NCHW passes 30-45% where it sat in their loops).
template <typename A> inline __attribute__((always_inline)) Vec<A> vsplat(A a) {
  static_assert(kW<A> == 8 || kW<A> == 4, "32-byte vectors of float or double");
  if constexpr (kW<A> == 8) return Vec<A>{a, a, a, a, a, a, a, a};
  else return Vec<A>{a, a, a, a};
}
// max propagating NaN (torch.amax's rule), lane by lane.
template <typename V> inline __attribute__((always_inline)) V vmax_nan(V m, V v) {
  return ((v > m) | (v != v)) ? v : m;
}
// 1 where a == b, else 0, lane by lane.
template <typename V> inline __attribute__((always_inline)) V veq01(V a, V b) {
  return (a == b) ? (V{} + 1) : V{};
}

// ---- whole vectors of T, in acc_t ---------------------------------------------
// vload_t converts kW<A> elements of T on the way in, vstore_t on the way
// out, vround_t rounds to T and back (x1 as the module stores it).
typedef uint32_t U32x8 __attribute__((vector_size(32)));  // a float vector's bits
typedef uint16_t U16x8 __attribute__((vector_size(16)));  // eight bfloat16's bits
// The same bits as another type of the same size (std::bit_cast, C++17).
template <typename To, typename From>
inline __attribute__((always_inline)) To bits_as(const From& f) {
  static_assert(sizeof(To) == sizeof(From));
  To t;
  std::memcpy(&t, &f, sizeof t);
  return t;
}

template <typename T>
inline __attribute__((always_inline)) Vec<acc_t<T>> vload_t(const T* p) {
  using A = acc_t<T>;
  if constexpr (std::is_same_v<T, A>) {
    return vload(p);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
#ifdef FUSED_ATTN_F16C
    // One widening load (GCC splits __builtin_convertvector's into halves).
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return bits_as<Vec<A>>(_mm256_slli_epi32(w, 16));
#else
    U16x8 h;
    std::memcpy(&h, p, sizeof h);
    const U32x8 b = __builtin_convertvector(h, U32x8) << 16;
    return bits_as<Vec<A>>(b);
#endif
  } else {
#ifdef FUSED_ATTN_F16C
    const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return bits_as<Vec<A>>(v);
#else
    Vec<A> v{};
    for (int64_t j = 0; j < kW<A>; ++j) v[j] = static_cast<A>(p[j]);
    return v;
#endif
  }
}

// v rounded to bfloat16 by c10::BFloat16's rule (nearest, ties to even; NaN
// to the quiet NaN 0x7FC0), in the upper 16 bits of each lane; the lower 16
// are left as they fall.
inline __attribute__((always_inline)) U32x8 bf16_round_hi(Vec<float> v) {
  const U32x8 b = bits_as<U32x8>(v);
  return (v != v) ? (U32x8{} + 0x7FC00000u) : b + 0x7FFFu + ((b >> 16) & 1u);
}

// bfloat16 is float's upper half: eight at a time as vload_t widens them, the
// tail one by one. (A lane-by-lane loop through a bits array had made the
// channels_last pool in bf16 twice as slow as in float16.)
inline const float* load_block(const c10::BFloat16* s, float* d, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) vstore(d + j, vload_t(s + j));
  const uint16_t* u = reinterpret_cast<const uint16_t*>(s);
  for (; j < n; ++j) {
    const uint32_t b = static_cast<uint32_t>(u[j]) << 16;
    std::memcpy(d + j, &b, sizeof b);
  }
  return d;
}

template <typename T>
inline __attribute__((always_inline)) Vec<acc_t<T>> vround_t(Vec<acc_t<T>> v) {
  using A = acc_t<T>;
  if constexpr (std::is_same_v<T, A>) {
    return v;
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return bits_as<Vec<A>>(bf16_round_hi(v) & 0xFFFF0000u);
  } else {
#ifdef FUSED_ATTN_F16C
    const __m256 r = _mm256_cvtph_ps(_mm256_cvtps_ph(bits_as<__m256>(v), _MM_FROUND_TO_NEAREST_INT));
    return bits_as<Vec<A>>(r);
#else
    for (int64_t j = 0; j < kW<A>; ++j) v[j] = static_cast<A>(static_cast<T>(v[j]));
    return v;
#endif
  }
}

// Eight floats as bfloat16 bits (bf16_round_hi's upper halves): vector ops,
// where a lane-by-lane store had cost the bf16 passes 3-6x over float16's.
inline __attribute__((always_inline)) U16x8 bf16_bits(Vec<float> v) {
#ifdef FUSED_ATTN_F16C
  // The upper halves, packed: every value is below 2^16, so packus's
  // saturation never applies (the generic narrowing masks them first).
  const __m256i h = _mm256_srli_epi32(bits_as<__m256i>(bf16_round_hi(v)), 16);
  return bits_as<U16x8>(_mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0xD8)));
#else
  return __builtin_convertvector(bf16_round_hi(v) >> 16, U16x8);
#endif
}

// Stores one vector as T; kNt: a streaming store (AVX2 build; p is then
// aligned to the vector's size in T, as stream_output's whole-line rows are).
template <bool kNt, typename T>
inline __attribute__((always_inline)) void vstore_t(T* p, Vec<acc_t<T>> v) {
  using A = acc_t<T>;
#ifdef FUSED_ATTN_F16C
  if constexpr (kNt) {
    if constexpr (std::is_same_v<T, float>) {
      _mm256_stream_ps(p, bits_as<__m256>(v));
    } else if constexpr (std::is_same_v<T, double>) {
      _mm256_stream_pd(p, bits_as<__m256d>(v));
    } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(p), bits_as<__m128i>(bf16_bits(v)));
    } else {
      _mm_stream_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(bits_as<__m256>(v), _MM_FROUND_TO_NEAREST_INT));
    }
    return;
  }
#endif
  if constexpr (std::is_same_v<T, A>) {
    vstore(p, v);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const U16x8 h = bf16_bits(v);
    std::memcpy(p, &h, sizeof h);
  } else {
    A a[kW<A>];
    std::memcpy(a, &v, sizeof a);
    store_block(a, p, kW<A>);
  }
}

// Round to nearest even, NaN to the canonical quiet NaN (c10::BFloat16's
// rule): whole vectors as vstore_t stores them, a tail of fewer as single
// lanes of the same.
inline void store_block(const float* s, c10::BFloat16* d, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) vstore_t<false>(d + j, vload(s + j));
  uint16_t* u = reinterpret_cast<uint16_t*>(d);
  for (; j < n; ++j) u[j] = bf16_bits(vsplat(s[j]))[0];
}

// Scalar forms of the same, for the tails (round_t through vround_t, so a
// tail element rounds exactly as a vector lane does).
template <typename T>
inline acc_t<T> round_t(acc_t<T> a) {
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    return a;
  } else {
    return vround_t<T>(vsplat(a))[0];
  }
}
template <typename T>
inline void store_t(T* p, acc_t<T> a) {
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    *p = a;
  } else {
    store_block(&a, p, 1);
  }
}

// Folds the lanes of va (summed) and vb (summed, or kMax: maxed with NaN
// checks) pairwise: lane j takes lane j + w for w = kW/2 .. 1, by shuffles
// (the order of a scalar tree, without its stores). Lane 0 holds the result.
template <bool kMax, int64_t w, typename A>
inline __attribute__((always_inline)) void fold_lanes(Vec<A>& va, Vec<A>& vb) {
  if constexpr (w > 0) {
    va += rotate_lanes<w, A>(va);
    const Vec<A> hi = rotate_lanes<w, A>(vb);
    vb = kMax ? vmax_nan(vb, hi) : vb + hi;
    fold_lanes<kMax, w / 2, A>(va, vb);
  }
}

// max that propagates NaN, as torch.amax does.
// (`|`, not `||`: no branch, so loops of it can vectorize.)
template <typename A> inline A max_nan(A m, A v) { return ((v > m) | (v != v)) ? v : m; }

// ---- units of work ----------------------------------------------------------
// A pass is made of "read units" (pooling, or Σ dy·x in the backward: they
// only read the big tensors) and "write units" (the rescale, or dx: they write
// one). Each unit's result depends on the shape alone, never on which thread
// runs it or what runs beside it.
//
// NCHW read unit: one row (n, c), reduced over H·W with L lanes (with_lanes),
// or, for short rows, a group of kGroup rows.
// channels_last read unit: a segment of one sample's pixel rows, of a length
// fixed by C, summed into its own partial vector; the partials are added in
// segment order afterwards (finish_*).
inline int64_t cl_segment_rows(int64_t C) { return std::max<int64_t>(1, kTaskElems / std::max<int64_t>(C, 1)); }

// The partials' scratch: n values left uninitialized (every unit writes its
// own rows before reading them), or all NaN when `poison` is set, so that a
// unit reading a row it had not written shows in the tests.
template <typename A> inline std::unique_ptr<A[]> scratch(int64_t n, bool poison) {
  std::unique_ptr<A[]> p(new A[n]);
  if (poison) std::fill(p.get(), p.get() + n, std::numeric_limits<A>::quiet_NaN());
  return p;
}

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

// Calls f(std::integral_constant<int64_t, L>) with the lane count for rows of
// length HW: 8 or 16 for short rows (less tree to fold per row), kBlock else.
template <typename F>
inline void with_lanes(int64_t HW, F&& f) {
  if (HW < 64) f(std::integral_constant<int64_t, 8>{});
  else if (HW < 256) f(std::integral_constant<int64_t, 16>{});
  else f(std::integral_constant<int64_t, kBlock>{});
}

// An NCHW row's reductions, over R rows at once (row g at x + g·HW): full
// blocks of L elements accumulate in L lanes (L / kW whole vectors), the
// lanes are folded pairwise (lane j takes lane j + w for w = L/2 .. 1: whole
// vectors while w ≥ kW, then within the vector), then the partial last block
// is added in order. The order is fixed by HW alone, so a row's result does
// not depend on R or on which rows share its group. Why vectors: a scalar
// NaN-propagating max (a branch per element) did not vectorize and
// mispredicted on every other element (NCHW avgmax SE forward: 2.0 ms at
// 8×2048×7², against 0.5 ms in channels_last); why groups: a short row alone
// (H·W < 64, the 7×7 maps) is a chain of a few dependent vector adds and a
// fold, and the core waits on their latency; R rows' independent chains
// keep it busy.
template <int64_t L, int64_t R, bool kMax, typename T>
inline void pool_rows_vec(const T* x, int64_t HW, acc_t<T>* sum, acc_t<T>* mx) {
  using A = acc_t<T>;
  constexpr int64_t W = kW<A>, Q = L / W;
  static_assert(L % W == 0, "whole vectors of lanes");
  constexpr A kLowest = -std::numeric_limits<A>::infinity();
  Vec<A> s[R][Q], m[R][Q];
  for (int64_t g = 0; g < R; ++g)
    for (int64_t q = 0; q < Q; ++q) {
      s[g][q] = Vec<A>{};
      m[g][q] = vsplat(kLowest);
    }
  int64_t i = 0;
  for (; i + L <= HW; i += L) {
    for (int64_t g = 0; g < R; ++g)
      for (int64_t q = 0; q < Q; ++q) {
        const Vec<A> v = vload_t(x + g * HW + i + W * q);
        s[g][q] += v;
        if (kMax) m[g][q] = vmax_nan(m[g][q], v);
      }
  }
  for (int64_t g = 0; g < R; ++g) {
    A tail_s = 0, tail_m = kLowest;
    for (int64_t j = i; j < HW; ++j) {
      const A v = static_cast<A>(x[g * HW + j]);
      tail_s += v;
      if (kMax) tail_m = max_nan(tail_m, v);
    }
    for (int64_t w = Q / 2; w > 0; w /= 2)
      for (int64_t q = 0; q < w; ++q) {
        s[g][q] += s[g][q + w];
        if (kMax) m[g][q] = vmax_nan(m[g][q], m[g][q + w]);
      }
    fold_lanes<kMax, W / 2, A>(s[g][0], m[g][0]);
    sum[g] = s[g][0][0] + tail_s;
    mx[g] = kMax ? max_nan(m[g][0][0], tail_m) : A(0);
  }
}

// s[g] = Σ dy·x and (kCnt) k[g] = #{x == mx[g]} of R rows, in the same order.
template <int64_t L, int64_t R, bool kCnt, typename T>
inline void reduce_rows_vec(const T* dy, const T* x, int64_t HW, const acc_t<T>* mx, acc_t<T>* s_out,
                            acc_t<T>* k_out) {
  using A = acc_t<T>;
  constexpr int64_t W = kW<A>, Q = L / W;
  static_assert(L % W == 0, "whole vectors of lanes");
  Vec<A> s[R][Q], k[R][Q], m[R];
  for (int64_t g = 0; g < R; ++g) {
    for (int64_t q = 0; q < Q; ++q) s[g][q] = k[g][q] = Vec<A>{};
    m[g] = vsplat(kCnt ? mx[g] : A(0));
  }
  int64_t i = 0;
  for (; i + L <= HW; i += L) {
    for (int64_t g = 0; g < R; ++g)
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t o = g * HW + i + W * q;
        const Vec<A> vx = vload_t(x + o);
        s[g][q] += vload_t(dy + o) * vx;
        if (kCnt) k[g][q] += veq01(vx, m[g]);
      }
  }
  for (int64_t g = 0; g < R; ++g) {
    A tail_s = 0, tail_k = 0;
    for (int64_t j = i; j < HW; ++j) {
      const A vx = static_cast<A>(x[g * HW + j]);
      tail_s += static_cast<A>(dy[g * HW + j]) * vx;
      if (kCnt) tail_k += vx == mx[g] ? A(1) : A(0);
    }
    for (int64_t w = Q / 2; w > 0; w /= 2)
      for (int64_t q = 0; q < w; ++q) {
        s[g][q] += s[g][q + w];
        k[g][q] += k[g][q + w];
      }
    fold_lanes<false, W / 2, A>(s[g][0], k[g][0]);
    s_out[g] = s[g][0][0] + tail_s;
    if (kCnt) k_out[g] = k[g][0][0] + tail_k;
  }
}

// Short rows go in groups of kGroup.
constexpr int64_t kGroup = 4;

// Whether `rows` NCHW rows of HW elements are reduced in groups (of 8 lanes,
// with_lanes's choice for them).
inline bool grouped_rows(int64_t HW, int64_t rows) { return HW < 64 && rows >= kGroup; }

// Group b covers rows [b·kGroup, (b+1)·kGroup) of `rows`; the last one, when
// rows is not a multiple of kGroup, is reduced as the last kGroup rows and
// keeps only its own (a row's result does not depend on its group).
inline int64_t group_start(int64_t b, int64_t rows) { return std::min(b * kGroup, rows - kGroup); }

// channels_last reductions leave per-segment partials: segment g of sample n
// holds C values at (n·nseg + g)·C. For rows [r0, r1) (row r = n·C + c) this
// adds the segments' a in segment order (and b: summed, or kMax: maxed) and
// hands out(r, Σa, Σb or max b). Columns run innermost, kBlock at a time, so
// the loops are vector loops (a loop per row, over the segments' strided
// values, was scalar and, for the max, branchy: 12% of an avgmax forward).
template <bool kMax, typename A, typename Out>
inline void combine_segments(int64_t r0, int64_t r1, int64_t C, int64_t nseg, const A* pa, const A* pb, Out&& out) {
  A sa[kBlock], sb[kBlock];
  for (int64_t r = r0; r < r1;) {
    const int64_t n = r / C, c0 = r % C;
    const int64_t len = std::min({r1 - r, C - c0, kBlock});
    std::fill(sa, sa + len, A(0));
    std::fill(sb, sb + len, kMax ? -std::numeric_limits<A>::infinity() : A(0));
    for (int64_t g = 0; g < nseg; ++g) {
      const int64_t off = (n * nseg + g) * C + c0;
      for (int64_t j = 0; j < len; ++j) sa[j] += pa[off + j];
      if (pb) {
        for (int64_t j = 0; j < len; ++j) sb[j] = kMax ? max_nan(sb[j], pb[off + j]) : sb[j] + pb[off + j];
      }
    }
    for (int64_t j = 0; j < len; ++j) out(r + j, sa[j], sb[j]);
    r += len;
  }
}

// A row's coefficient as a vector at element i: the elements' own (kPer,
// loaded) or the row's one, splat once up front (a splat from memory inside
// the loop is reloaded after every store, which may alias it: NCHW dx 10%
// slower than the scalar loop it replaced).
template <bool kPer, typename A>
struct Coef {
  const A* p;
  Vec<A> splat;
  explicit Coef(const A* q) : p(q), splat(kPer || q == nullptr ? Vec<A>{} : vsplat(q[0])) {}
  inline __attribute__((always_inline)) Vec<A> at(int64_t i) const {
    if constexpr (kPer) return vload(p + i);
    else return splat;
  }
};

// Walks a row of len elements in whole vectors of W: vec(i, nt) for each,
// where the last vector of a row longer than one ends at the row's end,
// overlapping the one before it (the same values written twice), so a row has
// no scalar tail and no vectorizer prologue: on 49-pixel rows those made the
// rescale 1.5× the time of a plain multiply loop over the same bytes. nt is
// std::bool_constant<kNt> for the aligned vectors and false for the
// overlapping one (with kNt, streaming stores, rows are whole cache lines, so
// there is none). Rows shorter than W go element by element through
// scalar(i). The overlap re-reads the input after storing the output: they
// must not be the same memory (the passes write fresh tensors).
template <bool kNt, int64_t W, typename VecFn, typename ScalarFn>
inline void over_row(int64_t len, VecFn&& vec, ScalarFn&& scalar) {
  int64_t i = 0;
  for (; i + W <= len; i += W) vec(i, std::bool_constant<kNt>{});
  if (i == len) return;
  if (len >= W) {
    vec(len - W, std::false_type{});
    return;
  }
  for (; i < len; ++i) scalar(i);
}

// y[i] = x[i]·g[i] (kPer: one gate per element, a channels_last pixel row)
// or x[i]·g[0] (an NCHW row) for i < len.
template <bool kNt, bool kPer, typename T>
inline void scale_vec(const T* x, T* y, int64_t len, const acc_t<T>* g) {
  using A = acc_t<T>;
  const Coef<kPer, A> cg(g);
  over_row<kNt, kW<A>>(
      len, [&](int64_t i, auto nt) { vstore_t<decltype(nt)::value>(y + i, vload_t(x + i) * cg.at(i)); },
      [&](int64_t i) { store_t(y + i, static_cast<A>(x[i]) * g[kPer ? i : 0]); });
}

// dx[i] = dy[i]·g + a (+ b where x[i] == m, with kMax) for i < len, the
// coefficients per element (kPer: a channels_last pixel row, arrays indexed
// by i) or per row (g[0], a[0], m[0], b[0]); over the row as scale_vec.
template <bool kPer, bool kMax, typename T, typename A = acc_t<T>>
inline __attribute__((always_inline)) Vec<A> dx_value(const T* dy, const T* x, const Coef<kPer, A>& g,
                                                      const Coef<kPer, A>& a, const Coef<kPer, A>& m,
                                                      const Coef<kPer, A>& b, int64_t i) {
  const Vec<A> d = vload_t(dy + i) * g.at(i) + a.at(i);
  if constexpr (kMax) return d + ((vload_t(x + i) == m.at(i)) ? b.at(i) : Vec<A>{});
  else return d;
}

template <bool kNt, bool kPer, bool kMax, typename T>
inline void dx_vec(const T* dy, const T* x, T* dx, int64_t len, const acc_t<T>* g, const acc_t<T>* a,
                   const acc_t<T>* m, const acc_t<T>* b) {
  using A = acc_t<T>;
  const Coef<kPer, A> cg(g), ca(a), cm(m), cb(b);
  over_row<kNt, kW<A>>(
      len,
      [&](int64_t i, auto nt) {
        vstore_t<decltype(nt)::value>(dx + i, dx_value<kPer, kMax>(dy, x, cg, ca, cm, cb, i));
      },
      [&](int64_t i) {
        const int64_t j = kPer ? i : 0;
        const A d = static_cast<A>(dy[i]) * g[j] + a[j];
        store_t(dx + i, kMax ? d + (static_cast<A>(x[i]) == m[j] ? b[j] : A(0)) : d);
      });
}

// The four forms of dx_vec a pass picks between at run time.
template <bool kPer, typename T>
inline void dx_vec_any(bool nt, bool with_max, const T* dy, const T* x, T* dx, int64_t len, const acc_t<T>* g,
                       const acc_t<T>* a, const acc_t<T>* m, const acc_t<T>* b) {
  if (nt) {
    if (with_max) dx_vec<true, kPer, true>(dy, x, dx, len, g, a, m, b);
    else dx_vec<true, kPer, false>(dy, x, dx, len, g, a, m, b);
  } else {
    if (with_max) dx_vec<false, kPer, true>(dy, x, dx, len, g, a, m, b);
    else dx_vec<false, kPer, false>(dy, x, dx, len, g, a, m, b);
  }
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
      if (nt) scale_vec<true, false>(sj.x + r * HW, sj.y + r * HW, HW, sj.g + r);
      else scale_vec<false, false>(sj.x + r * HW, sj.y + r * HW, HW, sj.g + r);
    };
    auto pool_unit = [&](int64_t r) {
      A sum, mx;
      with_lanes(HW, [&](auto lanes) {
        if (want_max) pool_rows_vec<lanes, 1, true>(pj.x + r * HW, HW, &sum, &mx);
        else pool_rows_vec<lanes, 1, false>(pj.x + r * HW, HW, &sum, &mx);
      });
      finish(r, sum, mx);
    };
    const int64_t rows = pj.nb * C;
    if (grouped_rows(HW, rows)) {
      auto pool_group = [&](int64_t b) {
        const int64_t r0 = group_start(b, rows), first = b * kGroup;
        A sum[kGroup], mx[kGroup];
        if (want_max) pool_rows_vec<8, kGroup, true>(pj.x + r0 * HW, HW, sum, mx);
        else pool_rows_vec<8, kGroup, false>(pj.x + r0 * HW, HW, sum, mx);
        for (int64_t r = first; r < r0 + kGroup; ++r) finish(r, sum[r - r0], mx[r - r0]);
      };
      interleaved(sj.nb * C, HW, scale_row, (rows + kGroup - 1) / kGroup, kGroup * HW, pool_group);
      return;
    }
    interleaved(sj.nb * C, HW, scale_row, rows, HW, pool_unit);
    return;
  }
  const int64_t seg = cl_segment_rows(C);
  const int64_t nseg = (HW + seg - 1) / seg;
  // Each pool unit fills its own segment's rows first: no zeroing here (a
  // memset of up to a few hundred KiB per chunk).
  const std::unique_ptr<A[]> psum = scratch<A>(pj.nb * nseg * C, pj.poison);
  const std::unique_ptr<A[]> pmax = scratch<A>(want_max ? pj.nb * nseg * C : 0, pj.poison);
  auto scale_row = [&](int64_t r) {  // pixel row r = n·HW + hw
    const A* gn = sj.g + (r / HW) * C;
    if (nt) scale_vec<true, true>(sj.x + r * C, sj.y + r * C, C, gn);
    else scale_vec<false, true>(sj.x + r * C, sj.y + r * C, C, gn);
  };
  auto pool_unit = [&](int64_t t) {  // segment t of sample t / nseg
    const int64_t n = t / nseg, hw0 = (t % nseg) * seg, hw1 = std::min(HW, hw0 + seg);
    A* s = psum.get() + t * C;
    A* m = want_max ? pmax.get() + t * C : nullptr;
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
    if (want_max) combine_segments<true>(r0, r1, C, nseg, psum.get(), pmax.get(), finish);
    else combine_segments<false>(r0, r1, C, nseg, psum.get(), static_cast<const A*>(nullptr), finish);
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
      dx_vec_any<false>(nt, dx_max, dj.dy + r * HW, dj.x + r * HW, dj.dx + r * HW, HW, dj.g + r, dj.a + r,
                        dx_max ? dj.maxv + r : nullptr, dx_max ? dj.b + r : nullptr);
    };
    auto reduce_unit = [&](int64_t r) {
      A k = 0;
      with_lanes(HW, [&](auto lanes) {
        const T* dy = rj.dy + r * HW;
        const T* x = rj.x + r * HW;
        if (want_cnt) reduce_rows_vec<lanes, 1, true>(dy, x, HW, rj.maxv + r, rj.s + r, &k);
        else reduce_rows_vec<lanes, 1, false>(dy, x, HW, nullptr, rj.s + r, &k);
      });
      if (want_cnt) rj.cnt[r] = k;
    };
    const int64_t rows = rj.nb * C;
    if (grouped_rows(HW, rows)) {
      auto reduce_group = [&](int64_t b) {
        const int64_t r0 = group_start(b, rows), first = b * kGroup;
        const int64_t off = r0 * HW;
        A s[kGroup], k[kGroup];
        if (want_cnt) reduce_rows_vec<8, kGroup, true>(rj.dy + off, rj.x + off, HW, rj.maxv + r0, s, k);
        else reduce_rows_vec<8, kGroup, false>(rj.dy + off, rj.x + off, HW, nullptr, s, k);
        for (int64_t r = first; r < r0 + kGroup; ++r) {
          rj.s[r] = s[r - r0];
          if (want_cnt) rj.cnt[r] = k[r - r0];
        }
      };
      interleaved(dj.nb * C, HW, dx_row, (rows + kGroup - 1) / kGroup, 2 * kGroup * HW, reduce_group);
      return;
    }
    interleaved(dj.nb * C, HW, dx_row, rows, 2 * HW, reduce_unit);
    return;
  }
  const int64_t seg = cl_segment_rows(C);
  const int64_t nseg = (HW + seg - 1) / seg;
  const std::unique_ptr<A[]> ps = scratch<A>(rj.nb * nseg * C, rj.poison);  // filled per unit, as the forward's
  const std::unique_ptr<A[]> pk = scratch<A>(want_cnt ? rj.nb * nseg * C : 0, rj.poison);
  auto dx_row = [&](int64_t r) {  // pixel row r = n·HW + hw
    const int64_t nC = (r / HW) * C;
    dx_vec_any<true>(nt, dx_max, dj.dy + r * C, dj.x + r * C, dj.dx + r * C, C, dj.g + nC, dj.a + nC,
                     dx_max ? dj.maxv + nC : nullptr, dx_max ? dj.b + nC : nullptr);
  };
  auto reduce_unit = [&](int64_t t) {
    const int64_t n = t / nseg, hw0 = (t % nseg) * seg, hw1 = std::min(HW, hw0 + seg);
    A* s = ps.get() + t * C;
    A* k = want_cnt ? pk.get() + t * C : nullptr;
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
    auto out = [&](int64_t r, A s, A k) {
      rj.s[r] = s;
      if (want_cnt) rj.cnt[r] = k;
    };
    combine_segments<false>(r0, r1, C, nseg, ps.get(), want_cnt ? pk.get() : nullptr, out);
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
