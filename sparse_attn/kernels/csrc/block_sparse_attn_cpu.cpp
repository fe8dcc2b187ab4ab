// Block-sparse attention on CPU: a flash-attention style loop over the CSR row of each
// (batch, head, query block), compiled as a small PyTorch C++ extension.
//
// Algorithm: FlashAttention (Dao et al., "FlashAttention: Fast and Memory-Efficient Exact
// Attention with IO-Awareness", NeurIPS 2022, Alg. 1) restricted to the key tiles a block
// layout stores (SPEC section 2): for each query block, consecutive stored key blocks are
// merged into one "run" of keys, S = scale * Q K^T is computed with one SGEMM per run, the
// partial-tile masks / key padding / out-of-range keys set scores to -inf, the online softmax
// (running max m, running sum l, rescale of the fp32 accumulator) is updated, and P V is
// accumulated with a second SGEMM. Rows that never see a key output exactly 0.
//
// Semantics are those of sparse_attn.kernels.block_sparse_attention (see cpu_ext.py):
// query/key [B, H, S, D], value [B, H, S, Dv], layout arrays for the layout's max length
// (row_ptr int32 [H, nQB + 1], col_idx / mask_idx int32 [H, nnz], masks uint8 [M, bs, bs]),
// optional key_padding_mask bool [B, S] (true = real token). Key blocks >= ceil(S / bs) are
// skipped and keys >= S are never read.
//
// Masked keys never reach the output even when their K/V hold NaN or Inf: masked scores are
// *selected* to -inf (never added to), exp(-inf) is exactly 0, and a run whose V rows hold a
// non-finite value is accumulated by a loop that skips p == 0 instead of the SGEMM
// (0 * NaN = NaN). One parallel region per call (libgomp's spinning barriers are costly on a
// loaded machine), work items taken dynamically, longest CSR rows first.
//
// GEMM: the BLAS sgemm_ that libtorch_cpu exports (MKL in the PyPI wheels), declared weak so
// that a torch built without it still loads; a portable loop is the fallback.
// Elementwise code (masking, exp, rescale) is compiled for AVX-512 / AVX2 / baseline x86-64
// with GCC target_clones (runtime dispatch), so the binary is portable across x86-64 CPUs.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

extern "C" {
// Fortran BLAS (LP64), exported by libtorch_cpu when torch is built with MKL/OpenBLAS.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
// MKL: per-thread thread count (returns the previous one; 0 = follow the global setting).
int MKL_Set_Num_Threads_Local(int nt) __attribute__((weak));
}

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define SA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SA_CLONES
#endif

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Row-major C[m, n] (ldc) = alpha * A[m, k] (lda) * op(B) + beta * C, with
// op(B) = B^T for B stored [n, k] (ldb) when b_transposed, else B stored [k, n] (ldb).
void gemm_rowmajor(bool b_transposed, int m, int n, int k, float alpha, const float* a, int lda,
                   const float* b, int ldb, float beta, float* c, int ldc) {
  if (m == 0 || n == 0) return;
  if (sgemm_ != nullptr) {
    // Column-major view: C^T[n, m] = op'(B) * A^T.
    const char ta = b_transposed ? 'T' : 'N';
    const char tb = 'N';
    sgemm_(&ta, &tb, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
    return;
  }
  for (int i = 0; i < m; ++i) {
    float* ci = c + static_cast<int64_t>(i) * ldc;
    for (int j = 0; j < n; ++j) ci[j] = beta == 0.f ? 0.f : beta * ci[j];
    const float* ai = a + static_cast<int64_t>(i) * lda;
    if (b_transposed) {
      for (int j = 0; j < n; ++j) {
        const float* bj = b + static_cast<int64_t>(j) * ldb;
        float s = 0.f;
        for (int t = 0; t < k; ++t) s += ai[t] * bj[t];
        ci[j] += alpha * s;
      }
    } else {
      for (int t = 0; t < k; ++t) {
        const float at = alpha * ai[t];
        const float* bt = b + static_cast<int64_t>(t) * ldb;
        for (int j = 0; j < n; ++j) ci[j] += at * bt[j];
      }
    }
  }
}

// exp(x) in fp32, about 2 ulp (Cephes expf polynomial, range reduction x = n ln2 + r).
// Exactly 0 for x < -87.33 (so exp(-inf) == 0), +inf above 88.72, NaN stays NaN.
// Written branch-free so that GCC vectorises the loops that call it.
inline float exp_f32(float x) {
  const float hi = 88.3762626647949f, lo = -87.3365447504f;
  float xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  // Round to nearest integer with the 1.5 * 2^23 trick (vectorises; no floor() call).
  const float shifter = 12582912.0f;
  const float n = (xc * 1.44269504088896341f + shifter) - shifter;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &e, sizeof(float));
  float out = y * two_n;
  out = x < lo ? 0.f : out;
  out = x > 88.7228391f ? std::numeric_limits<float>::infinity() : out;
  return out;
}

