// The kernel body, compiled once per instruction set: block_sparse_attn_cpu.cpp includes
// this file three times, inside namespaces sa_scalar / sa_avx2 / sa_avx512, with SA_ISA set
// to 0 / 2 / 5 and (for 2 and 5) a `#pragma GCC target` in force, so each copy is compiled
// for its ISA whatever the build machine is. No include guard on purpose. Everything here
// has internal linkage (the includer is inside an anonymous namespace) and calls no
// standard-library template, so no code compiled for one ISA can be shared with another.
//
// Layout of the work (one Item: query block r of nh heads sharing K/V head hk):
//   qt [D][N]      Q^T of the nh heads, scaled by scale * log2(e) (N = nh * rpad columns,
//                  column g * rpad + i = query i of head h0 + g; padding columns are 0),
//                  stored panel-major (panels of PW columns, see gemm's BPM)
//   st [C][N]      scores of a run of C keys, S^T = K_run Q^T (key-major), then p
//   ot [Dv][N]     output accumulator O^T += V_run^T P^T, rescaled by alpha per column
// Both products are C[M, N] (+)= A[M, K] B[K, N] with B = qt or st and A read
// by broadcast from K or V rows in place (fp32) or from a converted copy (fp16 / bf16). The
// online softmax (FlashAttention, Dao et al. 2022, Alg. 1) runs down the key axis of st, so
// it is vertical vector arithmetic over query columns (no horizontal reductions).

#ifndef SA_ISA
#error "define SA_ISA (0, 2 or 5) before including attn_isa_body.h"
#endif

using ::sparse_attn_cpu::Item;
using ::sparse_attn_cpu::Params;
using ::sparse_attn_cpu::Workspace;

