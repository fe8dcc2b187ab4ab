// Block-sparse attention on CPU: a flash-attention style loop over the CSR row of each
// (batch, query block, group of query heads sharing a K/V head), compiled as a small
// PyTorch C++ extension.
//
// Algorithm: FlashAttention (Dao et al., "FlashAttention: Fast and Memory-Efficient Exact
// Attention with IO-Awareness", NeurIPS 2022, Alg. 1) restricted to the key tiles a block
// layout stores. See attn_isa_body.h for the per-item computation (two register-blocked
// GEMMs per run of consecutive key blocks, masks selected to -inf, online softmax in base 2).
//
// Inputs: query [B, H, S, D], key [B, Hkv, S, D], value [B, Hkv, S, Dv] (H % Hkv == 0; query
// head h reads K/V head h / (H / Hkv), never copied), fp32 / fp16 / bf16; layout arrays of the
// layout's max length (row_ptr int32 [Hl, nQB + 1], col_idx / mask_idx int32 [Hl, nnz] with
// Hl = H or 1, masks uint8 [M, bs, bs]); optional key_padding_mask [B, S] (true = real
// token). Key blocks >= ceil(S / bs) are skipped and keys >= S never read.
//
// Work items: the query heads of one K/V head whose CSR rows are identical are processed
// together (their queries side by side as the columns of one score tile), so each K/V tile
// is read once for all of them; items are taken dynamically by torch's intra-op threads,
// longest rows first.
//
// Instruction sets: the body is compiled three times in this translation unit: portable
// scalar code, AVX2 + FMA + F16C, AVX-512F (GCC `#pragma GCC target` regions), and the copy
// to run is chosen per call from CPUID (__builtin_cpu_supports), so the binary does not depend
// on the machine that built it. SPARSE_ATTN_CPU_ISA=scalar|avx2|avx512|auto forces a path
// (one the CPU lacks is an error).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "attn_common.h"
#include "sa_op_schema.h"  // generated: SA_ATTENTION_ARRAYS_SCHEMA

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SA_X86_DISPATCH 1
#include <immintrin.h>
#else
#define SA_X86_DISPATCH 0
#endif

namespace {

namespace sa_scalar {
#define SA_ISA 0
#include "attn_isa_body.h"
#undef SA_ISA
}  // namespace sa_scalar

#if SA_X86_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace sa_avx2 {
#define SA_ISA 2
#include "attn_isa_body.h"
#undef SA_ISA
}  // namespace sa_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
namespace sa_avx512 {
#define SA_ISA 5
#include "attn_isa_body.h"
#undef SA_ISA
}  // namespace sa_avx512
#pragma GCC pop_options
#endif

using sparse_attn_cpu::Item;
using sparse_attn_cpu::Params;
using sparse_attn_cpu::Workspace;
using ItemFn = void (*)(const Params&, const Item&, const Workspace&);

enum Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"scalar", "avx2", "avx512"};
constexpr const char* kIsaEnv = "SPARSE_ATTN_CPU_ISA";

// Best ISA this CPU (and OS: libgcc checks XGETBV) runs.
Isa best_isa() {
#if SA_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return kAvx2;
#endif
  return kScalar;
}

// The ISA a call uses: the best one, or the one SPARSE_ATTN_CPU_ISA names.
Isa chosen_isa() {
  const Isa best = best_isa();
  const char* env = std::getenv(kIsaEnv);
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "auto") == 0) return best;
  for (int i = 0; i < 3; ++i) {
    if (std::strcmp(env, kIsaNames[i]) == 0) {
      TORCH_CHECK(i <= best, kIsaEnv, "=", env, " but this CPU supports at most ",
                  kIsaNames[best], "; unset it or choose scalar",
                  best >= kAvx2 ? ", avx2" : "", best >= kAvx512 ? ", avx512" : "");
      return static_cast<Isa>(i);
    }
  }
  TORCH_CHECK(false, kIsaEnv, "=", env, " is not one of auto, scalar, avx2, avx512");
  return best;
}

ItemFn item_fn(Isa isa) {
#if SA_X86_DISPATCH
  if (isa == kAvx512) return &sa_avx512::process_item;
  if (isa == kAvx2) return &sa_avx2::process_item;
#endif
  return &sa_scalar::process_item;
}

std::string isa_op() { return kIsaNames[chosen_isa()]; }

std::vector<std::string> supported_isas_op() {
  std::vector<std::string> out;
  for (int i = 0; i <= best_isa(); ++i) out.emplace_back(kIsaNames[i]);
  return out;
}