constexpr int kLanes = 16;

// 16 floats as one GCC vector (lowered to AVX-512, 2 x AVX2 or 4 x SSE per clone).
typedef float vf16 __attribute__((vector_size(64)));

// max over s[0:n], ignoring NaN (NaN scores still propagate through exp and the sum).
inline float row_max(const float* s, int n) {
  vf16 lane;
  for (int t = 0; t < kLanes; ++t) lane[t] = kNegInf;
  int j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    vf16 x;
    std::memcpy(&x, s + j, sizeof(x));
    lane = x > lane ? x : lane;
  }
  float mx = kNegInf;
  for (; j < n; ++j) mx = s[j] > mx ? s[j] : mx;
  for (int t = 0; t < kLanes; ++t) mx = lane[t] > mx ? lane[t] : mx;
  return mx;
}

// s[j] = exp(s[j] - shift); returns the sum (lane-wise partial sums, then reduced).
inline float exp_inplace_sum(float* s, int n, float shift) {
  for (int j = 0; j < n; ++j) s[j] = exp_f32(s[j] - shift);
  float lane[kLanes];
  for (int t = 0; t < kLanes; ++t) lane[t] = 0.f;
  int j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int t = 0; t < kLanes; ++t) lane[t] += s[j + t];
  float sum = 0.f;
  for (; j < n; ++j) sum += s[j];
  for (int t = 0; t < kLanes; ++t) sum += lane[t];
  return sum;
}

// Scores of one (partial) tile: s[i, j] = -inf where mask[i, j] == 0. s has row stride lds.
SA_CLONES void apply_tile_mask(float* s, int lds, const uint8_t* mask, int bs, int rows,
                               int cols) {
  for (int i = 0; i < rows; ++i) {
    float* si = s + static_cast<int64_t>(i) * lds;
    const uint8_t* mi = mask + static_cast<int64_t>(i) * bs;
    for (int j = 0; j < cols; ++j) si[j] = mi[j] ? si[j] : kNegInf;
  }
}

// Online-softmax update of `rows` rows of a run of `cols` keys (FlashAttention Alg. 1,
// lines 9-12). On entry s holds masked scores; on exit it holds p = exp(s - m_new).
// m, l: running max / sum per row; alpha[i] receives exp(m_old - m_new) (the factor the
// accumulator row must be multiplied by). Rows whose max stays -inf get p = 0, alpha = 1.
SA_CLONES void softmax_update(float* s, int lds, int rows, int cols, float* m, float* l,
                              float* alpha) {
  for (int i = 0; i < rows; ++i) {
    float* si = s + static_cast<int64_t>(i) * lds;
    const float mx = row_max(si, cols);
    const float m_old = m[i];
    const float m_new = mx > m_old ? mx : m_old;
    if (m_new == kNegInf) {  // nothing visible yet in this row: p = 0 everywhere
      for (int j = 0; j < cols; ++j) si[j] = 0.f;
      alpha[i] = 1.f;
      continue;
    }
    const float sum = exp_inplace_sum(si, cols, m_new);
    const float a = m_old == kNegInf ? 0.f : exp_f32(m_old - m_new);
    alpha[i] = a;
    l[i] = l[i] * a + sum;
    m[i] = m_new;
  }
}