// ------------------------------------------------------------------ vector primitives
#if SA_ISA == 5
typedef __m512 vec;
constexpr int W = 16;      // fp32 lanes
constexpr int MR_MAX = 6;  // rows of A per micro-kernel
constexpr int NV_MAX = 4;  // vectors of B per micro-kernel (6 x 4 = 24 accumulators)
static inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, vec x) { _mm512_storeu_ps(p, x); }
static inline vec vset1(float x) { return _mm512_set1_ps(x); }
static inline vec vzero() { return _mm512_setzero_ps(); }
static inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec vmul(vec a, vec b) { return _mm512_mul_ps(a, b); }
static inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
static inline vec vsub(vec a, vec b) { return _mm512_sub_ps(a, b); }
// max(a, b) returning a when b is NaN (NaN scores are ignored by the running max).
static inline vec vmax_ign(vec a, vec b) { return _mm512_max_ps(b, a); }
static inline vec vmin(vec a, vec b) { return _mm512_min_ps(a, b); }  // b if NaN
static inline vec vmax(vec a, vec b) { return _mm512_max_ps(a, b); }  // b if NaN
// lanes where mask (int32) is nonzero keep x, the others get y.
static inline vec vselect_mask(const int32_t* mask, vec x, vec y) {
  const __m512i mv = _mm512_loadu_si512(mask);
  return _mm512_mask_blend_ps(_mm512_test_epi32_mask(mv, mv), y, x);
}
static inline vec vif_lt(vec a, vec b, vec x, vec y) {  // a < b ? x : y
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), y, x);
}
static inline vec vif_eq(vec a, vec b, vec x, vec y) {  // a == b ? x : y
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ), y, x);
}
static inline vec vround(vec x) {
  return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
static inline vec vpow2i(vec n) {  // 2^n for integer-valued n in [-126, 127]
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_castsi512_ps(e);
}
static inline float vhsum(vec x) { return _mm512_reduce_add_ps(x); }
static inline void cvt_f16(const uint16_t* s, float* d) {
  _mm512_storeu_ps(d, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s))));
}
static inline void cvt_bf16(const uint16_t* s, float* d) {
  const __m512i x = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
  _mm512_storeu_ps(d, _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)));
}
#elif SA_ISA == 2
typedef __m256 vec;
constexpr int W = 8;
constexpr int MR_MAX = 6;
constexpr int NV_MAX = 2;  // 6 x 2 = 12 accumulators of the 16 ymm registers
static inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore(float* p, vec x) { _mm256_storeu_ps(p, x); }
static inline vec vset1(float x) { return _mm256_set1_ps(x); }
static inline vec vzero() { return _mm256_setzero_ps(); }
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }
static inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
static inline vec vsub(vec a, vec b) { return _mm256_sub_ps(a, b); }
static inline vec vmax_ign(vec a, vec b) { return _mm256_max_ps(b, a); }
static inline vec vmin(vec a, vec b) { return _mm256_min_ps(a, b); }  // b if NaN
static inline vec vmax(vec a, vec b) { return _mm256_max_ps(a, b); }  // b if NaN
static inline vec vselect_mask(const int32_t* mask, vec x, vec y) {
  const __m256 mv = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mask)));
  return _mm256_blendv_ps(y, x, mv);  // mask values are -1 or 0: the sign bit decides
}
static inline vec vif_lt(vec a, vec b, vec x, vec y) {
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_LT_OQ));
}
static inline vec vif_eq(vec a, vec b, vec x, vec y) {
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_EQ_OQ));
}
static inline vec vround(vec x) {
  return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
static inline vec vpow2i(vec n) {
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_castsi256_ps(e);
}
static inline float vhsum(vec x) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
static inline void cvt_f16(const uint16_t* s, float* d) {
  _mm256_storeu_ps(d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s))));
}
static inline void cvt_bf16(const uint16_t* s, float* d) {
  const __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  _mm256_storeu_ps(d, _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)));
}
#else  // portable scalar code (any architecture)
typedef float vec;
constexpr int W = 1;
constexpr int MR_MAX = 4;
constexpr int NV_MAX = 4;
static inline vec vload(const float* p) { return *p; }
static inline void vstore(float* p, vec x) { *p = x; }
static inline vec vset1(float x) { return x; }
static inline vec vzero() { return 0.f; }
static inline vec vfma(vec a, vec b, vec c) { return a * b + c; }
static inline vec vmul(vec a, vec b) { return a * b; }
static inline vec vadd(vec a, vec b) { return a + b; }
static inline vec vsub(vec a, vec b) { return a - b; }
static inline vec vmax_ign(vec a, vec b) { return b > a ? b : a; }
static inline vec vmin(vec a, vec b) { return a < b ? a : b; }  // b if NaN
static inline vec vmax(vec a, vec b) { return a > b ? a : b; }  // b if NaN
static inline vec vselect_mask(const int32_t* mask, vec x, vec y) { return *mask ? x : y; }
static inline vec vif_lt(vec a, vec b, vec x, vec y) { return a < b ? x : y; }
static inline vec vif_eq(vec a, vec b, vec x, vec y) { return a == b ? x : y; }
static inline vec vround(vec x) { return __builtin_nearbyintf(x); }
static inline vec vpow2i(vec n) {
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float f;
  __builtin_memcpy(&f, &e, sizeof(f));
  return f;
}
static inline float vhsum(vec x) { return x; }
#endif

static inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  float f;
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    f = static_cast<float>(man) * 5.9604644775390625e-8f;
    uint32_t bits;
    __builtin_memcpy(&bits, &f, sizeof(bits));
    bits |= sign;
    __builtin_memcpy(&f, &bits, sizeof(f));
    return f;
  }
  const uint32_t bits =
      exp == 0x1fu ? (sign | 0x7f800000u | (man << 13)) : (sign | ((exp + 112u) << 23) | (man << 13));
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
}