void check_layout(const int32_t* rp, const int32_t* ci, const int32_t* mi, int64_t heads,
                  int64_t nqb_layout, int64_t nnz, int64_t num_masks) {
  for (int64_t h = 0; h < heads; ++h) {
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

// 64-byte aligned fp32 scratch.
struct AlignedBuf {
  float* ptr = nullptr;
  explicit AlignedBuf(size_t n) {
    void* p = nullptr;
    if (posix_memalign(&p, 64, std::max<size_t>(n, 16) * sizeof(float)) != 0) throw std::bad_alloc();
    ptr = static_cast<float*>(p);
  }
  ~AlignedBuf() { std::free(ptr); }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
};

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return sparse_attn_cpu::kF32;
    case at::kHalf: return sparse_attn_cpu::kF16;
    case at::kBFloat16: return sparse_attn_cpu::kBF16;
    default: TORCH_CHECK_VALUE(false, "query/key/value must be float32, float16 or bfloat16, got ", t);
  }
  return -1;
}

//: Columns (query rows x heads) of one item at most, when several heads share a row.
constexpr int64_t kMaxItemCols = 256;
//: Keys per run of consecutive key blocks at most (at least one block).
constexpr int64_t kRunKeys = 128;

at::Tensor attention_arrays(const at::Tensor& query_in, const at::Tensor& key_in,
                            const at::Tensor& value_in, const at::Tensor& row_ptr_in,
                            const at::Tensor& col_idx_in, const at::Tensor& mask_idx_in,
                            const at::Tensor& masks_in,
                            const std::optional<at::Tensor>& key_padding_mask,
                            int64_t block_size, double scale_d) {
  TORCH_CHECK_VALUE(query_in.dim() == 4 && key_in.dim() == 4 && value_in.dim() == 4,
                    "query/key/value must be 4-D: query [B, H, S, D], key [B, Hkv, S, D], "
                    "value [B, Hkv, S, Dv]");
  const int64_t B = query_in.size(0), H = query_in.size(1), S = query_in.size(2);
  const int64_t D = query_in.size(3);
  const int64_t Hkv = key_in.size(1), Dv = value_in.size(3);
  TORCH_CHECK_VALUE(key_in.size(0) == B && key_in.size(2) == S && key_in.size(3) == D,
                    "key ", key_in.sizes(), " must be [B=", B, ", Hkv, S=", S, ", D=", D, "]");
  TORCH_CHECK_VALUE(Hkv >= 1 && H % Hkv == 0, "query heads H=", H,
                    " must be a multiple of key/value heads Hkv=", Hkv);
  TORCH_CHECK_VALUE(value_in.size(0) == B && value_in.size(1) == Hkv && value_in.size(2) == S,
                    "value ", value_in.sizes(), " must be [B=", B, ", Hkv=", Hkv, ", S=", S,
                    ", Dv]");
  TORCH_CHECK_VALUE(query_in.scalar_type() == key_in.scalar_type() &&
                        query_in.scalar_type() == value_in.scalar_type(),
                    "query/key/value must share one dtype");
  const int dt = dtype_code(query_in.scalar_type());
  TORCH_CHECK_VALUE(block_size >= 1, "block_size must be >= 1, got ", block_size);
  TORCH_CHECK_VALUE(row_ptr_in.dim() == 2 && (row_ptr_in.size(0) == H || row_ptr_in.size(0) == 1),
                    "row_ptr must be [H=", H, " or 1, nQB + 1], got ", row_ptr_in.sizes());
  const int64_t Hl = row_ptr_in.size(0);
  const int64_t bs = block_size;
  const int64_t nqb_layout = row_ptr_in.size(1) - 1;
  const int64_t nqb = (S + bs - 1) / bs;
  TORCH_CHECK_VALUE(nqb <= nqb_layout, "S = ", S, " needs ", nqb, " blocks of ", bs,
                    " but the layout has ", nqb_layout);
  TORCH_CHECK_VALUE(col_idx_in.dim() == 2 && col_idx_in.sizes() == mask_idx_in.sizes() &&
                        col_idx_in.size(0) == Hl,
                    "col_idx ", col_idx_in.sizes(), " and mask_idx ", mask_idx_in.sizes(),
                    " must both be [", Hl, ", nnz] like row_ptr's first dimension");
  TORCH_CHECK_VALUE(masks_in.dim() == 3 && masks_in.size(1) == bs && masks_in.size(2) == bs,
                    "masks must be [M, ", bs, ", ", bs, "], got ", masks_in.sizes());
  TORCH_CHECK_VALUE(row_ptr_in.scalar_type() == at::kInt && col_idx_in.scalar_type() == at::kInt &&
                        mask_idx_in.scalar_type() == at::kInt,
                    "row_ptr/col_idx/mask_idx must be int32");
  TORCH_CHECK_VALUE(masks_in.scalar_type() == at::kByte || masks_in.scalar_type() == at::kBool,
                    "masks must be uint8 (or bool)");
  TORCH_CHECK_VALUE(S <= INT32_MAX && B * H <= INT32_MAX, "sizes too large");

  const at::Tensor row_ptr = row_ptr_in.contiguous();
  const at::Tensor col_idx = col_idx_in.contiguous();
  const at::Tensor mask_idx = mask_idx_in.contiguous();
  const at::Tensor masks = masks_in.to(at::kByte).contiguous();
  const int64_t M = masks.size(0);
  const int64_t nnz = col_idx.size(1);
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  const int32_t* cp = col_idx.data_ptr<int32_t>();
  const int32_t* mp = mask_idx.data_ptr<int32_t>();
  check_layout(rp, cp, mp, Hl, nqb_layout, nnz, M);

  at::Tensor kpm;
  if (key_padding_mask.has_value() && key_padding_mask->defined()) {
    const at::Tensor& k = *key_padding_mask;
    TORCH_CHECK_VALUE(k.dim() == 2 && k.size(0) == B && k.size(1) >= S,
                      "key_padding_mask must be [B=", B, ", S=", S, "], got ", k.sizes());
    kpm = k.narrow(1, 0, S).ne(0).to(at::kByte).contiguous();
  }
  const Isa isa = chosen_isa();

  // Only the last dimension must be contiguous; other strides are followed as they are.
  auto last_contig = [](const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); };
  const at::Tensor q = last_contig(query_in);
  const at::Tensor k = last_contig(key_in);
  const at::Tensor v = last_contig(value_in);
  at::Tensor out = at::empty({B, H, S, Dv}, q.options().dtype(at::kFloat));
  if (B * H * S == 0 || Dv == 0) return out.to(query_in.scalar_type());

  // Partial-tile masks, transposed to key-major int32 (-1 visible, 0 hidden), rpad columns.
  const int64_t rpad = (bs + 15) / 16 * 16;
  std::vector<int32_t> maskT(static_cast<size_t>(std::max<int64_t>(M, 1) * bs * rpad), -1);
  {
    const uint8_t* mk = masks.data_ptr<uint8_t>();
    for (int64_t t = 0; t < M; ++t)
      for (int64_t i = 0; i < bs; ++i)
        for (int64_t j = 0; j < bs; ++j)
          maskT[(t * bs + j) * rpad + i] = mk[(t * bs + i) * bs + j] ? -1 : 0;
  }
  const int64_t ngroups = rpad / 16;
  std::vector<int32_t> mask_rows(static_cast<size_t>(std::max<int64_t>(M, 1) * ngroups * 2), 0);
  for (int64_t t = 0; t < M; ++t)
    for (int64_t q = 0; q < ngroups; ++q) {
      int64_t lo = bs, hi = 0;
      for (int64_t j = 0; j < bs; ++j)
        for (int64_t i = q * 16; i < q * 16 + 16; ++i)
          if (maskT[(t * bs + j) * rpad + i] != 0) {
            lo = std::min(lo, j);
            hi = std::max(hi, j + 1);
          }
      if (lo < hi) {
        mask_rows[(t * ngroups + q) * 2] = static_cast<int32_t>(lo);
        mask_rows[(t * ngroups + q) * 2 + 1] = static_cast<int32_t>(hi);
      }
    }

  // Work items: per (K/V head, query block), the G query heads of the group split into runs
  // of consecutive heads with identical CSR rows, each run cut into pieces of at most
  // kMaxItemCols columns; replicated over the batch; longest rows first.
  const int64_t G = H / Hkv;
  const int64_t heads_per_item = std::max<int64_t>(1, kMaxItemCols / rpad);
  auto row_of = [&](int64_t h, int64_t r, const int32_t** c, const int32_t** m) {
    const int64_t lh = Hl == 1 ? 0 : h;
    const int32_t* rrow = rp + lh * (nqb_layout + 1);
    *c = cp + lh * nnz + rrow[r];
    *m = mp + lh * nnz + rrow[r];
    return static_cast<int64_t>(rrow[r + 1] - rrow[r]);
  };
  std::vector<Item> base;
  std::vector<int64_t> cost;
  for (int64_t hk = 0; hk < Hkv; ++hk)
    for (int64_t r = 0; r < nqb; ++r) {
      int64_t h = hk * G;
      while (h < (hk + 1) * G) {
        const int32_t *c0, *m0;
        const int64_t n0 = row_of(h, r, &c0, &m0);
        int64_t h2 = h + 1;
        while (h2 < (hk + 1) * G && h2 - h < heads_per_item) {
          const int32_t *c1, *m1;
          const int64_t n1 = row_of(h2, r, &c1, &m1);
          if (n1 != n0 || (c1 != c0 && !std::equal(c0, c0 + n0, c1)) ||
              (m1 != m0 && !std::equal(m0, m0 + n0, m1)))
            break;
          ++h2;
        }
        int64_t blocks = 0;
        for (int64_t t = 0; t < n0; ++t) blocks += c0[t] < nqb;
        base.push_back(Item{0, static_cast<int32_t>(hk), static_cast<int32_t>(h),
                            static_cast<int32_t>(h2 - h), static_cast<int32_t>(r)});
        cost.push_back(blocks * (h2 - h));
        h = h2;
      }
    }
  std::vector<int64_t> order(base.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  std::vector<Item> items;
  items.reserve(base.size() * static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o : order) {
      Item it = base[o];
      it.b = static_cast<int32_t>(b);
      items.push_back(it);
    }

  Params P{};
  P.q = q.data_ptr();
  P.k = k.data_ptr();
  P.v = v.data_ptr();
  P.dtype = dt;
  P.q_sb = q.stride(0), P.q_sh = q.stride(1), P.q_ss = q.stride(2);
  P.k_sb = k.stride(0), P.k_sh = k.stride(1), P.k_ss = k.stride(2);
  P.v_sb = v.stride(0), P.v_sh = v.stride(1), P.v_ss = v.stride(2);
  P.S = S, P.D = D, P.Dv = Dv, P.bs = bs, P.rpad = rpad, P.nqb = nqb;
  P.qscale = static_cast<float>(scale_d * 1.4426950408889634);
  P.row_ptr = rp, P.col_idx = cp, P.mask_idx = mp;
  P.rp_stride = nqb_layout + 1, P.nnz = nnz, P.layout_heads = Hl;
  P.maskT = maskT.data();
  P.mask_rows = mask_rows.data();
  P.kpm = kpm.defined() ? kpm.data_ptr<uint8_t>() : nullptr;
  P.out = out.data_ptr<float>();
  P.H = H;
  P.run_keys = std::max<int64_t>(bs, kRunKeys / bs * bs);

  const ItemFn fn = item_fn(isa);
  const int64_t ncols = std::min<int64_t>(G, heads_per_item) * rpad;
  const int64_t total = static_cast<int64_t>(items.size());
  std::atomic<int64_t> next{0};
  const int nthreads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(total)));
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
    const int64_t rk = P.run_keys;
    AlignedBuf qt(D * ncols), st(rk * ncols), ot(Dv * ncols), m(ncols), l(ncols), al(ncols),
        kb(rk * D), vb(rk * Dv), vc(rk * Dv), row(16 * std::max(D, Dv)),
        bp(sparse_attn_cpu::kPackFloats);
    std::vector<int32_t> kr(static_cast<size_t>(2 * (ncols / 16 + 1)));
    const Workspace ws{qt.ptr, st.ptr, ot.ptr,  m.ptr,  l.ptr,     al.ptr,
                       kb.ptr, vb.ptr, vc.ptr, row.ptr, bp.ptr, kr.data()};
    for (;;) {
      const int64_t i = next.fetch_add(1);
      if (i >= total) break;
      fn(P, items[static_cast<size_t>(i)], ws);
    }
  });
  return query_in.scalar_type() == at::kFloat ? out : out.to(query_in.scalar_type());
}

}  // namespace

TORCH_LIBRARY(sparse_attn_cpu, m) {
  // The schema string comes from the Python op description (opspec.SCHEMA), written into
  // sa_op_schema.h in the build directory by cpu_ext.build().
  m.def(SA_ATTENTION_ARRAYS_SCHEMA);
  // No tensor arguments: catch-all kernels registered with the schema.
  m.def("isa() -> str", &isa_op);
  m.def("supported_isas() -> str[]", &supported_isas_op);
}

TORCH_LIBRARY_IMPL(sparse_attn_cpu, CPU, m) { m.impl("attention_arrays", &attention_arrays); }