SA_CLONES void scale_rows(float* acc, int ldacc, int rows, int cols, const float* alpha) {
  for (int i = 0; i < rows; ++i) {
    const float a = alpha[i];
    if (a == 1.f) continue;
    float* ai = acc + static_cast<int64_t>(i) * ldacc;
    for (int j = 0; j < cols; ++j) ai[j] *= a;
  }
}

// acc[i, :] += sum_j p[i, j] * v[j, :], skipping p == 0 exactly (NaN/Inf-safe path).
SA_CLONES void pv_skip_zero(const float* p, int ldp, const float* v, int ldv, float* acc,
                            int ldacc, int rows, int cols, int dv) {
  for (int i = 0; i < rows; ++i) {
    const float* pi = p + static_cast<int64_t>(i) * ldp;
    float* ai = acc + static_cast<int64_t>(i) * ldacc;
    for (int j = 0; j < cols; ++j) {
      const float pj = pi[j];
      if (pj == 0.f) continue;
      const float* vj = v + static_cast<int64_t>(j) * ldv;
      for (int t = 0; t < dv; ++t) ai[t] += pj * vj[t];
    }
  }
}

SA_CLONES void finalize_rows(const float* acc, int ldacc, const float* l, int rows, int dv,
                             float* out, int ldo) {
  for (int i = 0; i < rows; ++i) {
    const float* ai = acc + static_cast<int64_t>(i) * ldacc;
    float* oi = out + static_cast<int64_t>(i) * ldo;
    if (l[i] > 0.f) {
      const float inv = 1.f / l[i];
      for (int t = 0; t < dv; ++t) oi[t] = ai[t] * inv;
    } else {  // no visible key (or only NaN scores: l is NaN, keep the NaN like the reference)
      const float fill = std::isnan(l[i]) ? std::numeric_limits<float>::quiet_NaN() : 0.f;
      for (int t = 0; t < dv; ++t) oi[t] = fill;
    }
  }
}

// True when v[0:n] holds no NaN/Inf: x * 0 is 0 for finite x and NaN otherwise
// (lane-wise sums so that the loop vectorises without -ffast-math).
SA_CLONES bool all_finite(const float* v, int64_t n) {
  float lane[kLanes];
  for (int t = 0; t < kLanes; ++t) lane[t] = 0.f;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int t = 0; t < kLanes; ++t) lane[t] += v[j + t] * 0.f;
  float acc = 0.f;
  for (; j < n; ++j) acc += v[j] * 0.f;
  for (int t = 0; t < kLanes; ++t) acc += lane[t];
  return acc == 0.f;
}

void check_layout(const at::Tensor& row_ptr, const at::Tensor& col_idx,
                  const at::Tensor& mask_idx, int64_t num_heads, int64_t nqb_layout,
                  int64_t num_masks) {
  const int64_t nnz = col_idx.size(1);
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  const int32_t* ci = col_idx.data_ptr<int32_t>();
  const int32_t* mi = mask_idx.data_ptr<int32_t>();
  for (int64_t h = 0; h < num_heads; ++h) {
    const int32_t* r = rp + h * (nqb_layout + 1);
    TORCH_CHECK_VALUE(r[0] == 0, "row_ptr[", h, ", 0] must be 0, got ", r[0]);
    for (int64_t q = 0; q < nqb_layout; ++q) {
      TORCH_CHECK_VALUE(r[q + 1] >= r[q], "row_ptr[", h, "] must be non-decreasing, got ",
                        r[q], " then ", r[q + 1], " at row ", q);
    }
    TORCH_CHECK_VALUE(r[nqb_layout] <= nnz, "row_ptr[", h, ", -1] = ", r[nqb_layout],
                      " exceeds col_idx's nnz = ", nnz);
    for (int64_t e = 0; e < r[nqb_layout]; ++e) {
      const int32_t c = ci[h * nnz + e];
      const int32_t k = mi[h * nnz + e];
      TORCH_CHECK_VALUE(c >= 0 && c < nqb_layout, "col_idx[", h, ", ", e, "] = ", c,
                        " is outside 0..", nqb_layout - 1);
      TORCH_CHECK_VALUE(k >= -1 && k < num_masks, "mask_idx[", h, ", ", e, "] = ", k,
                        " is outside -1..", num_masks - 1, " (M = ", num_masks, " masks)");
    }
  }
}