static inline float bf16_to_f32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
}

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// n elements of a row of the input (dtype) to fp32.
static inline void cvt_row(const void* src, int dtype, int64_t n, float* dst) {
  if (dtype == ::sparse_attn_cpu::kF32) {
    __builtin_memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src);
  int64_t j = 0;
#if SA_ISA != 0
  if (dtype == ::sparse_attn_cpu::kF16)
    for (; j + W <= n; j += W) cvt_f16(s + j, dst + j);
  else
    for (; j + W <= n; j += W) cvt_bf16(s + j, dst + j);
#endif
  if (dtype == ::sparse_attn_cpu::kF16)
    for (; j < n; ++j) dst[j] = f16_to_f32(s[j]);
  else
    for (; j < n; ++j) dst[j] = bf16_to_f32(s[j]);
}

static inline const char* elem_ptr(const void* base, int dtype, int64_t offset) {
  const int64_t size = dtype == ::sparse_attn_cpu::kF32 ? 4 : 2;
  return static_cast<const char*>(base) + offset * size;
}

// 2^x for base-2 scores, |rel err| < 2e-7; exactly 0 for x < -126 (so 2^-inf == 0); NaN
// stays NaN. Range reduction x = n + f, |f| <= 1/2, then a degree-7 Taylor polynomial of
// e^(f ln 2).
static inline vec vexp2(vec x) {
  const vec xc = vmin(vset1(127.f), vmax(vset1(-126.f), x));
  const vec n = vround(xc);
  const vec f = vsub(xc, n);
  vec p = vset1(1.5252733804059840e-5f);
  p = vfma(p, f, vset1(1.5403530393381609e-4f));
  p = vfma(p, f, vset1(1.3333558146428443e-3f));
  p = vfma(p, f, vset1(9.6181291076284772e-3f));
  p = vfma(p, f, vset1(5.5504108664821580e-2f));
  p = vfma(p, f, vset1(2.4022650695910071e-1f));
  p = vfma(p, f, vset1(6.9314718055994531e-1f));
  p = vfma(p, f, vset1(1.f));
  const vec r = vmul(p, vpow2i(n));
  return vif_lt(x, vset1(-126.f), vzero(), r);
}

