"""The model-local ONNX function of ``sparse_attn::BlockSparseAttention``: standard ops only.

ONNX Runtime (any provider) and ``onnx.reference`` run an exported model through this
FunctionProto; TensorRT maps the node to the plugin instead. The body is generated per
layout: the layout is a constant of the model, so its structure is baked into the function
as small integer constants, while the node's layout inputs stay in the signature for the
plugin (the body does not read them).

Inputs: ``query [B, H, S, D]``, ``key [B, Hkv, S, D]``, ``value [B, Hkv, S, Dv]`` (float32
or float16, ``H % Hkv == 0``: query head ``h`` reads K/V head ``h // (H // Hkv)``), optional
``key_padding_mask [B, S]``; output ``[B, H, S, Dv]`` in the query dtype.

Construction
------------
1. *Views.* ``nb = ceil(S / bs)`` blocks (dynamic). Q, K and V are cast to float32 and
   padded along S to ``(nb + 1) * bs``: block ``nb`` is an all-invalid block that tiles
   beyond the request point at. Key validity ``ok[b, j] = j < S and key_padding_mask[b,
   j]``. Q gets a column of ones and K a column holding 0 (valid key) or a huge negative
   number (invalid key), so ``Q_aug @ K_aug^T`` carries the key mask with no pass over the
   scores; with a key padding mask, K and V at padded keys are replaced by 0 with
   ``Where``, so NaN/Inf in padded slots never reach a product. The scale multiplies the
   scores (ONNX Runtime folds it into the MatMul). Flat block views
   ``[B*H*(nb+1), bs, D+1]`` for Q and ``[B*Hkv*(nb+1), bs, .]`` for K/V; K and V are never
   copied per query head.
2. *Units and buckets* (export time, :func:`plan_buckets`). A unit is one query block of
   one K/V head together with the query heads that read it: when the ``G = H / Hkv``
   query heads of a K/V head have the same tiles and masks in a block row (the common
   case), they form one unit of ``G * bs`` query rows against one gathered copy of the
   K/V tiles; otherwise each query head is a unit of its own. Units with the same tile
   count and full/partial mask sequence form *uniform* buckets (one ``[bs, n*bs]`` bias
   broadcast over the units, e.g. all interior rows of a band); leftovers are merged by
   tile count with bounded padding (per-unit biases); units without tiles are not
   computed (their rows read a zero block). Global rows (all ``nQB`` tiles) get their own
   bucket, so they never make the other rows dense (a padded ``[rows, max_nnz]`` gather
   pays for the longest row).
3. *Chunked loop per bucket.* Units are sorted by query block, so the units inside the
   request are a prefix whose length is computed at run time; with the batch they make
   ``U = B * count`` units (flat gather indices). An ONNX ``Scan`` processes them in
   chunks of ``C`` units (the index arrays padded to a multiple of ``C`` and viewed as
   ``[U / C, C, .]``, one chunk per step), ``C`` computed at run time from the
   working-set budget (:data:`WORK_BUDGET_BYTES`) and D/Dv (see
   :func:`unit_work_elements`), then balanced over the steps (``C = ceil(U / steps)``, so
   fewer than one unit per step is padding). One step
   gathers the chunk's Q blocks ``[C, m*bs, D+1]`` and K/V tiles ``[C, n*bs, .]``,
   computes ``Q_aug @ K_aug^T``, adds the tile bias (0/-inf from the partial masks) only
   if the bucket has partial tiles, ``Softmax`` in fp32, ``@ V``, and zeroes rows with no
   visible key in the layout (statically known). A query whose visible keys are all
   invalid averages the zeroed V and outputs exactly 0.
4. *Assembly.* The scans' outputs (token rows) and one zero block are concatenated; one
   token-level ``Gather`` (indices from the inverse permutation of the units' rows) puts
   them in ``[B, H, S, Dv]`` order, crop included (rows of units beyond the request go to
   a trash slot); a ``Reshape`` refuses ``S > max_seq_len``; ``CastLike`` returns the
   query dtype.

Memory: everything outside the scans is a small multiple of the op's inputs and output
(padded Q/K/V views, the scan outputs, the reordered output); inside, one step's
working set stays under ``WORK_BUDGET_BYTES`` (at least one unit per step), so the
peak no longer grows with ``S * window * H``. A budget of the size of a core's L2 cache
is also the fast choice: the chunk's tiles and scores stay in cache between the MatMuls,
the bias add and the Softmax.

NaN safety: masked keys are removed with ``Where`` (padding, crop) or ``-inf`` biases on
finite scores. If a *real* (not padded) K or V value is NaN/Inf, an ``If`` switches to an
exact path that masks with ``Where`` and keeps ``0 * NaN`` of keys hidden by a partial
tile out of ``P @ V``; rows that see the non-finite key get NaN/Inf, as the reference does.

Scaled dot-product attention: Vaswani et al., "Attention Is All You Need"
(arXiv 1706.03762), Sec. 3.2.1; block-sparse tiling as in Child et al., "Generating Long
Sequences with Sparse Transformers" (arXiv 1904.10509), Sec. 4; grouped-query attention:
Ainslie et al., "GQA" (arXiv 2305.13245).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparse_attn import opspec
from sparse_attn.layout import BlockLayout

#: Function attributes (the node carries them; the body bakes block_size and scale).
FUNCTION_ATTRIBUTES = tuple(opspec.ATTRIBUTES)
#: Lowest default-domain opset the body is written for (ReduceMax with axes as an input).
MIN_OPSET = 18
#: Working-set budget of one scan step of the body, in bytes (fp32 intermediates of one
#: chunk of units; at least one unit per step).
WORK_BUDGET_BYTES = 8 * 2**20
#: Score added for keys outside the request or padded (finite: their V is 0, so a row
#: that sees only such keys averages zeros and outputs exactly 0).
_KEY_BIAS = -1.0e30


@dataclass(frozen=True)
class Bucket:
    """Units of one bucket (export-time constants).

    Attributes:
        heads: ``int64 [R, m]`` query heads of each unit (``m`` = 1 or ``H / Hkv``); units
            sorted by ``rows`` ascending.
        kv_heads: ``int64 [R]`` K/V head of each unit (``heads // (H / Hkv)``).
        rows: ``int64 [R]`` query block of each unit.
        cols: ``int64 [R, n]`` key block of each tile (padding repeats a real column).
        mask_ids: ``int64 [R, n]`` index into the mask table: 0 = full, 1 = padding
            (nothing visible), ``2 + k`` = ``layout.masks[k]``.
        grouped: whether ``kv_heads`` is baked in (False: derived from ``heads`` at run
            time from the key's head count).
    """

    heads: np.ndarray
    kv_heads: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    mask_ids: np.ndarray
    grouped: bool = True

    @property
    def width(self) -> int:
        """Tiles per unit ``n`` (0 for the zero bucket)."""
        return int(self.cols.shape[1])

    @property
    def heads_per_unit(self) -> int:
        """Query heads per unit ``m``."""
        return int(self.heads.shape[1])

    @property
    def has_partial(self) -> bool:
        """Whether any tile of the bucket needs a mask (partial or padding)."""
        return bool((self.mask_ids != 0).any())

    @property
    def uniform(self) -> bool:
        """Whether every unit has the same mask sequence (one broadcast mask)."""
        return bool((self.mask_ids == self.mask_ids[:1]).all())


def _check_kv_heads(num_heads: int, num_kv_heads: int | None) -> int | None:
    if num_kv_heads is None:
        return None
    if isinstance(num_kv_heads, bool) or int(num_kv_heads) < 1 or num_heads % num_kv_heads:
        raise ValueError(
            f"num_kv_heads must divide the layout's {num_heads} heads, got {num_kv_heads!r}"
        )
    return int(num_kv_heads)


def plan_buckets(
    layout: BlockLayout,
    max_padding: float = 0.25,
    min_uniform_rows: int = 16,
    num_kv_heads: int | None = None,
) -> list[Bucket]:
    """Group the (head, query block) rows of ``layout`` into units and buckets.

    With ``num_kv_heads`` given, the ``G = H / num_kv_heads`` query heads of a K/V head
    that have identical tiles and masks in a query block form one unit (one gather of
    the K/V tiles for all of them); otherwise every (head, block) is a unit of one head.
    Units with the same tile count, heads per unit and full/partial mask sequence form a
    *uniform* group; a group of at least ``min_uniform_rows`` units is a bucket of its
    own (one ``[bs, n * bs]`` mask broadcast over the units). The remaining units are
    merged by tile count, widest first, while the padding stays within ``max_padding``.

    Args:
        layout: the block layout (one pattern per query head).
        max_padding: largest fraction of padding tiles a merged bucket may carry.
        min_uniform_rows: smallest uniform group kept as its own bucket.
        num_kv_heads: ``Hkv`` (must divide ``layout.num_heads``), or None.

    Returns:
        Buckets; the zero bucket (units without tiles, ``width == 0``) last if any. Every
        row ``(h, r)`` of the layout is in exactly one unit of one bucket.

    Raises:
        ValueError: ``num_kv_heads`` does not divide the layout's heads.
    """
    h_count, nqb = layout.num_heads, layout.num_blocks
    hkv = _check_kv_heads(h_count, num_kv_heads)
    group = 1 if hkv is None else h_count // hkv

    def key_of(h: int, r: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        c, m = layout.row(h, r)
        mids = np.where(m < 0, 0, m.astype(np.int64) + 2)
        return tuple(int(x) for x in c), tuple(int(x) for x in mids)

    # units: (heads, row, cols, mids)
    units: list[tuple[tuple[int, ...], int, tuple[int, ...], tuple[int, ...]]] = []
    for g0 in range(0, h_count, group):
        for r in range(nqb):
            keys = [key_of(h, r) for h in range(g0, g0 + group)]
            if group > 1 and all(k == keys[0] for k in keys):
                units.append((tuple(range(g0, g0 + group)), r, *keys[0]))
            else:
                units.extend(((g0 + i,), r, *k) for i, k in enumerate(keys))

    uniform: dict[tuple, list] = {}
    empty_by_m: dict[int, list] = {}
    for u in units:
        if u[2]:
            uniform.setdefault((len(u[0]), u[3]), []).append(u)
        else:
            empty_by_m.setdefault(len(u[0]), []).append(u)
    groups: list[tuple[int, list]] = []
    rest: dict[tuple[int, int], list] = {}
    for (m, mids), members in uniform.items():
        if len(members) >= min_uniform_rows:
            groups.append((len(mids), members))
        else:
            rest.setdefault((m, len(mids)), []).extend(members)
    merged: list[tuple[int, list]] = []
    last_m = None
    for m, n in sorted(rest, key=lambda k: (k[0], -k[1])):
        members = rest[(m, n)]
        if merged and last_m == m:
            width, prev = merged[-1]
            real = sum(len(u[2]) for u in prev) + n * len(members)
            total = width * (len(prev) + len(members))
            if 1.0 - real / total <= max_padding:
                prev.extend(members)
                continue
        merged.append((n, list(members)))
        last_m = m
    buckets = [
        _bucket(members, width, group, hkv is not None)
        for width, members in sorted(
            groups + merged, key=lambda g: -g[0] * len(g[1]) * len(g[1][0][0])
        )
    ]
    for m in sorted(empty_by_m):
        buckets.append(_bucket(empty_by_m[m], 0, group, hkv is not None))
    return buckets


def _bucket(members: list, width: int, group: int, grouped: bool) -> Bucket:
    members = sorted(members, key=lambda u: (u[1], u[0][0]))
    cols = np.zeros((len(members), width), dtype=np.int64)
    mids = np.ones((len(members), width), dtype=np.int64)
    for i, (_, _, c, mi) in enumerate(members):
        if width:
            cols[i, : len(c)] = c
            cols[i, len(c) :] = c[0]
            mids[i, : len(c)] = mi
    heads = np.array([u[0] for u in members], dtype=np.int64)
    return Bucket(
        heads=heads,
        kv_heads=heads[:, 0] // group,
        rows=np.array([u[1] for u in members], dtype=np.int64),
        cols=cols,
        mask_ids=mids,
        grouped=grouped,
    )


def unit_work_elements(bucket: Bucket, block_size: int) -> tuple[int, int, int]:
    """fp32 elements one unit of ``bucket`` (one batch item) holds during a scan step.

    Returns ``(c0, cd, cdv)`` with elements ``= c0 + cd * D + cdv * Dv``: the gathered
    Q rows (``m*bs x (D+1)``), K tiles and their transpose (``2 x n*bs x (D+1)``), V tiles
    plus the exact path's two V-sized temporaries (``3 x n*bs x Dv``), three score-sized
    tensors (scores, masked scores, probabilities: ``3 x m*bs x n*bs``) and four
    output-sized ones (``4 x m*bs x Dv``).
    """
    qr, kc = bucket.heads_per_unit * block_size, bucket.width * block_size
    return qr + 2 * kc + 3 * qr * kc, qr + 2 * kc, 3 * kc + 4 * qr


class _Graph:
    """Tiny node emitter with unique names."""

    def __init__(self, prefix: str = "") -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0
        self.prefix = prefix

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}{hint}_{self.count}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(self, value, hint: str = "c") -> str:
        arr = np.asarray(value)
        out = self.name(hint)
        self.nodes.append(
            helper.make_node("Constant", [], [out], value=numpy_helper.from_array(arr, out))
        )
        return out

    def i64(self, *values: int, hint: str = "c") -> str:
        return self.const(np.array(values, dtype=np.int64), hint)


@dataclass
class _Views:
    """Names of the outer values every bucket reads (see the module docstring, step 1)."""

    b1: str  # [1] batch
    d1: str  # [1] D
    dv1: str  # [1] Dv
    s1: str  # [1] S
    nb1: str  # [1] query/key blocks of the request
    nbx1: str  # [1] nb + 1 (with the all-invalid block)
    hkv1: str  # [1] Hkv of the key input
    batch_ids: str  # [B, 1, 1] int64 0..B-1
    n_out: str  # [1] B * H * nb output block rows
    qb: str  # [B*H*nbx, bs, D+1] Q with the ones column
    kb: str  # [B*Hkv*nbx, bs, D+1] sanitised K with the key-bias column
    vb: str  # [B*Hkv*nbx, bs, Dv] V (zeros at padded keys)
    d_aug: str  # [1] D + 1
    kp: str  # [B, Hkv, Sp, D] sanitised K (non-finite check)
    vp: str  # [B, Hkv, Sp, Dv]
    group: str | None  # [1] H / Hkv at run time (None when baked)


def _views(
    g: _Graph,
    *,
    bs: int,
    n_heads: int,
    num_kv_heads: int | None,
    scale: float,
    has_key_padding_mask: bool,
) -> _Views:
    """Step 1: request sizes and the padded, sanitised, augmented block views."""
    f32 = TensorProto.FLOAT
    q_in, k_in, v_in = opspec.INPUT_NAMES[:3]
    kpm_in = opspec.INPUT_NAMES[7]
    zero1, one1, m1 = g.i64(0, hint="zero"), g.i64(1, hint="one"), g.i64(-1, hint="m1")
    shape_q = g.op("Shape", [q_in], "shape_q")
    shape_k = g.op("Shape", [k_in], "shape_k")
    s1 = g.op("Slice", [shape_q, g.i64(2), g.i64(3)], "S")
    d1 = g.op("Slice", [shape_q, g.i64(3), g.i64(4)], "D")
    dv1 = g.op("Shape", [v_in], "Dv", start=3, end=4)
    b1 = g.op("Slice", [shape_q, zero1, one1], "B")
    hkv1 = g.op("Slice", [shape_k, one1, g.i64(2)], "Hkv")
    bs1 = g.i64(bs, hint="bs")
    nb1 = g.op("Div", [g.op("Add", [s1, g.i64(bs - 1)]), bs1], "nb")
    nbx1 = g.op("Add", [nb1, one1], "nb_ext")  # + one all-invalid block
    spx1 = g.op("Mul", [nbx1, bs1], "Sp_ext")
    padlen = g.op("Sub", [spx1, s1], "padlen")
    fzero = g.const(np.array(0.0, dtype=np.float32), "fzero")
    group = None
    if num_kv_heads is None:
        # H / Hkv at run time; Reshape of an H-element constant to [Hkv, H / Hkv] fails
        # loudly unless Hkv divides H
        group = g.op("Div", [g.i64(n_heads), hkv1], "G")
        g.op(
            "Reshape", [g.const(np.zeros(n_heads, np.int8)), g.op("Concat", [hkv1, group], axis=0)]
        )
        hkv_shape = hkv1
    else:
        hkv_shape = g.i64(num_kv_heads, hint="Hkv_baked")

    # key validity over the extended sequence [B|1, Sp_ext]: inside the request and real
    positions = g.op("Range", [g.const(np.int64(0)), g.op("Squeeze", [spx1]), g.const(np.int64(1))])
    key_ok = g.op("Unsqueeze", [g.op("Less", [positions, s1], "in_request"), zero1])
    if has_key_padding_mask:
        kpm_u8 = g.op(
            "Cast", [g.op("Cast", [kpm_in], "kpm_bool", to=TensorProto.BOOL)], to=TensorProto.UINT8
        )
        pads2 = g.op("Concat", [g.i64(0, 0, 0), padlen], "pads2", axis=0)
        kpm_pad = g.op("Pad", [kpm_u8, pads2, g.const(np.array(0, dtype=np.uint8))], "kpm_pad")
        key_ok = g.op("And", [g.op("Cast", [kpm_pad], to=TensorProto.BOOL), key_ok], "key_ok")
    key_ok4 = g.op("Unsqueeze", [key_ok, g.i64(1, 3)], "key_ok4")  # [B|1, 1, Sp_ext, 1]

    d_aug = g.op("Add", [d1, one1], "D_aug")
    pads_aug = g.op("Concat", [g.i64(0, 0, 0, 0, 0, 0), padlen, one1], "pads_aug", axis=0)
    pads_s = g.op("Concat", [g.i64(0, 0, 0, 0, 0, 0), padlen, zero1], "pads_s", axis=0)
    # Q padded along S (rows discarded later) and along D with the ones column; the scale
    # multiplies the scores (ONNX Runtime folds it into the MatMul)
    q_aug = g.op(
        "Pad",
        [g.op("Cast", [q_in], "q32", to=f32), pads_aug, g.const(np.array(1.0, np.float32))],
        "q_aug",
    )
    qb = g.op(
        "Reshape", [q_aug, g.op("Concat", [m1, bs1, d_aug], axis=0)], "qblk"
    )  # [B*H*nbx, bs, D+1]
    # K and V: zeros beyond S; with a key padding mask, Where zeroes padded keys (their
    # slots may hold NaN/Inf: selected away, never multiplied). K gets the key-bias column
    # (0 for valid keys, a huge negative number for invalid ones; after the scale).
    kp, vp = (
        g.op("Pad", [g.op("Cast", [x], hint + "32", to=f32), pads_s, fzero], hint + "pad")
        for x, hint in ((k_in, "k"), (v_in, "v"))
    )
    if has_key_padding_mask:
        kp = g.op("Where", [key_ok4, kp, fzero], "k_safe")
        vp = g.op("Where", [key_ok4, vp, fzero], "v_safe")
    key_bias = g.const(np.float32(-min(-_KEY_BIAS / scale, 3.0e38)), "key_bias")
    bias_col = g.op(
        "Expand",
        [
            g.op("Where", [key_ok4, fzero, key_bias], "key_bias_col"),  # [B|1, 1, Sp, 1]
            g.op("Concat", [g.op("Shape", [kp], end=3), one1], axis=0),
        ],
    )
    k_aug = g.op("Concat", [kp, bias_col], "k_aug", axis=-1)  # [B, Hkv, Sp_ext, D+1]
    # block views of K/V: [B, Hkv, nbx, bs, d] (a baked Hkv that differs fails here)
    # then [B*Hkv*nbx, bs, d]
    kb, vb = (
        g.op(
            "Reshape",
            [
                g.op("Reshape", [x, g.op("Concat", [zero1, hkv_shape, nbx1, bs1, dim], axis=0)]),
                g.op("Concat", [m1, bs1, dim], axis=0),
            ],
            hint,
        )
        for x, dim, hint in ((k_aug, d_aug, "kblk"), (vp, dv1, "vblk"))
    )
    n_out = g.op("Mul", [b1, g.op("Mul", [nb1, g.i64(n_heads)])], "n_out")  # B * H * nb
    batch_ids = g.op(
        "Unsqueeze",
        [
            g.op("Range", [g.const(np.int64(0)), g.op("Squeeze", [b1]), g.const(np.int64(1))]),
            g.i64(1, 2),
        ],
        "batch_ids",
    )
    return _Views(
        b1, d1, dv1, s1, nb1, nbx1, hkv1, batch_ids, n_out, qb, kb, vb, d_aug, kp, vp, group
    )


def _prepare(
    g: _Graph,
    bk: Bucket,
    bi: int,
    v: _Views,
    *,
    bs: int,
    n_heads: int,
    budget: int,
    num_blocks: int,
    table: np.ndarray,
) -> dict:
    """Step 3, outer part: the bucket's units inside the request (for every batch item),
    the chunk size and the flat gather indices."""
    p = f"b{bi}_"
    zero1, one1 = g.i64(0), g.i64(1)
    # units inside the request: a prefix (units sorted by query block). At least one unit
    # is always computed (a zero-unit batch trips Reshape); extra units are clamped onto
    # the all-invalid block and dropped from the output. Count table indexed by nb
    # (S > max_seq_len is outside the table and fails in Gather).
    in_req = np.searchsorted(bk.rows, np.arange(num_blocks + 1), side="left")
    count_tab = g.const(np.maximum(in_req, 1).astype(np.int64), p + "count_tab")
    count = g.op("Gather", [count_tab, v.nb1], p + "count")

    def first(arr: np.ndarray, hint: str) -> str:  # arr[:count]
        return g.op("Slice", [g.const(arr, p + hint + "_all"), zero1, count, zero1], p + hint)

    def per_batch(x: str, stride: str, hint: str) -> str:
        """``b * stride + x`` for every batch item b: ``[count, k]`` -> ``[B*count, k]``."""
        y = g.op("Add", [g.op("Mul", [v.batch_ids, stride]), x])  # [B, count, k]
        shape = g.op("Concat", [g.i64(-1), g.op("Shape", [x], start=1)], axis=0)
        return g.op("Reshape", [y, shape], p + hint)

    rows_u = g.op("Unsqueeze", [first(bk.rows, "rows"), one1])  # [count, 1]
    heads = first(bk.heads, "heads")  # [count, m]
    # output block row of each (unit, head) and batch item; beyond the request -> trash
    row_id = g.op("Add", [g.op("Mul", [heads, v.nb1]), rows_u])
    row_id = per_batch(row_id, g.op("Mul", [v.nb1, g.i64(n_heads)]), "row_id")  # [U, m]
    real = g.op("Less", [per_batch(rows_u, zero1, "rows_b"), v.nb1])  # [U, 1]
    row_id = g.op("Where", [real, row_id, v.n_out], p + "row_id_t")
    clamped = g.op("Min", [rows_u, v.nb1])
    qidx = g.op("Add", [g.op("Mul", [heads, v.nbx1]), clamped])  # [count, m]
    qidx = per_batch(qidx, g.op("Mul", [v.nbx1, g.i64(n_heads)]), "qidx")  # [U, m]
    if bk.grouped:
        kvh = first(bk.kv_heads, "kvh")
    else:  # K/V head from the key's head count at run time
        lead = g.op("Squeeze", [g.op("Slice", [heads, zero1, one1, one1]), one1])
        kvh = g.op("Div", [lead, v.group], p + "kvh")
    cols = g.op("Min", [first(bk.cols, "cols"), v.nb1])  # beyond the request -> block nb
    kidx = g.op("Add", [g.op("Unsqueeze", [g.op("Mul", [kvh, v.nbx1]), one1]), cols])
    kidx = per_batch(kidx, g.op("Mul", [v.nbx1, v.hkv1]), "kidx")  # [U, n]
    units = g.op("Shape", [qidx], p + "U", end=1)

    # most = clamp(budget / unit elements, 1, U); n_iter = ceil(U / most); then the steps are
    # balanced, chunk = ceil(U / n_iter) <= most, so the index arrays are padded by fewer
    # than n_iter units (padding units compute unit 0 again and land in the trash slot)
    c0, cd, cdv = unit_work_elements(bk, bs)
    elems = g.op("Add", [g.op("Mul", [v.d1, g.i64(cd)]), g.op("Mul", [v.dv1, g.i64(cdv)])])
    most = g.op("Div", [g.i64(max(1, budget // 4)), g.op("Add", [elems, g.i64(c0)])])
    most = g.op("Max", [g.op("Min", [most, units]), one1], p + "most")
    n_iter = g.op("Div", [g.op("Sub", [g.op("Add", [units, most]), one1]), most], p + "n_iter")
    chunk = g.op("Div", [g.op("Sub", [g.op("Add", [units, n_iter]), one1]), n_iter], p + "chunk")
    pads = g.op(
        "Concat", [g.i64(0, 0), g.op("Sub", [g.op("Mul", [n_iter, chunk]), units]), zero1], axis=0
    )  # [0, 0, extra, 0]: pads of a [U, k] array

    def padded(x: str, fill: str, hint: str) -> str:
        return g.op("Pad", [x, pads, fill], p + hint)

    zero_i = g.const(np.int64(0), "zero_i")
    item = {"p": p, "bk": bk, "chunk": chunk, "n_iter": n_iter}
    trash = g.op("Squeeze", [v.n_out], "trash")
    item["row_ids"] = g.op(
        "Reshape", [padded(row_id, trash, "row_id_p"), g.i64(-1)], p + "row_ids"
    )  # [n_iter * chunk * m]
    item["qidx"] = padded(qidx, zero_i, "qidx_p")
    item["kidx"] = padded(kidx, zero_i, "kidx_p")

    def tiled(arr: np.ndarray, fill, hint: str) -> str:  # arr[:count] for every batch item
        x = first(arr, hint)
        y = g.op("Expand", [x, g.op("Concat", [v.b1, g.op("Shape", [x])], axis=0)])
        y = g.op("Reshape", [y, g.op("Concat", [g.i64(-1), g.op("Shape", [x], start=1)], axis=0)])
        return padded(y, g.const(np.array(fill, dtype=arr.dtype)), hint + "_p")

    if bk.has_partial and not bk.uniform:
        item["mids"] = tiled(bk.mask_ids, 1, "mids")
    dead = ~table[bk.mask_ids].any(axis=(1, 3))  # [R, bs] query rows with no visible key
    if dead.any() and not bk.uniform:
        item["dead"] = tiled(dead, False, "dead")
    elif dead.any():
        item["dead_uniform"] = dead[0]
    return item


def _loop(g: _Graph, item: dict, v: _Views, *, bs: int, exact: bool, tabs: dict) -> str:
    """Step 3, the ``Scan`` over chunks of one bucket; returns ``[P*m*bs, Dv]`` (token rows).

    ``exact``: tile masks applied with ``Where`` (a NaN/Inf K hidden by a partial tile
    cannot reach a score) and ``P @ V`` without ``0 * NaN`` from hidden non-finite V.
    Scores are ``[c, bs, n*bs]`` for units of one head and ``[c, m, bs, n*bs]`` (a free
    view) for units of ``m`` heads, so that tile masks broadcast over the heads.
    Shapes that do not change between steps are computed outside the scan body.
    """
    bk: Bucket = item["bk"]
    p = g.prefix + item["p"]
    m, n = bk.heads_per_unit, bk.width
    f32 = TensorProto.FLOAT
    table = tabs["table"]
    # shapes (outer graph)
    q_shape = g.op("Concat", [g.i64(-1, m * bs), v.d_aug], axis=0)
    k_shape = g.op("Concat", [g.i64(-1, n * bs), v.d_aug], axis=0)
    v_shape = g.op("Concat", [g.i64(-1, n * bs), v.dv1], axis=0)
    out_shape = g.op("Concat", [g.i64(-1), v.dv1], axis=0)
    o_unit_shape = g.op("Concat", [g.i64(-1, m, bs), v.dv1], axis=0) if m > 1 else None

    body = _Graph(prefix=p + "it_")
    scanned: dict[str, str] = {}  # outer [U_pad, k] array -> body input holding one chunk

    def chunk_of(x: str, hint: str) -> str:
        if x not in scanned:
            scanned[x] = body.name(hint)
        return scanned[x]

    def gathered(src: str, idx: str, shape: str, hint: str) -> str:
        return body.op("Reshape", [body.op("Gather", [src, idx], hint + "4"), shape], hint)

    kidx = chunk_of(item["kidx"], "kidx")
    qg = gathered(v.qb, chunk_of(item["qidx"], "qidx"), q_shape, "qg")  # [c, m*bs, D+1]
    kg = gathered(v.kb, kidx, k_shape, "kg")  # [c, n*bs, D+1]
    vg = gathered(v.vb, kidx, v_shape, "vg")  # [c, n*bs, Dv]
    scores = body.op(
        "Mul",
        [body.op("MatMul", [qg, body.op("Transpose", [kg], "kT", perm=[0, 2, 1])]), tabs["scale"]],
        "scores",
    )  # [c, m*bs, n*bs]; invalid keys carry the key bias via the augmented column
    if m > 1:
        scores = body.op("Reshape", [scores, body.i64(-1, m, bs, n * bs)], "scores4")
    vis = None
    mid = (1,) if m > 1 else ()  # the heads axis of a per-unit mask
    if bk.has_partial:
        if bk.uniform:  # one constant [bs, n*bs] broadcast over units and heads
            tiles = table[bk.mask_ids[0]].transpose(1, 0, 2).reshape(bs, n * bs)
            tb = body.const(
                tiles if exact else np.where(tiles, 0.0, -np.inf).astype(np.float32), "tmask"
            )
        else:
            src = tabs["bool"] if exact else tabs["bias"]
            tiles = body.op("Gather", [src, chunk_of(item["mids"], "mids")])  # [c, n, bs, bs]
            tb = body.op(
                "Reshape",
                [body.op("Transpose", [tiles], perm=[0, 2, 1, 3]), body.i64(-1, *mid, bs, n * bs)],
                "tmask",
            )  # [c, (1,) bs, n*bs]
        if exact:
            scores = body.op("Where", [tb, scores, tabs["ninf"]], "masked")
            vis = tb
        else:
            scores = body.op("Add", [scores, tb], "masked")
    probs = body.op("Softmax", [scores], "probs", axis=-1)
    if m > 1:
        probs = body.op("Reshape", [probs, body.i64(-1, m * bs, n * bs)], "probs3")

    def per_unit(x: str, hint: str) -> str:  # [c, m*bs, Dv] -> [c, (m,) bs, Dv]
        return body.op("Reshape", [x, o_unit_shape], hint) if m > 1 else x

    o = per_unit(body.op("MatMul", [probs, vg], "pv"), "pv4")
    fzero = tabs["fzero"]
    if vis is not None:
        # keep 0 * NaN of hidden keys out: P @ finite(V), unless a visible V is
        # non-finite for that (row, dim), where the raw product is the answer
        nonfin = body.op("Not", [body.op("Equal", [body.op("Sub", [vg, vg]), fzero])])
        vfin = body.op("Where", [nonfin, fzero, vg], "vfin")
        o_fin = per_unit(body.op("MatMul", [probs, vfin]), "pv_fin")
        nonfin = body.op("Cast", [nonfin], to=f32)
        if m > 1:
            nonfin = body.op("Unsqueeze", [nonfin, body.i64(1)])  # [c, 1, n*bs, Dv]
        cnt = body.op(
            "MatMul", [body.op("Cast", [vis], to=f32), nonfin], "nonfinite_visible"
        )  # [c, (1,) bs, Dv]
        o = body.op("Where", [body.op("Greater", [cnt, fzero]), o, o_fin], "pv_exact")
    if "dead_uniform" in item:
        o = body.op("Where", [body.const(item["dead_uniform"][:, None], "dead"), fzero, o], "o")
    elif "dead" in item:
        dead = body.op("Reshape", [chunk_of(item["dead"], "dead"), body.i64(-1, *mid, bs, 1)])
        o = body.op("Where", [dead, fzero, o], "o")
    out = body.op("Reshape", [o, out_shape], "chunk_out")  # [c*m*bs, Dv]
    inputs = [
        helper.make_tensor_value_info(
            name, TensorProto.BOOL if outer == item.get("dead") else TensorProto.INT64, None
        )
        for outer, name in scanned.items()
    ]
    graph = helper.make_graph(
        body.nodes, p + "scan_body", inputs, [helper.make_tensor_value_info(out, f32, None)]
    )
    # every [n_iter * chunk, k] array as [n_iter, chunk, k]: Scan hands one chunk per step
    chunks = [
        g.op(
            "Reshape",
            [
                outer,
                g.op("Concat", [g.i64(-1), item["chunk"], g.op("Shape", [outer], start=1)], axis=0),
            ],
        )
        for outer in scanned
    ]
    stacked = g.op(
        "Scan", chunks, "scan", body=graph, num_scan_inputs=len(chunks)
    )  # [n_iter, c*m*bs, Dv]
    return g.op("Reshape", [stacked, g.op("Concat", [g.i64(-1), v.dv1], axis=0)], "out")


def _assemble(
    g: _Graph, v: _Views, cat: str, row_ids: list[str], *, bs: int, n_heads: int, max_s: int
) -> None:
    """Step 4: one token-level Gather puts the computed rows in ``[B, H, S, Dv]`` order
    (rows never computed read the zero block), then the length guard and the cast."""
    zero1, one1 = g.i64(0), g.i64(1)
    if not row_ids:  # a layout without any tile: every row reads the zero block
        ids = g.const(np.zeros(0, np.int64), "no_rows")
    elif len(row_ids) == 1:
        ids = row_ids[0]
    else:
        ids = g.op("Concat", row_ids, "row_ids", axis=0)
    n_ids = g.op("Shape", [ids], "n_ids")  # computed block rows; the zero block sits at n_ids
    # inverse permutation over the B*H*nb output block rows (+ a trash slot)
    inv = g.op(
        "ScatterElements",
        [
            g.op("Expand", [n_ids, g.op("Add", [v.n_out, one1])], "inv0"),
            ids,
            g.op("Range", [g.const(np.int64(0)), g.op("Squeeze", [n_ids]), g.const(np.int64(1))]),
        ],
        "inv",
        axis=0,
    )
    inv = g.op("Slice", [inv, zero1, v.n_out], "inv_real")  # drop the trash slot
    tokens = g.op(
        "Add",
        [
            g.op("Unsqueeze", [g.op("Mul", [inv, g.i64(bs)]), one1]),
            g.const(np.arange(bs, dtype=np.int64)),
        ],
    )  # [B*H*nb, bs]
    tokens = g.op("Reshape", [tokens, g.op("Concat", [v.b1, g.i64(n_heads, -1)], axis=0)])
    tokens = g.op("Slice", [tokens, zero1, v.s1, g.i64(2)], "tokens")  # [B, H, S]
    out = g.op("Gather", [cat, tokens], "ordered", axis=0)  # [B, H, S, Dv]
    # no-op for S <= max_seq_len; a request longer than the layout fails here, loudly
    too_long = g.op("Cast", [g.op("Greater", [v.s1, g.i64(max_s)])], to=TensorProto.INT64)
    s_guard = g.op("Add", [v.s1, too_long], "S_guard")  # S + 1 when S > max_seq_len
    guard = g.op("Concat", [v.b1, g.i64(n_heads), s_guard, v.dv1], "out_guard_shape", axis=0)
    out = g.op("Reshape", [out, guard], "out_guard")
    g.nodes.append(
        helper.make_node("CastLike", [out, opspec.INPUT_NAMES[0]], [opspec.OUTPUT_NAMES[0]])
    )


def build_function(
    layout: BlockLayout,
    *,
    scale: float,
    has_key_padding_mask: bool,
    opset: int,
    overload: str = "",
    max_padding: float = 0.25,
    max_seq_len: int | None = None,
    num_kv_heads: int | None = None,
    work_budget: int = WORK_BUDGET_BYTES,
) -> onnx.FunctionProto:
    """Build the block-sparse FunctionProto for one layout (see the module docstring).

    Args:
        layout: the layout held by the node's constant inputs (max sequence length), one
            pattern per query head.
        scale: softmax scale baked into the body (the node's ``scale`` attribute).
        has_key_padding_mask: whether nodes calling this function pass ``key_padding_mask``
            (the body reads the input only when True).
        opset: the model's default-domain opset version (>= ``MIN_OPSET``); the function
            imports exactly this version, or ``onnx.checker`` rejects the model.
        overload: ``FunctionProto.overload`` (IR >= 10), to tell apart several layouts in
            one model; "" for the single-layout case.
        max_padding: see :func:`plan_buckets`.
        max_seq_len: longest request accepted (default ``layout.seq_len``); a longer one
            makes the final ``Reshape`` fail, so ORT reports an error instead of a wrong
            result.
        num_kv_heads: ``Hkv`` of the key/value inputs when known at export time: query
            heads of one K/V head with identical layouts then share one gather of the
            K/V tiles, and a key with another head count fails at run time. None: the
            body derives ``Hkv`` from the key's shape (any divisor of H) and computes
            every query head as its own unit.
        work_budget: bytes one scan step may hold (:data:`WORK_BUDGET_BYTES`).

    Returns:
        ``FunctionProto`` with domain ``opspec.DOMAIN``, name ``opspec.OP_TYPE``, inputs
        ``opspec.INPUT_NAMES`` and output ``opspec.OUTPUT_NAMES``. Inputs: query
        ``[B, H, S, D]``, key ``[B, Hkv, S, D]``, value ``[B, Hkv, S, Dv]`` float32 or
        float16 with ``H == layout.num_heads``, ``H % Hkv == 0`` and ``1 <= S <=
        max_seq_len``; key_padding_mask ``[B, S]`` bool (True = real token). Output
        ``[B, H, S, Dv]`` in the dtype of ``query``.

    Raises:
        ValueError: ``opset < MIN_OPSET``, a non-finite / non-positive ``scale``, a
            ``num_kv_heads`` that does not divide H, or a non-positive ``work_budget``.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"function body needs default opset >= {MIN_OPSET}, got {opset}")
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite positive float, got {scale}")
    if work_budget < 1:
        raise ValueError(f"work_budget must be a positive number of bytes, got {work_budget}")
    n_heads = layout.num_heads
    num_kv_heads = _check_kv_heads(n_heads, num_kv_heads)
    bs = int(layout.block_size)
    buckets = plan_buckets(layout, max_padding, num_kv_heads=num_kv_heads)
    g = _Graph()
    v = _views(
        g,
        bs=bs,
        n_heads=n_heads,
        num_kv_heads=num_kv_heads,
        scale=scale,
        has_key_padding_mask=has_key_padding_mask,
    )
    table = np.concatenate(
        [
            np.ones((1, bs, bs), dtype=bool),
            np.zeros((1, bs, bs), dtype=bool),
            layout.masks.astype(bool),
        ]
    )
    any_partial = any(b.has_partial and b.width for b in buckets)
    tabs = {
        "fzero": g.const(np.float32(0.0), "fzero"),
        "ninf": g.const(np.float32(-np.inf), "ninf"),
        "scale": g.const(np.float32(scale), "scale"),
        "table": table,
    }
    if any_partial:
        tabs["bias"] = g.const(np.where(table, 0.0, -np.inf).astype(np.float32), "bias_table")
        tabs["bool"] = g.const(table, "mask_table")
    # units without tiles are not computed: their rows read the zero row
    items = [
        _prepare(
            g,
            bk,
            bi,
            v,
            bs=bs,
            n_heads=n_heads,
            budget=work_budget,
            num_blocks=layout.num_blocks,
            table=table,
        )
        for bi, bk in enumerate(buckets)
        if bk.width
    ]
    zshape = g.op("Concat", [g.i64(bs), v.dv1], "zero_block_shape", axis=0)
    zero_row = g.op("Expand", [g.const(np.zeros((1, 1), np.float32)), zshape], "zero_block")

    def emit(gg: _Graph, exact: bool) -> str:
        outs = [_loop(gg, it, v, bs=bs, exact=exact, tabs=tabs) for it in items]
        return gg.op("Concat", [*outs, zero_row], "cat", axis=0)  # [T, Dv] token rows

    if any_partial:
        # exact path only when a real (not padded) K or V value is non-finite: the sum of
        # all K and V is non-finite if any value is (or, harmlessly, on overflow of huge
        # finite values: the exact path is always correct)
        total = g.op(
            "Add",
            [g.op("ReduceSum", [v.kp], keepdims=0), g.op("ReduceSum", [v.vp], keepdims=0)],
            "kv_sum",
        )
        cond = g.op("Or", [g.op("IsNaN", [total]), g.op("IsInf", [total])], "any_nonfinite")
        branches = {}
        for tag, exact in (("exact_", True), ("fast_", False)):
            gg = _Graph(prefix=tag)
            out = emit(gg, exact)
            branches[tag] = helper.make_graph(
                gg.nodes,
                tag + "path",
                [],
                [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
            )
        cat = g.op(
            "If", [cond], "cat", then_branch=branches["exact_"], else_branch=branches["fast_"]
        )
    else:
        cat = emit(g, exact=False)
    max_s = layout.seq_len if max_seq_len is None else int(max_seq_len)
    _assemble(g, v, cat, [it["row_ids"] for it in items], bs=bs, n_heads=n_heads, max_s=max_s)
    return helper.make_function(
        opspec.DOMAIN,
        opspec.OP_TYPE,
        list(opspec.INPUT_NAMES),
        list(opspec.OUTPUT_NAMES),
        g.nodes,
        [helper.make_opsetid("", opset)],
        attributes=list(FUNCTION_ATTRIBUTES),
        doc_string=(
            f"Block-sparse attention over a baked layout (hash {layout.layout_hash()[:16]}, "
            f"block {bs}, {n_heads} heads, {len(buckets)} buckets); see sparse_attn docs."
        ),
        overload=overload,
    )


def static_kv_heads(graph: onnx.GraphProto, key_name: str) -> int | None:
    """``Hkv`` of the key tensor ``key_name`` when ``graph`` declares it as a fixed dim.

    Reads the graph's inputs, outputs and ``value_info`` (what the exporter and shape
    inference record; a key can be a graph output, e.g. a cache): axis 1 of a rank-4 key. Returns None when it is unknown or symbolic; the body
    then reads ``Hkv`` from the key's shape at run time.
    """
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.name != key_name or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value") and dims[1].dim_value > 0:
            return int(dims[1].dim_value)
        return None
    return None


def make_node_model(
    layout: BlockLayout,
    *,
    dtype: str = "float32",
    head_dim: int = 16,
    value_dim: int | None = None,
    key_padding_mask: bool = True,
    scale: float | None = None,
    opset: int = 20,
    num_kv_heads: int | None = None,
    bake_kv_heads: bool = True,
    work_budget: int = WORK_BUDGET_BYTES,
) -> onnx.ModelProto:
    """A model holding one ``BlockSparseAttention`` node and its function (tests, benches).

    Inputs ``query [batch, H, seq_len, head_dim]``, ``key [batch, Hkv, seq_len, head_dim]``,
    ``value [batch, Hkv, seq_len, value_dim]`` of ``dtype`` (``Hkv = num_kv_heads``,
    default H) and optional ``key_padding_mask [batch, seq_len]`` bool; output ``output``.
    The layout tensors are initializers. ``bake_kv_heads=False`` builds the body that
    reads Hkv from the key's shape at run time.
    """
    dv = head_dim if value_dim is None else value_dim
    scale = opspec.default_scale(head_dim) if scale is None else float(scale)
    et = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    h = layout.num_heads
    hkv = h if num_kv_heads is None else int(num_kv_heads)
    kv_dim = hkv if bake_kv_heads else "kv_heads"
    masks = layout.masks if layout.masks.shape[0] else np.zeros((1, *layout.masks.shape[1:]))
    inits = [
        numpy_helper.from_array(np.asarray(a, dtype=dt), name)
        for name, a, dt in (
            ("row_ptr", layout.row_ptr, np.int32),
            ("col_idx", layout.col_idx, np.int32),
            ("mask_idx", layout.mask_idx, np.int32),
            ("masks", masks, np.uint8),
        )
    ]
    inputs = [
        helper.make_tensor_value_info("query", et, ["batch", h, "seq_len", head_dim]),
        helper.make_tensor_value_info("key", et, ["batch", kv_dim, "seq_len", head_dim]),
        helper.make_tensor_value_info("value", et, ["batch", kv_dim, "seq_len", dv]),
    ]
    node_inputs = ["query", "key", "value", "row_ptr", "col_idx", "mask_idx", "masks"]
    if key_padding_mask:
        inputs.append(
            helper.make_tensor_value_info(
                "key_padding_mask", TensorProto.BOOL, ["batch", "seq_len"]
            )
        )
        node_inputs.append("key_padding_mask")
    node = helper.make_node(
        opspec.OP_TYPE,
        node_inputs,
        ["output"],
        domain=opspec.DOMAIN,
        **opspec.OpAttributes(layout.block_size, scale).as_onnx_attributes(),
    )
    graph = helper.make_graph(
        [node],
        "block_sparse_attention",
        inputs,
        [helper.make_tensor_value_info("output", et, ["batch", h, "seq_len", dv])],
        initializer=inits,
    )
    fn = build_function(
        layout,
        scale=scale,
        has_key_padding_mask=key_padding_mask,
        opset=opset,
        num_kv_heads=hkv if bake_kv_heads else None,
        work_budget=work_budget,
    )
    return helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", opset),
            helper.make_opsetid(opspec.DOMAIN, opspec.OP_VERSION),
        ],
        functions=[fn],
        ir_version=10,
    )