at::Tensor attention_arrays(const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, const at::Tensor& row_ptr_in,
                            const at::Tensor& col_idx_in, const at::Tensor& mask_idx_in,
                            const at::Tensor& masks_in,
                            const std::optional<at::Tensor>& key_padding_mask,
                            int64_t block_size, double scale_d) {
  TORCH_CHECK_VALUE(query.dim() == 4 && key.dim() == 4 && value.dim() == 4,
                    "query/key/value must be [B, H, S, D]");
  const int64_t B = query.size(0), H = query.size(1), S = query.size(2), D = query.size(3);
  const int64_t Dv = value.size(3);
  TORCH_CHECK_VALUE(key.sizes() == query.sizes(), "key ", key.sizes(), " must match query ",
                    query.sizes());
  TORCH_CHECK_VALUE(value.size(0) == B && value.size(1) == H && value.size(2) == S,
                    "value ", value.sizes(), " must be [B, H, S, Dv] like query ", query.sizes());
  TORCH_CHECK_VALUE(block_size >= 1, "block_size must be >= 1, got ", block_size);
  TORCH_CHECK_VALUE(row_ptr_in.dim() == 2 && row_ptr_in.size(0) == H,
                    "row_ptr must be [H=", H, ", nQB + 1], got ", row_ptr_in.sizes());
  const int64_t bs = block_size;
  const int64_t nqb_layout = row_ptr_in.size(1) - 1;
  const int64_t nqb = (S + bs - 1) / bs;
  TORCH_CHECK_VALUE(nqb <= nqb_layout, "S = ", S, " needs ", nqb, " blocks of ", bs,
                    " but the layout has ", nqb_layout);
  TORCH_CHECK_VALUE(col_idx_in.dim() == 2 && col_idx_in.sizes() == mask_idx_in.sizes() &&
                        col_idx_in.size(0) == H,
                    "col_idx ", col_idx_in.sizes(), " and mask_idx ", mask_idx_in.sizes(),
                    " must both be [H=", H, ", nnz]");
  TORCH_CHECK_VALUE(masks_in.dim() == 3 && masks_in.size(1) == bs && masks_in.size(2) == bs,
                    "masks must be [M, ", bs, ", ", bs, "], got ", masks_in.sizes());
  TORCH_CHECK_VALUE(row_ptr_in.scalar_type() == at::kInt && col_idx_in.scalar_type() == at::kInt &&
                        mask_idx_in.scalar_type() == at::kInt,
                    "row_ptr/col_idx/mask_idx must be int32");
  TORCH_CHECK_VALUE(masks_in.scalar_type() == at::kByte || masks_in.scalar_type() == at::kBool,
                    "masks must be uint8 (or bool)");
  TORCH_CHECK_VALUE(D <= INT32_MAX && Dv <= INT32_MAX && S <= INT32_MAX, "sizes too large");

  const at::Tensor row_ptr = row_ptr_in.contiguous();
  const at::Tensor col_idx = col_idx_in.contiguous();
  const at::Tensor mask_idx = mask_idx_in.contiguous();
  const at::Tensor masks = masks_in.contiguous();
  const int64_t M = masks.size(0);
  check_layout(row_ptr, col_idx, mask_idx, H, nqb_layout, M);

  at::Tensor kpm;
  if (key_padding_mask.has_value() && key_padding_mask->defined()) {
    const at::Tensor& k = *key_padding_mask;
    TORCH_CHECK_VALUE(k.dim() == 2 && k.size(0) == B && k.size(1) >= S,
                      "key_padding_mask must be [B=", B, ", S=", S, "], got ", k.sizes());
    kpm = k.narrow(1, 0, S).to(at::kBool).contiguous();
  }

  // fp32 compute: fp16/bf16 -> fp32 is exact, and fp32 is what the contract accumulates in.
  const at::Tensor q = query.to(at::kFloat).contiguous();
  const at::Tensor k = key.to(at::kFloat).contiguous();
  const at::Tensor v = value.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({B, H, S, Dv}, q.options());
  if (B * H * S == 0) return out.to(query.scalar_type());
  if (Dv == 0) return out.to(query.scalar_type());

  const float scale = static_cast<float>(scale_d);
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  const int32_t* cp = col_idx.data_ptr<int32_t>();
  const int32_t* mp = mask_idx.data_ptr<int32_t>();
  const uint8_t* mk = reinterpret_cast<const uint8_t*>(masks.data_ptr());
  const bool* kpmp = kpm.defined() ? kpm.data_ptr<bool>() : nullptr;
  const int64_t nnz = col_idx.size(1);

  // Work items (h, query block) sorted by decreasing number of key blocks, replicated over
  // the batch, taken dynamically by the threads (longest first keeps the threads balanced
  // when a few rows are global).
  std::vector<int64_t> cost(static_cast<size_t>(H * nqb));
  for (int64_t h = 0; h < H; ++h)
    for (int64_t r = 0; r < nqb; ++r) {
      int64_t c = 0;
      for (int32_t e = rp[h * (nqb_layout + 1) + r]; e < rp[h * (nqb_layout + 1) + r + 1]; ++e)
        c += cp[h * nnz + e] < nqb;
      cost[h * nqb + r] = c;
    }
  std::vector<int64_t> order(cost.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  const int64_t total = B * H * nqb;
  const int64_t max_run_blocks = std::max<int64_t>(1, 512 / bs);
  const int64_t max_run = max_run_blocks * bs;
  std::atomic<int64_t> next{0};

  const int nthreads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(total)));
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
    // One thread per SGEMM: the work is already split over the threads, and nested MKL
    // teams would oversubscribe the cores (torch.set_num_threads also sets MKL's count).
    const int mkl_prev = MKL_Set_Num_Threads_Local != nullptr ? MKL_Set_Num_Threads_Local(1) : 0;
    std::vector<float> sbuf(static_cast<size_t>(bs * max_run));
    std::vector<float> acc(static_cast<size_t>(bs * Dv));
    std::vector<float> m(static_cast<size_t>(bs)), l(static_cast<size_t>(bs)),
        alpha(static_cast<size_t>(bs));
    std::vector<uint8_t> colmask(static_cast<size_t>(max_run));
    for (;;) {
      const int64_t item = next.fetch_add(1);
      if (item >= total) break;
      const int64_t b = item / (H * nqb);
      const int64_t hr = order[item % (H * nqb)];
      const int64_t h = hr / nqb, r = hr % nqb;
      const int64_t bh = b * H + h;
      const int64_t q0 = r * bs;
      const int rows = static_cast<int>(std::min(bs, S - q0));
      const float* qb = qp + (bh * S + q0) * D;
      std::fill(acc.begin(), acc.begin() + rows * Dv, 0.f);
      std::fill(m.begin(), m.begin() + rows, kNegInf);
      std::fill(l.begin(), l.begin() + rows, 0.f);
      const int32_t e_begin = rp[h * (nqb_layout + 1) + r];
      const int32_t e_end = rp[h * (nqb_layout + 1) + r + 1];
      const int32_t* crow = cp + h * nnz;
      const int32_t* mrow = mp + h * nnz;
      int32_t e = e_begin;
      while (e < e_end) {
        if (crow[e] >= nqb) {  // cropped away: key block beyond the request's S
          ++e;
          continue;
        }
        // A run: consecutive key blocks (c, c+1, ...), at most max_run_blocks of them.
        int32_t e2 = e + 1;
        while (e2 < e_end && e2 - e < max_run_blocks && crow[e2] == crow[e2 - 1] + 1 &&
               crow[e2] < nqb)
          ++e2;
        const int64_t k0 = static_cast<int64_t>(crow[e]) * bs;
        const int cols = static_cast<int>(std::min<int64_t>((crow[e2 - 1] + 1) * bs, S) - k0);
        const int lds = cols;
        float* s = sbuf.data();
        const float* kb = kp + (bh * S + k0) * D;
        const float* vb = vp + (bh * S + k0) * Dv;
        gemm_rowmajor(true, rows, cols, static_cast<int>(D), scale, qb, static_cast<int>(D), kb,
                      static_cast<int>(D), 0.f, s, lds);
        for (int32_t t = e; t < e2; ++t) {
          if (mrow[t] >= 0) {
            const int c0 = static_cast<int>((crow[t] - crow[e]) * bs);
            const int bc = static_cast<int>(std::min<int64_t>(bs, cols - c0));
            apply_tile_mask(s + c0, lds, mk + static_cast<int64_t>(mrow[t]) * bs * bs,
                            static_cast<int>(bs), rows, bc);
          }
        }
        bool any_pad = false;
        if (kpmp != nullptr) {
          const bool* kr = kpmp + b * S + k0;
          for (int j = 0; j < cols; ++j) any_pad |= !kr[j];
          if (any_pad) {
            for (int j = 0; j < cols; ++j) colmask[j] = kr[j] ? 1 : 0;
            for (int i = 0; i < rows; ++i) {
              float* si = s + static_cast<int64_t>(i) * lds;
              for (int j = 0; j < cols; ++j) si[j] = colmask[j] ? si[j] : kNegInf;
            }
          }
        }
        softmax_update(s, lds, rows, cols, m.data(), l.data(), alpha.data());
        scale_rows(acc.data(), static_cast<int>(Dv), rows, static_cast<int>(Dv), alpha.data());
        // V rows of the run are contiguous; a NaN/Inf among them sends the run to the loop
        // that skips p == 0 (the scan costs 1/(2 * rows) of the P V product).
        if (all_finite(vb, static_cast<int64_t>(cols) * Dv)) {
          gemm_rowmajor(false, rows, static_cast<int>(Dv), cols, 1.f, s, lds, vb,
                        static_cast<int>(Dv), 1.f, acc.data(), static_cast<int>(Dv));
        } else {
          pv_skip_zero(s, lds, vb, static_cast<int>(Dv), acc.data(), static_cast<int>(Dv), rows,
                       cols, static_cast<int>(Dv));
        }
        e = e2;
      }
      finalize_rows(acc.data(), static_cast<int>(Dv), l.data(), rows, static_cast<int>(Dv),
                    op + (bh * S + q0) * Dv, static_cast<int>(Dv));
    }
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(mkl_prev);
  });
  return query.scalar_type() == at::kFloat ? out : out.to(query.scalar_type());
}

}  // namespace

TORCH_LIBRARY(sparse_attn_cpu, m) {
  m.def(
      "attention_arrays(Tensor query, Tensor key, Tensor value, Tensor row_ptr, "
      "Tensor col_idx, Tensor mask_idx, Tensor masks, Tensor? key_padding_mask, "
      "int block_size, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparse_attn_cpu, CPU, m) { m.impl("attention_arrays", &attention_arrays); }