// ------------------------------------------------------------------ GEMM micro-kernel
// C[MR, NV*W] = (ACC ? C * colscale : 0) + A[MR, K] B[K, NV*W], A(m, k) = a[m*am + k*ak];
// colscale == nullptr with ACC: plain accumulation.
template <int MR, int NV, bool ACC>
static inline void micro(int64_t K, const float* a, int64_t am, int64_t ak, const float* b,
                         int64_t ldb, float* c, int64_t ldc, const float* colscale) {
  vec acc[MR][NV];
  if (ACC && colscale != nullptr) {
    vec sc[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) sc[v] = vload(colscale + v * W);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[m][v] = vmul(vload(c + m * ldc + v * W), sc[v]);
  } else if (ACC) {
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[m][v] = vload(c + m * ldc + v * W);
  } else {
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[m][v] = vzero();
  }
  for (int64_t k = 0; k < K; ++k) {
    const float* bk = b + k * ldb;
    vec bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = vload(bk + v * W);
    const float* ak_ = a + k * ak;
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const vec av = vset1(ak_[m * am]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[m][v] = vfma(av, bv[v], acc[m][v]);
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) vstore(c + m * ldc + v * W, acc[m][v]);
}

constexpr int clamp_nv(int x) { return x <= NV_MAX ? x : NV_MAX; }
constexpr int clamp_mr(int x) { return x <= MR_MAX ? x : MR_MAX; }

template <int MR, bool ACC>
static inline void micro_nv(int nv, int64_t K, const float* a, int64_t am, int64_t ak,
                            const float* b, int64_t ldb, float* c, int64_t ldc,
                            const float* colscale) {
  switch (nv) {
    case 1: micro<MR, 1, ACC>(K, a, am, ak, b, ldb, c, ldc, colscale); break;
    case 2: micro<MR, clamp_nv(2), ACC>(K, a, am, ak, b, ldb, c, ldc, colscale); break;
    case 3: micro<MR, clamp_nv(3), ACC>(K, a, am, ak, b, ldb, c, ldc, colscale); break;
    default: micro<MR, clamp_nv(4), ACC>(K, a, am, ak, b, ldb, c, ldc, colscale); break;
  }
}

// C[M, N] (+)= A[M, K] B[K, N]; N is a multiple of W. Column panels outside, then chunks
// of KC along K, row panels of MR_MAX inside. Each KC x NV_MAX*W panel of B is first copied
// into contiguous rows (bpack) so that it stays in L1 for all row panels: in place, its rows
// are ldb floats apart (1 KiB for 4 heads x 64 queries), and 128 rows at such a stride
// fall into a few L1 sets and evict each other, so every row panel re-read B from L2.
constexpr int64_t KC = 128;
constexpr int64_t PW = NV_MAX * W;  // columns of a GEMM column panel
static_assert(KC * NV_MAX * W <= ::sparse_attn_cpu::kPackFloats, "bpack too small");

template <bool ACC>
static inline void gemm_panel(int mr, int nv, int64_t K, const float* a, int64_t am, int64_t ak,
                              const float* b, int64_t ldb, float* c, int64_t ldc,
                              const float* cs) {
  switch (mr) {
    case 1: micro_nv<1, ACC>(nv, K, a, am, ak, b, ldb, c, ldc, cs); break;
    case 2: micro_nv<clamp_mr(2), ACC>(nv, K, a, am, ak, b, ldb, c, ldc, cs); break;
    case 3: micro_nv<clamp_mr(3), ACC>(nv, K, a, am, ak, b, ldb, c, ldc, cs); break;
    case 4: micro_nv<clamp_mr(4), ACC>(nv, K, a, am, ak, b, ldb, c, ldc, cs); break;
    case 5: micro_nv<clamp_mr(5), ACC>(nv, K, a, am, ak, b, ldb, c, ldc, cs); break;
    default: micro_nv<clamp_mr(6), ACC>(nv, K, a, am, ak, b, ldb, c, ldc, cs); break;
  }
}

// RANGE: 0 all of C, 1 only rows [lo, hi) of C in each column panel, 2 only k in [lo, hi)
// (the other k add nothing: their B rows are 0 there), where [lo, hi) is the union of
// krange[q], krange[NG + q] over the 16-column groups q of the panel. Skipped rows of C are
// left as they were (the caller masks them to -inf). BPM: B is stored panel-major (panel
// n0 / PW holds K rows of min(PW, N - n0) floats from b + n0 * K), needing no copy (Q^T).
template <bool ACC, int RANGE, bool BPM = false>
static void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t am, int64_t ak,
                 const float* b, int64_t ldb, float* c, int64_t ldc, const float* colscale,
                 float* bpack, const int32_t* krange) {
  const int64_t ng = N / 16;
  for (int64_t n0 = 0; n0 < N; n0 += NV_MAX * W) {
    const int nv = static_cast<int>(imin(NV_MAX, (N - n0) / W));
    const int64_t ldp = static_cast<int64_t>(nv) * W;
    int64_t mlo = 0, mhi = M, klo = 0, khi = K;
    if (RANGE != 0) {
      int64_t lo = RANGE == 1 ? M : K, hi = 0;
      for (int64_t q = n0 / 16; q <= (n0 + ldp - 1) / 16; ++q) {
        if (krange[q] >= krange[ng + q]) continue;
        lo = krange[q] < lo ? krange[q] : lo;
        hi = krange[ng + q] > hi ? krange[ng + q] : hi;
      }
      if (lo > hi) lo = hi;
      if (RANGE == 1) mlo = lo, mhi = hi;
      else klo = lo, khi = hi;
    }
    if (klo >= khi) {  // nothing to add: only the rescale of C
      if (ACC && colscale != nullptr)
        for (int64_t m0 = mlo; m0 < mhi; m0 += MR_MAX)
          gemm_panel<ACC>(static_cast<int>(imin(MR_MAX, mhi - m0)), nv, 0, a, am, ak, b, ldb,
                          c + m0 * ldc + n0, ldc, colscale + n0);
      continue;
    }
    for (int64_t k0 = klo; k0 < khi; k0 += KC) {
      const int64_t kc = imin(KC, khi - k0);
      const float* bk = BPM ? b + n0 * K + k0 * ldp : b + k0 * ldb + n0;
      // Pack when B is reused by several row panels and its rows are not contiguous already.
      const bool pack = !BPM && mhi - mlo > MR_MAX && ldb != ldp;
      if (pack) {
        for (int64_t k = 0; k < kc; ++k)
          for (int v = 0; v < nv; ++v) vstore(bpack + k * ldp + v * W, vload(bk + k * ldb + v * W));
      }
      const float* bp = pack ? bpack : bk;
      const int64_t ldbp = pack || BPM ? ldp : ldb;
      const float* ak0 = a + k0 * ak;
      for (int64_t m0 = mlo; m0 < mhi; m0 += MR_MAX) {
        const int mr = static_cast<int>(imin(MR_MAX, mhi - m0));
        float* cm = c + m0 * ldc + n0;
        if (k0 == klo)
          gemm_panel<ACC>(mr, nv, kc, ak0 + m0 * am, am, ak, bp, ldbp, cm, ldc,
                          ACC ? colscale + n0 : nullptr);
        else
          gemm_panel<true>(mr, nv, kc, ak0 + m0 * am, am, ak, bp, ldbp, cm, ldc, nullptr);
      }
    }
  }
}

