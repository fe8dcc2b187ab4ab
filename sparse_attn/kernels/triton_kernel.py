"""Block-sparse flash attention as a Triton kernel, its launcher, and its AOT (PTX) compiler.

This module knows nothing of TensorRT or of :class:`~sparse_attn.layout.BlockLayout`: it takes
the layout as tensors (docs/spec.md: CSR ``row_ptr [LH, nQB+1]``, ``col_idx [LH, nnz]``,
``mask_idx [LH, nnz]``, ``masks [M, bs, bs]``) and launches one program per
(query tile, batch x query head). A query tile is ``block_m`` rows of a layout block, and each
stored key block is consumed ``block_n`` keys at a time (:func:`launch_config`), so head dims
up to 256 fit in registers and shared memory. Grouped-query K/V (``key``/``value`` with
``Hkv`` heads, ``H % Hkv == 0``): query head ``h`` reads K/V head ``h // (H // Hkv)`` through
its pointer, nothing is copied.

Algorithm: FlashAttention's tiled online softmax (Dao et al., "FlashAttention: Fast and
Memory-Efficient Exact Attention with IO-Awareness", NeurIPS 2022, Algorithm 1; forward pass
only) restricted to the key blocks listed in the CSR row of the query block, as in block-sparse
FlashAttention (same paper, Sec. 3.3). Per stored tile: full tiles are used as they are, partial
tiles apply their ``uint8`` mask; keys ``>= S`` of the request and padded keys
(``key_padding_mask`` False) are masked; scores and probabilities of masked keys are forced to
``-inf`` / ``0`` and the K/V rows of keys that no query of the tile can see are zeroed before the
dot products, so NaN/Inf stored there never reach the output. Softmax statistics and the
accumulator are fp32; a query row with no visible key outputs exactly 0.

The ``@triton.jit`` decoration is deferred (see :func:`get_kernel`): the same function is built
as a compiled :class:`triton.runtime.jit.JITFunction` for CUDA tensors and for AOT compilation,
and as Triton's CPU interpreter (:class:`triton.runtime.interpreter.InterpretedFunction`) for
CPU tensors. Triton reads ``TRITON_INTERPRET`` when a function is decorated, so deferring the
decoration makes the choice independent of import order.

Scalar arguments are ordered for TensorRT's AOT plugin launch (inputs, extra int32 scalars,
outputs): see :data:`POINTER_INPUTS`, :data:`INT_ARGS`, :data:`OUTPUT_ARGS`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import triton
import triton.language as tl

from sparse_attn import opspec

#: Pointer arguments of the kernel that are op inputs, in op input order.
POINTER_INPUTS = ("Q", "K", "V", "RowPtr", "ColIdx", "MaskIdx", "Masks", "Kpm")
#: Integer scalar arguments, in kernel order (AOT: the runtime ones are TensorRT extra args).
INT_ARGS = (
    "seq_len",
    "num_heads",
    "kv_group",
    "stride_qb",
    "stride_qh",
    "stride_qs",
    "stride_kb",
    "stride_kh",
    "stride_ks",
    "stride_vb",
    "stride_vh",
    "stride_vs",
    "stride_ob",
    "stride_oh",
    "stride_os",
    "stride_kpm_b",
    "layout_stride_rp",
    "layout_stride_ci",
)
#: Output pointer arguments.
OUTPUT_ARGS = ("Out",)
#: Compile-time constants (``tl.constexpr``) and the float scale (a constant in AOT builds).
CONST_ARGS = (
    "scale",
    "BS",
    "BLOCK_M",
    "BLOCK_N",
    "M_SPLIT",
    "D",
    "D_PAD",
    "DV",
    "DV_PAD",
    "HAS_KPM",
    "UPCAST_DOT",
    "PV_SPLIT",
    "NONFINITE_V",
)
#: Default of ``PV_SPLIT`` for 16-bit inputs (see :func:`compile_constants`).
PRECISE_PV = True


# Reductions go through ``tl.reduce`` with Triton's own combine functions instead of ``tl.max``
# / ``tl.sum``: those two are ``@triton.jit`` functions decorated when ``triton.language`` is
# imported, so with ``TRITON_INTERPRET=1`` set after that import they are compiled-only and the
# interpreter refuses them. ``tl.reduce`` is a builtin, and the interpreter recognises these
# combine functions and reduces with numpy.
_MAX_COMBINE = tl.standard._elementwise_max
_SUM_COMBINE = tl.standard._sum_combine


def _block_sparse_attn_fwd(
    Q,
    K,
    V,
    RowPtr,
    ColIdx,
    MaskIdx,
    Masks,
    Kpm,
    seq_len,
    num_heads,
    kv_group,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_ob,
    stride_oh,
    stride_os,
    stride_kpm_b,
    layout_stride_rp,
    layout_stride_ci,
    Out,
    scale,
    BS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    M_SPLIT: tl.constexpr,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    DV: tl.constexpr,
    DV_PAD: tl.constexpr,
    HAS_KPM: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    PV_SPLIT: tl.constexpr,
    NONFINITE_V: tl.constexpr,
):
    # program: one query tile (BLOCK_M rows of query block qblk) of one (batch, query head).
    # Axis 0 runs over (query tile, query head of the K/V group) with the group innermost, so
    # the kv_group query heads reading one K/V head (h // kv_group) run side by side and share
    # its K/V tiles in L2; axis 1 over (batch, K/V head).
    pid_m = tl.program_id(0)
    pid_bk = tl.program_id(1)
    g = pid_m % kv_group
    tile = pid_m // kv_group
    qblk = tile // M_SPLIT
    sub = tile % M_SPLIT
    num_kv_heads = num_heads // kv_group
    b = pid_bk // num_kv_heads
    hk = pid_bk % num_kv_heads  # grouped-query attention: the K/V head this program reads
    h = hk * kv_group + g
    # 64-bit offsets: B*H*S*D may exceed 2**31 elements.
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    hk64 = hk.to(tl.int64)

    loc_m = sub * BLOCK_M + tl.arange(0, BLOCK_M)  # row inside the layout block
    offs_m = qblk * BS + loc_m
    row_ok = (loc_m < BS) & (offs_m < seq_len)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    d_ok = offs_d < D
    dv_ok = offs_dv < DV

    q_base = Q + b64 * stride_qb + h64 * stride_qh
    k_base = K + b64 * stride_kb + hk64 * stride_kh
    v_base = V + b64 * stride_vb + hk64 * stride_vh
    q = tl.load(
        q_base + offs_m.to(tl.int64)[:, None] * stride_qs + offs_d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )

    qk_scale = scale * 1.4426950408889634  # softmax in base 2
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, DV_PAD], 0.0, dtype=tl.float32)

    rp = RowPtr + h * layout_stride_rp + qblk
    start = tl.load(rp)
    end = tl.load(rp + 1)
    n_kblocks = (seq_len + BS - 1) // BS
    ci = ColIdx + h * layout_stride_ci
    mi_base = MaskIdx + h * layout_stride_ci
    for e in range(start, end):
        kb = tl.load(ci + e)
        if kb < n_kblocks:  # crop: key blocks past the request's length are never read
            midx = tl.load(mi_base + e)
            # the key block in chunks of BLOCK_N keys (one chunk when BLOCK_N covers it)
            for n0 in range(0, BS, BLOCK_N):
                loc_n = n0 + tl.arange(0, BLOCK_N)
                offs_n = kb * BS + loc_n
                key_ok = (loc_n < BS) & (offs_n < seq_len)
                if HAS_KPM:
                    pad = tl.load(Kpm + b64 * stride_kpm_b + offs_n, mask=key_ok, other=0)
                    key_ok = key_ok & (pad != 0)
                visible = row_ok[:, None] & key_ok[None, :]
                if midx >= 0:  # partial tile: apply its mask
                    tmask = tl.load(
                        Masks
                        + midx.to(tl.int64) * (BS * BS)
                        + loc_m[:, None] * BS
                        + loc_n[None, :],
                        mask=(loc_m < BS)[:, None] & (loc_n < BS)[None, :],
                        other=0,
                    )
                    visible = visible & (tmask != 0)
                # keys that no query of this tile sees: zero K and V so NaN/Inf cannot leak
                col_used = tl.reduce(visible.to(tl.int32), 0, _MAX_COMBINE) > 0
                k = tl.load(
                    k_base + offs_n.to(tl.int64)[:, None] * stride_ks + offs_d[None, :],
                    mask=key_ok[:, None] & d_ok[None, :],
                    other=0.0,
                )
                k = tl.where(col_used[:, None], k, 0.0)
                v_ptrs = v_base + offs_n.to(tl.int64)[:, None] * stride_vs + offs_dv[None, :]
                v_mask = key_ok[:, None] & dv_ok[None, :]
                v = tl.load(v_ptrs, mask=v_mask, other=0.0)
                v = tl.where(col_used[:, None], v, 0.0)
                # Non-finite V of a key that only some rows of the tile see: p = 0 for the
                # other rows, but 0 * NaN = NaN inside the dot. Clean V, then restore NaN/Inf
                # exactly for the rows that do see such a key (rare branch).
                if NONFINITE_V:
                    v32 = v.to(tl.float32)  # (the interpreter compares bf16 as raw bits)
                    v_bad = (v32 != v32) | (tl.abs(v32) == float("inf"))
                    n_bad = tl.reduce(
                        tl.reduce(v_bad.to(tl.int32), 1, _MAX_COMBINE), 0, _MAX_COMBINE
                    )
                    v = tl.where(v_bad, 0.0, v)
                if UPCAST_DOT:  # interpreter: its tl.dot multiplies bf16 bit patterns as ints
                    s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
                else:
                    s = tl.dot(q, tl.trans(k), input_precision="ieee")
                s = s * qk_scale
                s = tl.where(visible, s, float("-inf"))
                m_new = tl.maximum(m_i, tl.reduce(s, 1, _MAX_COMBINE))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp2(m_i - m_safe)
                p = tl.exp2(s - m_safe[:, None])
                p = tl.where(visible, p, 0.0)
                l_i = l_i * alpha + tl.reduce(p, 1, _SUM_COMBINE)
                # P @ V with P rounded to V's dtype (tensor cores). With PV_SPLIT the rounding
                # error of P is carried by a second product: P = P_hi + P_lo, both in V's
                # dtype, which keeps 16-bit outputs within their own rounding for large |V|.
                p_hi = p.to(v.dtype)
                if UPCAST_DOT:  # same rounding of p as the compiled kernel, fp32 product
                    pv = tl.dot(p_hi.to(tl.float32), v.to(tl.float32), input_precision="ieee")
                else:
                    pv = tl.dot(p_hi, v, input_precision="ieee")
                if PV_SPLIT:
                    p_lo = (p - p_hi.to(tl.float32)).to(v.dtype)
                    if UPCAST_DOT:
                        pv += tl.dot(p_lo.to(tl.float32), v.to(tl.float32), input_precision="ieee")
                    else:
                        pv += tl.dot(p_lo, v, input_precision="ieee")
                acc = acc * alpha[:, None] + pv
                m_i = m_new
                if NONFINITE_V and n_bad > 0:
                    # Rare branch: put back what cleaning V removed. For each visible key j,
                    # add V[j] where it is non-finite (0 elsewhere): +Inf, -Inf and NaN then
                    # combine as they would in the product (Inf - Inf = NaN). One key at a
                    # time, visibility recomputed from the masks (a tile of booleans reshaped
                    # for a dot product cannot be staged by Triton 3.9 for some tile shapes).
                    for j in range(0, BLOCK_N):
                        nj = n0 + j
                        key = kb * BS + nj
                        # (per-row and per-column copies of the key's checks: masks of loads
                        # stay vectors, which the interpreter needs)
                        key_m = loc_m * 0 + key
                        seen_j = row_ok & (key_m < seq_len) & (key_m < kb * BS + BS)
                        if HAS_KPM:
                            kp = tl.load(Kpm + b64 * stride_kpm_b + key_m, mask=seen_j, other=0)
                            seen_j = seen_j & (kp != 0)
                        if midx >= 0:
                            col = tl.load(
                                Masks + midx.to(tl.int64) * (BS * BS) + loc_m * BS + nj,
                                mask=seen_j,
                                other=0,
                            )
                            seen_j = seen_j & (col != 0)
                        key_d = offs_dv * 0 + key
                        vj = tl.load(
                            v_base + key_d.to(tl.int64) * stride_vs + offs_dv,
                            mask=dv_ok & (key_d < seq_len) & (key_d < kb * BS + BS),
                            other=0.0,
                        ).to(tl.float32)
                        nonfinite_j = tl.where((vj != vj) | (tl.abs(vj) == float("inf")), vj, 0.0)
                        acc += tl.where(seen_j[:, None], nonfinite_j[None, :], 0.0)

    # l == 0: no visible key -> exactly 0; l = NaN (a visible key held NaN) stays NaN
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = tl.where((l_i == 0.0)[:, None], 0.0, acc / l_safe[:, None])
    o_ptrs = (
        Out
        + b64 * stride_ob
        + h64 * stride_oh
        + offs_m.to(tl.int64)[:, None] * stride_os
        + offs_dv[None, :]
    )
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])


@functools.lru_cache(maxsize=2)
def get_kernel(interpret: bool):
    """The kernel decorated for the GPU compiler (``interpret=False``) or Triton's interpreter.

    Built on first use (not at import) so that ``TRITON_INTERPRET`` set after ``import
    triton`` still works.
    """
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_block_sparse_attn_fwd)
    import types

    from triton.runtime.jit import JITFunction

    # Compiled path: if triton.language was imported with TRITON_INTERPRET=1, Triton's own
    # combine functions are interpreter objects the compiler cannot call. Give the compiled
    # kernel its own (same semantics: tl.maximum without NaN propagation, +).
    scope = dict(_block_sparse_attn_fwd.__globals__)
    scope["_MAX_COMBINE"] = JITFunction(_max_combine)
    scope["_SUM_COMBINE"] = JITFunction(_sum_combine)
    fn = types.FunctionType(_block_sparse_attn_fwd.__code__, scope, _block_sparse_attn_fwd.__name__)
    fn.__module__ = _block_sparse_attn_fwd.__module__
    fn.__qualname__ = _block_sparse_attn_fwd.__qualname__
    fn.__doc__ = _block_sparse_attn_fwd.__doc__
    return JITFunction(fn)


def _max_combine(a, b):
    return tl.maximum(a, b)


def _sum_combine(a, b):
    return a + b


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a true value (Triton's own spelling rules)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def padded_dim(n: int) -> int:
    """Smallest power of two ``>= max(n, 16)``: ``tl.arange`` and ``tl.dot`` need it."""
    p = 16
    while p < n:
        p *= 2
    return p


#: Largest head dim ``D`` / ``Dv`` the kernel takes (padded inside to a power of two): the op's.
MAX_HEAD_DIM = opspec.MAX_HEAD_DIM
#: Element size in bytes of each input dtype the kernel takes.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class LaunchConfig:
    """Tiling and launch parameters of one specialisation.

    Attributes:
        block_m: query rows per program (a power of two, 16..padded block size); a layout
            block of ``bs`` rows is covered by ``ceil(bs / block_m)`` programs.
        block_n: keys per inner step (a power of two, 16..padded block size); each stored
            key block is processed in ``ceil(bs / block_n)`` steps.
        num_warps: warps per program (threads = 32 x num_warps).
        num_stages: Triton's software-pipelining depth.
    """

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int = 2


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


#: ``(element bytes, padded head dim) -> (block_m, block_n, num_warps, num_stages)``; the
#: padded head dim is the larger of D and Dv rounded up to a power of two (64 covers 16..64).
#: Chosen from ``ptxas -v`` (CUDA 13.0) on the AOT PTX for sm_80 and sm_90 over candidate
#: tilings of blocks of 128 with the non-finite-V branch: the largest tiles without spills on
#: either target. fp32 gets small tiles and 8 warps: its IEEE dot products run on the FMA
#: units and keep operand copies in registers. Smaller blocks use ``min(block, tile)``.
_CONFIG_TABLE = {
    (2, 64): (32, 64, 4, 2),
    (2, 128): (32, 64, 8, 2),
    (2, 256): (32, 16, 8, 2),
    (4, 64): (16, 16, 8, 2),
    (4, 128): (16, 16, 8, 2),
    (4, 256): (16, 16, 8, 2),
}


def launch_config(dtype, block_size: int, head_dim: int, value_dim: int) -> LaunchConfig:
    """The launch configuration used for ``(dtype, block_size, D, Dv)``: one rule for the
    launcher, the AOT compiler and ``python -m sparse_attn.plugins.aot --report``.

    The query tile ``[block_m, D]`` and the fp32 accumulator ``[block_m, Dv]`` live in
    registers, the K/V tiles ``[block_n, D]`` / ``[block_n, Dv]`` in shared memory, so wider
    heads take fewer rows and keys per step (:data:`_CONFIG_TABLE`; registers, spills and
    shared memory of each entry are tabled in docs/gpu.md).

    Args:
        dtype: ``torch.dtype`` or its name (float32, float16, bfloat16).
        block_size: layout block size (tokens); head_dim, value_dim: D and Dv
            (1..:data:`MAX_HEAD_DIM`).

    Raises:
        ValueError: a dtype or head dim the kernel does not take.
    """
    name = _dtype_name(dtype)
    if name not in DTYPE_BYTES:
        raise ValueError(f"dtype {name} not supported (float32, float16, bfloat16 are)")
    for what, n in (("head_dim", head_dim), ("value head_dim", value_dim)):
        if not 1 <= int(n) <= MAX_HEAD_DIM:
            raise ValueError(f"{what} {n} not supported (1..{MAX_HEAD_DIM})")
    block = padded_dim(block_size)
    dp = max(64, padded_dim(head_dim), padded_dim(value_dim))
    bm, bn, warps, stages = _CONFIG_TABLE[(DTYPE_BYTES[name], dp)]
    return LaunchConfig(min(block, bm), min(block, bn), warps, stages)


def shared_memory_bound(dtype, config: LaunchConfig, head_dim: int, value_dim: int) -> int:
    """Upper bound (bytes) of the dynamic shared memory of one program with ``config``.

    The query tile and ``num_stages`` copies of the K and V tiles:
    ``bytes * (block_m * D_pad + num_stages * block_n * (D_pad + Dv_pad))``. Triton 3.9
    needs at most this for every configuration in the table of docs/gpu.md (checked by
    ``tests/test_ptx.py`` against the compiled kernels); the backend compares it with the
    device's per-block limit before launching.
    """
    e = DTYPE_BYTES[_dtype_name(dtype)]
    dp, dvp = padded_dim(head_dim), padded_dim(value_dim)
    return e * (config.block_m * dp + config.num_stages * config.block_n * (dp + dvp))


def compile_constants(
    block_size: int,
    head_dim: int,
    value_dim: int,
    has_kpm: bool,
    upcast_dot: bool = False,
    pv_split: bool = False,
    nonfinite_v: bool = True,
    config: LaunchConfig | None = None,
    dtype="float16",
) -> dict:
    """Compile-time constants of one specialisation (shared by the launcher and AOT).

    ``upcast_dot`` makes the dot products take fp32 operands; only the interpreter needs it
    (for bf16, whose ``tl.dot`` Triton 3.9's interpreter computes on the raw uint16 bits).
    ``pv_split`` computes ``P @ V`` as ``P_hi @ V + P_lo @ V`` (one more tensor-core product
    per tile) so that rounding P to fp16/bf16 does not cost accuracy; useless for fp32.
    ``config`` defaults to :func:`launch_config` for ``dtype``.
    """
    cfg = config or launch_config(dtype, block_size, head_dim, value_dim)
    block = padded_dim(block_size)
    for what, n in (("block_m", cfg.block_m), ("block_n", cfg.block_n)):
        if n < 16 or n & (n - 1) or n > block:
            raise ValueError(f"{what}={n} must be a power of two in 16..{block}")
    return {
        "BS": int(block_size),
        "BLOCK_M": int(cfg.block_m),
        "BLOCK_N": int(cfg.block_n),
        "M_SPLIT": -(-int(block_size) // int(cfg.block_m)),
        "D": int(head_dim),
        "D_PAD": padded_dim(head_dim),
        "DV": int(value_dim),
        "DV_PAD": padded_dim(value_dim),
        "HAS_KPM": bool(has_kpm),
        "UPCAST_DOT": bool(upcast_dot),
        "PV_SPLIT": bool(pv_split),
        "NONFINITE_V": bool(nonfinite_v),
    }


def _needs_nonfinite_variant(value, assume_finite_v) -> bool:
    import torch

    if assume_finite_v is not None:
        return not assume_finite_v
    if value.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return True
    return not bool(torch.isfinite(value).all())


def attention_arrays(
    *args,
    out=None,
    precise_pv: bool | None = None,
    assume_finite_v: bool | None = None,
    config: LaunchConfig | None = None,
    **kwargs,
):
    """Launch the kernel on arrays (the array-level contract of the kernels package).

    Args (the op's call, positional or by name: ``opspec.SCHEMA.call_arg_names()``; then the
    keyword-only ``out``, ``precise_pv``, ``assume_finite_v``, ``config``):
        query: ``[B, H, S, D]`` fp32/fp16/bf16, CUDA (compiled) or CPU (Triton interpreter,
            needs ``TRITON_INTERPRET=1``); D in 1..:data:`MAX_HEAD_DIM`.
        key: ``[B, Hkv, S, D]``, same dtype and device, ``H % Hkv == 0``: query head ``h``
            reads K/V head ``h // (H // Hkv)`` (grouped-query attention; K/V are read in
            place, never repeated per query head).
        value: ``[B, Hkv, S, Dv]``, same dtype and device; Dv in 1..:data:`MAX_HEAD_DIM`.
        row_ptr: int32 ``[LH, nQB_max + 1]`` (LH = H, or 1 for one layout shared by all
            query heads).
        col_idx: int32 ``[LH, nnz]`` key-block columns, ``mask_idx`` int32 ``[LH, nnz]``
            (-1 = full tile), ``masks`` uint8 ``[M >= 1, bs, bs]``: the FULL layout for its
            max length; the kernel crops by bounds.
        key_padding_mask: ``[B, S']`` (S' >= S) bool/integer, True/nonzero = real token, or None.
        block_size: tokens per tile side (16..128; non powers of two are padded inside).
        scale: softmax scale (float).
        out: optional preallocated ``[B, H, S, Dv]`` output (query dtype, same device, last
            dim contiguous), e.g. a TensorRT output buffer; written in place and returned.
        precise_pv: split P into two 16-bit halves for ``P @ V`` (default
            :data:`PRECISE_PV`); False gives the usual FlashAttention rounding of P.
        assume_finite_v: True compiles out the handling of NaN/Inf in V for keys that only
            some rows of a tile see (it costs registers); None (default) checks
            ``torch.isfinite(value).all()`` (one pass over V and, on CUDA, a host sync; during
            CUDA graph capture the safe variant is used without checking). Keys that no row of a
            tile sees (padding, keys >= S) are always safe.
        config: tiling/launch parameters (default :func:`launch_config`); tests use it to
            exercise split query blocks and chunked key blocks.

    Returns:
        ``[B, H, S, Dv]`` in ``query``'s dtype.

    Raises:
        TypeError: missing, extra or unknown arguments.
        ValueError: ``H`` not a multiple of ``Hkv``, or a wrong ``out`` buffer (the backend
            module validates everything else before calling).
    """
    import torch

    call = opspec.SCHEMA.bind_call(args, kwargs)
    query, key, value = call.query, call.key, call.value
    row_ptr, col_idx, mask_idx, masks = (call[n] for n in opspec.SCHEMA.layout_inputs())
    key_padding_mask, block_size, scale = call.key_padding_mask, call.block_size, call.scale
    bsz, nh, slen, hd = query.shape
    nkv = key.shape[1]
    dv = value.shape[-1]
    if nkv < 1 or nh % nkv or value.shape[1] != nkv:
        raise ValueError(
            f"key/value must have Hkv heads with H % Hkv == 0 (H={nh}), got key "
            f"{list(key.shape)}, value {list(value.shape)}"
        )

    def last_contig(t):
        return t if t.stride(-1) == 1 else t.contiguous()

    query, key, value = last_contig(query), last_contig(key), last_contig(value)
    dev = query.device
    row_ptr = row_ptr.to(device=dev, dtype=torch.int32).contiguous()
    col_idx = col_idx.to(device=dev, dtype=torch.int32).contiguous()
    mask_idx = mask_idx.to(device=dev, dtype=torch.int32).contiguous()
    masks = masks.to(device=dev, dtype=torch.uint8).contiguous()
    if masks.shape[0] == 0:
        masks = torch.zeros((1, block_size, block_size), dtype=torch.uint8, device=dev)
    lh = row_ptr.shape[0]
    rp_stride = 0 if lh == 1 else row_ptr.stride(0)
    ci_stride = 0 if lh == 1 else col_idx.stride(0)
    if col_idx.numel() == 0:  # no stored tile anywhere: keep a valid pointer
        col_idx = torch.zeros((1, 1), dtype=torch.int32, device=dev)
        mask_idx = torch.full((1, 1), -1, dtype=torch.int32, device=dev)
        ci_stride = 0
    has_kpm = key_padding_mask is not None
    if has_kpm:
        kpm = key_padding_mask.to(device=dev, dtype=torch.uint8).contiguous()
        kpm_stride = kpm.stride(0)
    else:
        kpm, kpm_stride = query, 0
    if out is None:
        out = torch.empty((bsz, nh, slen, dv), dtype=query.dtype, device=dev)
    elif (
        tuple(out.shape) != (bsz, nh, slen, dv)
        or out.dtype != query.dtype
        or out.stride(-1) != 1
        or out.device != dev
    ):
        raise ValueError(
            f"out must be [{bsz}, {nh}, {slen}, {dv}] {query.dtype} on {dev} with a contiguous "
            f"last dim, got {list(out.shape)} {out.dtype} on {out.device}"
        )
    if out.numel() == 0:
        return out
    interpret = dev.type == "cpu"
    cfg = config or launch_config(query.dtype, block_size, hd, dv)
    consts = compile_constants(
        block_size,
        hd,
        dv,
        has_kpm,
        upcast_dot=interpret and query.dtype == torch.bfloat16,
        pv_split=(PRECISE_PV if precise_pv is None else precise_pv)
        and query.dtype in (torch.float16, torch.bfloat16),
        nonfinite_v=_needs_nonfinite_variant(value, assume_finite_v),
        config=cfg,
    )
    # axis 0: query tiles x query heads of a K/V group (group innermost); axis 1: B x Hkv
    grid = (-(-slen // block_size) * consts["M_SPLIT"] * (nh // nkv), bsz * nkv)
    kernel = get_kernel(interpret)
    extra = {} if interpret else {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    kernel[grid](
        query,
        key,
        value,
        row_ptr,
        col_idx,
        mask_idx,
        masks,
        kpm,
        slen,
        nh,
        nh // nkv,
        query.stride(0),
        query.stride(1),
        query.stride(2),
        key.stride(0),
        key.stride(1),
        key.stride(2),
        value.stride(0),
        value.stride(1),
        value.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        kpm_stride,
        rp_stride,
        ci_stride,
        out,
        float(scale),
        **consts,
        **extra,
    )
    return out


__all__ = [
    "CONST_ARGS",
    "DTYPE_BYTES",
    "INT_ARGS",
    "MAX_HEAD_DIM",
    "OUTPUT_ARGS",
    "POINTER_INPUTS",
    "LaunchConfig",
    "attention_arrays",
    "compile_constants",
    "get_kernel",
    "interpreter_enabled",
    "launch_config",
    "padded_dim",
    "shared_memory_bound",
    "triton",
]
