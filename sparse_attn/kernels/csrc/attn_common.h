// Shared declarations of the block-sparse attention CPU kernel: the parameters of one call
// and one work item, seen by the generic driver (block_sparse_attn_cpu.cpp) and by each
// ISA-specific copy of the kernel body (attn_isa_body.h).
#pragma once

#include <cstdint>

namespace sparse_attn_cpu {

// Input element types (query, key and value share one).
enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// Everything a work item needs, fixed for one call. Strides are in elements; the last
// dimension of query/key/value is contiguous (stride 1).
struct Params {
  const void* q;
  const void* k;
  const void* v;
  int dtype;
  int64_t q_sb, q_sh, q_ss;
  int64_t k_sb, k_sh, k_ss;
  int64_t v_sb, v_sh, v_ss;
  int64_t S, D, Dv;
  int64_t bs;     // block size (tokens per block side)
  int64_t rpad;   // bs rounded up to 16: columns one query head takes in the score tile
  int64_t nqb;    // query/key blocks of this request, ceil(S / bs)
  float qscale;   // softmax scale * log2(e): scores are kept in base 2
  // CSR layout (row_ptr [Hl, nqb_layout + 1], col_idx / mask_idx [Hl, nnz]); Hl = 1 or H.
  const int32_t* row_ptr;
  const int32_t* col_idx;
  const int32_t* mask_idx;
  int64_t rp_stride;  // nqb_layout + 1
  int64_t nnz;
  int64_t layout_heads;  // Hl
  // Partial-tile masks transposed to key-major int32: maskT[k][key j][query i] = -1 (visible)
  // or 0, i < rpad (columns i >= bs are -1, they only feed discarded padding columns).
  const int32_t* maskT;
  // Visible key rows of each partial-tile mask per group of 16 query columns:
  // mask_rows[(k * rpad / 16 + q) * 2 + {0, 1}] = [first, last + 1) key j visible to any
  // column of group q of mask k (0, 0 when none), so the GEMMs skip rows all-masked there.
  const int32_t* mask_rows;
  const uint8_t* kpm;  // key_padding_mask [B, S] (1 = real token) or nullptr
  float* out;          // fp32 [B, H, S, Dv] contiguous
  int64_t H;
  int64_t run_keys;  // at most this many keys per run of consecutive key blocks (>= bs)
};

// One unit of work: query block r of heads h0 .. h0 + nh - 1 of batch b, all reading K/V
// head hk and sharing one CSR row (so each K/V tile is loaded once for the nh heads).
struct Item {
  int32_t b, hk, h0, nh, r;
};

// Per-thread scratch (fp32, 64-byte aligned), sized by the driver for the largest item.
struct Workspace {
  float* qt;     // [D][N]   scaled Q^T of the item, panel-major (see gemm in attn_isa_body.h)
  float* st;     // [run_keys][N] scores, then probabilities (key-major)
  float* ot;     // [Dv][N]  output accumulator, transposed
  float* m;      // [N] running max (base 2)
  float* l;      // [N] running sum
  float* alpha;  // [N] rescale factor of the current run
  float* kbuf;   // [run_keys][D]  K run converted to fp32 (16-bit inputs)
  float* vbuf;   // [run_keys][Dv] V run converted to fp32 (16-bit inputs)
  float* vclean; // [run_keys][Dv] V run with NaN/Inf replaced by 0 (rare path)
  float* row;    // [16][max(D, Dv)] conversion / transposition scratch
  float* bpack;  // [kPackFloats] one packed panel of B for the GEMMs (contiguous rows)
  int32_t* krange;  // [2][N / 16] visible key rows [lo, hi) of the run per 16-column group
};

// Floats of Workspace::bpack: KC (128) rows x 64 columns, the largest panel of any ISA.
constexpr int64_t kPackFloats = 128 * 64;

}  // namespace sparse_attn_cpu