// True when rows x n elements (row stride ld) are all finite (x * 0 is NaN otherwise).
// Four independent accumulators: a single one makes the loop latency-bound.
static bool all_finite(const float* p, int64_t rows, int64_t n, int64_t ld) {
  vec a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
  float tail = 0.f;
  const vec z = vzero();
  for (int64_t j = 0; j < rows; ++j) {
    const float* r = p + j * ld;
    int64_t t = 0;
    for (; t + 4 * W <= n; t += 4 * W) {
      a0 = vfma(vload(r + t), z, a0);
      a1 = vfma(vload(r + t + W), z, a1);
      a2 = vfma(vload(r + t + 2 * W), z, a2);
      a3 = vfma(vload(r + t + 3 * W), z, a3);
    }
    for (; t + W <= n; t += W) a0 = vfma(vload(r + t), z, a0);
    for (; t < n; ++t) tail += r[t] * 0.f;
  }
  const float s = vhsum(vadd(vadd(a0, a1), vadd(a2, a3))) + tail;
  return s == 0.f;
}

// Online-softmax update of NVS column vectors (columns n .. n + NVS*W) over C keys of st
// (row stride N): running max m, sum l, rescale alpha = 2^(m_old - m_new), st <- p. The
// NVS columns are processed together so that the max and sum chains interleave.
template <int NVS>
static inline void softmax_cols(float* st, int64_t N, int64_t C, float* m, float* l,
                                float* alpha) {
  const vec ninf = vset1(-__builtin_inff());
  vec mx[NVS], mu[NVS], sum[NVS];
#pragma GCC unroll 8
  for (int v = 0; v < NVS; ++v) mx[v] = ninf;
  for (int64_t j = 0; j < C; ++j) {
    const float* r = st + j * N;
#pragma GCC unroll 8
    for (int v = 0; v < NVS; ++v) mx[v] = vmax_ign(mx[v], vload(r + v * W));
  }
#pragma GCC unroll 8
  for (int v = 0; v < NVS; ++v) {
    const vec m_old = vload(m + v * W);
    const vec m_new = vmax_ign(m_old, mx[v]);
    // A column with nothing visible yet keeps m = -inf; subtract 0 there (2^-inf = 0).
    mu[v] = vif_eq(m_new, ninf, vzero(), m_new);
    const vec a = vexp2(vsub(m_old, mu[v]));
    vstore(alpha + v * W, a);
    vstore(m + v * W, m_new);
    vstore(l + v * W, vmul(vload(l + v * W), a));
    sum[v] = vzero();
  }
  for (int64_t j = 0; j < C; ++j) {
    float* r = st + j * N;
#pragma GCC unroll 8
    for (int v = 0; v < NVS; ++v) {
      const vec p = vexp2(vsub(vload(r + v * W), mu[v]));
      vstore(r + v * W, p);
      sum[v] = vadd(sum[v], p);
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < NVS; ++v) vstore(l + v * W, vadd(vload(l + v * W), sum[v]));
}

// ------------------------------------------------------------------ one work item
static void process_item(const Params& P, const Item& it, const Workspace& ws) {
  const int64_t D = P.D, Dv = P.Dv, bs = P.bs, rpad = P.rpad;
  const int64_t N = static_cast<int64_t>(it.nh) * rpad;
  const int64_t q0 = static_cast<int64_t>(it.r) * bs;
  const int64_t rows = imin(bs, P.S - q0);
  const int dt = P.dtype;
  const float neg_inf = -__builtin_inff();

  // Q^T, scaled (base-2 scores), padding columns 0. Tiles of 16 queries: their rows are
  // converted into ws.row [16][D], then each qt row segment (16 floats, one cache line) is
  // written at once.
  float* qt = ws.qt;
  for (int g = 0; g < it.nh; ++g) {
    const int64_t h = it.h0 + g;
    for (int64_t i0 = 0; i0 < rpad; i0 += 16) {
      const int64_t ni = imin(16, rows - i0);  // may be <= 0 in the padding
      for (int64_t i = 0; i < 16; ++i) {
        float* dst = ws.row + i * D;
        if (i < ni) {
          const int64_t off = it.b * P.q_sb + h * P.q_sh + (q0 + i0 + i) * P.q_ss;
          cvt_row(elem_ptr(P.q, dt, off), dt, D, dst);
        } else {
          for (int64_t d = 0; d < D; ++d) dst[d] = 0.f;
        }
      }
      // Panel-major (see gemm's BPM): the 16 columns lie in one panel when PW % 16 == 0.
      const int64_t n16 = g * rpad + i0;
      if (PW % 16 == 0) {
        const int64_t p0 = n16 / PW * PW, wp = imin(PW, N - p0);
        float* col = qt + p0 * D + (n16 - p0);
        for (int64_t d = 0; d < D; ++d) {
          float* qd = col + d * wp;
#pragma GCC unroll 16
          for (int i = 0; i < 16; ++i) qd[i] = ws.row[i * D + d] * P.qscale;
        }
      } else {
        for (int i = 0; i < 16; ++i) {
          const int64_t n = n16 + i, p0 = n / PW * PW, wp = imin(PW, N - p0);
          float* col = qt + p0 * D + (n - p0);
          for (int64_t d = 0; d < D; ++d) col[d * wp] = ws.row[i * D + d] * P.qscale;
        }
      }
    }
  }
  float* ot = ws.ot;
  for (int64_t i = 0; i < Dv * N; ++i) ot[i] = 0.f;
  for (int64_t n = 0; n < N; ++n) {
    ws.m[n] = neg_inf;
    ws.l[n] = 0.f;
  }

  const int64_t lh = P.layout_heads == 1 ? 0 : it.h0;
  const int32_t* rp = P.row_ptr + lh * P.rp_stride;
  const int32_t* crow = P.col_idx + lh * P.nnz;
  const int32_t* mrow = P.mask_idx + lh * P.nnz;
  const int32_t e_end = rp[it.r + 1];
  const int64_t max_blocks = P.run_keys / bs;
  const uint8_t* kpm = P.kpm != nullptr ? P.kpm + it.b * P.S : nullptr;

  int32_t e = rp[it.r];
  while (e < e_end) {
    if (crow[e] >= P.nqb) {  // key block beyond this request's S (top-left crop)
      ++e;
      continue;
    }
    int32_t e2 = e + 1;
    while (e2 < e_end && e2 - e < max_blocks && crow[e2] == crow[e2 - 1] + 1 && crow[e2] < P.nqb)
      ++e2;
    const int64_t k0 = static_cast<int64_t>(crow[e]) * bs;
    const int64_t C = imin((static_cast<int64_t>(crow[e2 - 1]) + 1) * bs, P.S) - k0;

    // ---- S^T = K_run Q^T
    const float* ka;
    int64_t lda_k;
    const int64_t koff = it.b * P.k_sb + it.hk * P.k_sh + k0 * P.k_ss;
    if (dt == ::sparse_attn_cpu::kF32) {
      ka = static_cast<const float*>(P.k) + koff;
      lda_k = P.k_ss;
    } else {
      for (int64_t j = 0; j < C; ++j)
        cvt_row(elem_ptr(P.k, dt, koff + j * P.k_ss), dt, D, ws.kbuf + j * D);
      ka = ws.kbuf;
      lda_k = D;
    }
    float* st = ws.st;
    // Visible key rows of the run per 16-column group (the heads of the item share one
    // layout row, so group q of every head has the same range).
    const int64_t ngr = rpad / 16, ng = N / 16;
    for (int64_t q = 0; q < ngr; ++q) {
      int64_t lo = C, hi = 0;
      for (int32_t t = e; t < e2; ++t) {
        const int64_t c0 = (static_cast<int64_t>(crow[t]) - crow[e]) * bs;
        const int64_t bc = imin(bs, C - c0);
        int64_t jlo = 0, jhi = bc;
        if (mrow[t] >= 0) {
          const int32_t* mr_ = P.mask_rows + (static_cast<int64_t>(mrow[t]) * ngr + q) * 2;
          jlo = mr_[0];
          jhi = imin(mr_[1], bc);
        }
        if (jlo >= jhi) continue;
        lo = c0 + jlo < lo ? c0 + jlo : lo;
        hi = c0 + jhi > hi ? c0 + jhi : hi;
      }
      if (lo > hi) lo = hi;
      for (int g = 0; g < it.nh; ++g) {
        ws.krange[g * ngr + q] = static_cast<int32_t>(lo);
        ws.krange[ng + g * ngr + q] = static_cast<int32_t>(hi);
      }
    }
    gemm<false, 1, true>(C, N, D, ka, lda_k, 1, qt, N, st, N, nullptr, ws.bpack, ws.krange);

    // ---- masks: partial tiles, key padding (selected, never added: NaN-safe)
    for (int32_t t = e; t < e2; ++t) {
      if (mrow[t] < 0) continue;
      const int64_t c0 = (static_cast<int64_t>(crow[t]) - crow[e]) * bs;
      const int64_t bc = imin(bs, C - c0);
      const int32_t* mk = P.maskT + static_cast<int64_t>(mrow[t]) * bs * rpad;
      for (int64_t j = 0; j < bc; ++j) {
        float* sj = st + (c0 + j) * N;
        const int32_t* mj = mk + j * rpad;
        for (int g = 0; g < it.nh; ++g)
          for (int64_t i = 0; i < rpad; i += W) {
            float* p = sj + g * rpad + i;
            vstore(p, vselect_mask(mj + i, vload(p), vset1(neg_inf)));
          }
      }
    }
    if (kpm != nullptr) {
      for (int64_t j = 0; j < C; ++j)
        if (!kpm[k0 + j])
          for (int64_t n = 0; n < N; ++n) st[j * N + n] = neg_inf;
    }

    // ---- online softmax down the key axis, 4 column vectors at a time
    for (int64_t n = 0; n < N; n += 4 * W) {
      const int64_t nvs = imin(4, (N - n) / W);
      float* sn = st + n;
      if (nvs == 4) softmax_cols<4>(sn, N, C, ws.m + n, ws.l + n, ws.alpha + n);
      else if (nvs == 3) softmax_cols<3>(sn, N, C, ws.m + n, ws.l + n, ws.alpha + n);
      else if (nvs == 2) softmax_cols<2>(sn, N, C, ws.m + n, ws.l + n, ws.alpha + n);
      else softmax_cols<1>(sn, N, C, ws.m + n, ws.l + n, ws.alpha + n);
    }

    // ---- O^T = alpha * O^T + V_run^T P^T
    const int64_t voff = it.b * P.v_sb + it.hk * P.v_sh + k0 * P.v_ss;
    const float* va;
    int64_t ldv;
    bool finite;
    if (dt == ::sparse_attn_cpu::kF32) {
      va = static_cast<const float*>(P.v) + voff;
      ldv = P.v_ss;
      finite = all_finite(va, C, Dv, ldv);
    } else {
      for (int64_t j = 0; j < C; ++j)
        cvt_row(elem_ptr(P.v, dt, voff + j * P.v_ss), dt, Dv, ws.vbuf + j * Dv);
      va = ws.vbuf;
      ldv = Dv;
      finite = all_finite(va, C, Dv, ldv);
    }
    if (finite) {
      gemm<true, 2>(Dv, N, C, va, 1, ldv, st, N, ot, N, ws.alpha, ws.bpack, ws.krange);
    } else {
      // NaN/Inf in V: multiply a cleaned copy (non-finite -> 0), then add the non-finite
      // values back only where p != 0, so that 0 * NaN never reaches a row that cannot
      // see the key (masked keys' K/V may hold anything).
      float* vc = ws.vclean;
      for (int64_t j = 0; j < C; ++j)
        for (int64_t d = 0; d < Dv; ++d) {
          const float x = va[j * ldv + d];
          vc[j * Dv + d] = x * 0.f == 0.f ? x : 0.f;
        }
      gemm<true, 2>(Dv, N, C, vc, 1, Dv, st, N, ot, N, ws.alpha, ws.bpack, ws.krange);
      for (int64_t j = 0; j < C; ++j)
        for (int64_t d = 0; d < Dv; ++d) {
          const float raw = va[j * ldv + d];
          if (raw * 0.f == 0.f) continue;
          const float* pj = st + j * N;
          float* od = ot + d * N;
          for (int64_t n = 0; n < N; ++n)
            if (pj[n] != 0.f) od[n] += pj[n] * raw;
        }
    }
    e = e2;
  }

  // ---- output rows: O / l, exactly 0 for rows that saw no key. Tiles of 16 queries:
  // ws.row [16][Dv] receives the transposed rows, then each row is copied out whole.
  for (int g = 0; g < it.nh; ++g) {
    const int64_t h = it.h0 + g;
    for (int64_t i0 = 0; i0 < rows; i0 += 16) {
      const int64_t ni = imin(16, rows - i0);
      float inv[16];
      for (int i = 0; i < 16; ++i) {
        const float l = ws.l[g * rpad + i0 + i];
        // no visible key: 0; a NaN sum (a visible NaN score) gives NaN like the reference
        inv[i] = l > 0.f ? 1.f / l : (l != l ? __builtin_nanf("") : 0.f);
      }
      const float* oc = ot + g * rpad + i0;
      for (int64_t d = 0; d < Dv; ++d) {
        const float* od = oc + d * N;
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) ws.row[i * Dv + d] = od[i] * inv[i];
      }
      for (int64_t i = 0; i < ni; ++i) {
        float* o = P.out + ((it.b * P.H + h) * P.S + q0 + i0 + i) * Dv;
        const float* src = ws.row + i * Dv;
        if (inv[i] == 0.f)  // exactly 0, even where O holds 0 * Inf = NaN
          for (int64_t d = 0; d < Dv; ++d) o[d] = 0.f;
        else
          for (int64_t d = 0; d < Dv; ++d) o[d] = src[d];
      }
    }
  }
}
