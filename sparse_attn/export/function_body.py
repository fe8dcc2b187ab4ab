"""The model-local ONNX function of ``sparse_attn::BlockSparseAttention``: standard ops only.

ONNX Runtime (any provider) and ``onnx.reference`` run an exported model through this
FunctionProto; TensorRT maps the node to the plugin instead (SPEC section 2). The body is
generated per layout: the layout is a constant of the model, so its structure is baked
into the function as small integer constants, while the node's layout inputs stay in the
signature for the plugin (the body does not read them).

Algorithm (block-sparse, exact per SPEC section 1):

1. Request sizes: ``nb = ceil(S / bs)`` query/key blocks (dynamic). Q/K/V are cast to
   float32 and padded along S to ``(nb + 1) * bs``: block ``nb`` is an extra all-invalid
   block. Key validity ``ok[b, j] = j < S and key_padding_mask[b, j]``: K at invalid keys
   is replaced by 0 with ``Where`` (always), V too when there is a key padding mask (NaN/Inf
   in padded slots never reach a product). Q is augmented with a column of ones, K with a
   column holding ``0`` (valid) or ``-1e30`` (invalid key), so ``Q_aug @ K_aug^T`` already
   carries the key mask: no per-score mask pass for padding or crop. The scale multiplies
   the scores (ORT fuses it into the MatMul). Views: ``[B, H*(nb+1), bs, .]``.
2. Export-time buckets (:func:`plan_buckets`): (head, query block) rows with the same tile
   count and full/partial mask sequence form *uniform* buckets (one ``[bs, n*bs]`` tile
   bias broadcast over the rows, e.g. all interior rows of a band); leftover rows are
   merged by tile count with bounded padding (per-row biases); rows without tiles form a
   zero bucket. Global rows (all ``nQB`` tiles) get their own bucket, so they never make
   the other rows dense (FACTS: a padded ``[rows, max_nnz]`` gather pays for the longest
   row everywhere).
3. Per bucket (rows sorted by query block, so rows inside the request are a prefix whose
   length is computed at run time; at least one row is computed): gather the rows' Q
   blocks ``[B, R, bs, D+1]`` and their K/V tiles ``[B, R, n*bs, .]`` (a tile whose key
   block lies beyond the request points at the all-invalid block ``nb``); scores
   ``= Q_aug @ K_aug^T [B, R, bs, n*bs]``; add the tile bias (``0``/``-inf`` from the
   partial masks; padding tiles all ``-inf``) only if the bucket has partial tiles;
   ``Softmax`` in fp32; ``@ V``. A query whose visible keys are all invalid averages the
   zeroed V and outputs exactly 0; a query with no visible key in the layout (``-inf``
   row, statically known) is set to 0 with ``Where``.
4. Bucket outputs are concatenated, put back in row order with one ``Gather`` by the
   inverse permutation (the dummy row of a bucket without rows in the request goes to a
   trash slot), reshaped to ``[B, H, nb*bs, Dv]``, cropped to ``S`` and cast
   back to the query dtype (``CastLike``).

Work beyond the non-empty tiles: (a) padding tiles of merged buckets (bounded by
``max_padding``; 5488 computed vs 5392 stored tiles for ``band(w=256) | global(n=64)``
at S=4096, H=8, block 64); (b) for a request shorter than ``max_seq_len``, stored tiles
whose key block lies beyond the request are computed against the all-invalid block; (c)
the ragged last block is padded to ``bs`` tokens, plus the one invalid block; (d) one
extra column in Q/K (the key mask). Tile biases are expanded from constants only, so
ONNX Runtime folds them at session creation.

NaN safety: masked keys are removed with ``Where`` (padding, crop) or ``-inf`` biases
on finite scores. Limitation: a key that is a real token but hidden from some queries
by a *partial tile mask* is still multiplied by probability 0 in ``P @ V``; if its V is
NaN/Inf the NaN reaches those rows (its own visible rows get NaN anyway).

Scaled dot-product attention: Vaswani et al., "Attention Is All You Need"
(arXiv 1706.03762), Sec. 3.2.1; block-sparse tiling as in Child et al., "Generating Long
Sequences with Sparse Transformers" (arXiv 1904.10509), Sec. 4.
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
#: Score added for keys outside the request or padded (finite: their V is 0, so a row
#: that sees only such keys averages zeros and outputs exactly 0).
_KEY_BIAS = -1.0e30


@dataclass(frozen=True)
class Bucket:
    """Rows of one bucket (export-time constants).

    Attributes:
        heads: ``int64 [R]`` head of each row; rows sorted by ``rows`` ascending.
        rows: ``int64 [R]`` query block of each row.
        cols: ``int64 [R, n]`` key block of each tile (padding repeats a real column).
        mask_ids: ``int64 [R, n]`` index into the mask table: 0 = full, 1 = padding
            (nothing visible), ``2 + k`` = ``layout.masks[k]``.
    """

    heads: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    mask_ids: np.ndarray

    @property
    def width(self) -> int:
        """Tiles per row ``n`` (0 for the zero bucket)."""
        return int(self.cols.shape[1])

    @property
    def has_partial(self) -> bool:
        """Whether any tile of the bucket needs a mask (partial or padding)."""
        return bool((self.mask_ids != 0).any())

    @property
    def uniform(self) -> bool:
        """Whether every row has the same mask sequence (one broadcast mask)."""
        return bool((self.mask_ids == self.mask_ids[:1]).all())


def plan_buckets(
    layout: BlockLayout, max_padding: float = 0.25, min_uniform_rows: int = 16
) -> list[Bucket]:
    """Group the (head, query block) rows of ``layout`` into buckets.

    Rows with the same tiles-per-row count and the same full/partial mask sequence form a
    *uniform* group; a group of at least ``min_uniform_rows`` rows is a bucket of its own
    (its mask is one ``[bs, n * bs]`` constant broadcast over the rows). The remaining
    rows are merged by tile count, widest first, while the padding stays within
    ``max_padding``.

    Args:
        layout: the block layout.
        max_padding: largest fraction of padding tiles a merged bucket may carry.
        min_uniform_rows: smallest uniform group kept as its own bucket.

    Returns:
        Buckets; the zero bucket (rows without tiles, ``width == 0``) last if any. Every
        row ``(h, r)`` of the layout is in exactly one bucket.
    """
    h_count, nqb = layout.num_heads, layout.num_blocks

    def mids_of(h: int, r: int) -> tuple[int, ...]:
        m = layout.row(h, r)[1]
        return tuple(int(x) for x in np.where(m < 0, 0, m.astype(np.int64) + 2))

    uniform: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    empty: list[tuple[int, int]] = []
    for h in range(h_count):
        for r in range(nqb):
            key = mids_of(h, r)
            if key:
                uniform.setdefault(key, []).append((h, r))
            else:
                empty.append((h, r))
    groups: list[tuple[int, list[tuple[int, int]]]] = []
    rest: dict[int, list[tuple[int, int]]] = {}
    for key, members in uniform.items():
        if len(members) >= min_uniform_rows:
            groups.append((len(key), members))
        else:
            rest.setdefault(len(key), []).extend(members)
    merged: list[tuple[int, list[tuple[int, int]]]] = []
    for n in sorted(rest, reverse=True):
        rows = rest[n]
        if merged:
            width, members = merged[-1]
            real = sum(len(layout.row(h, r)[0]) for h, r in members) + n * len(rows)
            total = width * (len(members) + len(rows))
            if 1.0 - real / total <= max_padding:
                members.extend(rows)
                continue
        merged.append((n, list(rows)))
    buckets = []
    for width, members in sorted(groups + merged, key=lambda g: -g[0] * len(g[1])):
        members = sorted(members, key=lambda hr: (hr[1], hr[0]))
        cols = np.zeros((len(members), width), dtype=np.int64)
        mids = np.ones((len(members), width), dtype=np.int64)
        for i, (h, r) in enumerate(members):
            c = layout.row(h, r)[0]
            cols[i, : len(c)] = c
            cols[i, len(c) :] = c[0]
            mids[i, : len(c)] = mids_of(h, r)
        buckets.append(_bucket(members, cols, mids))
    if empty:
        members = sorted(empty, key=lambda hr: (hr[1], hr[0]))
        z = np.zeros((len(members), 0), dtype=np.int64)
        buckets.append(_bucket(members, z, z))
    return buckets


def _bucket(members: list[tuple[int, int]], cols: np.ndarray, mids: np.ndarray) -> Bucket:
    return Bucket(
        heads=np.array([h for h, _ in members], dtype=np.int64),
        rows=np.array([r for _, r in members], dtype=np.int64),
        cols=cols,
        mask_ids=mids,
    )


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
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def const(self, value, hint: str = "c") -> str:
        arr = np.asarray(value)
        out = self.name(hint)
        self.nodes.append(
            helper.make_node("Constant", [], [out], value=numpy_helper.from_array(arr, out))
        )
        return out


def _head(g: _Graph, name: str, arr: str, zero1: str, count: str) -> str:
    """``arr[:count]`` along axis 0."""
    return g.op("Slice", [arr, zero1, count, zero1], name)


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def build_function(
    layout: BlockLayout,
    *,
    scale: float,
    has_key_padding_mask: bool,
    opset: int,
    overload: str = "",
    max_padding: float = 0.25,
    max_seq_len: int | None = None,
) -> onnx.FunctionProto:
    """Build the block-sparse FunctionProto for one layout (see the module docstring).

    Args:
        layout: the layout held by the node's constant inputs (max sequence length).
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

    Returns:
        ``FunctionProto`` with domain ``opspec.DOMAIN``, name ``opspec.OP_TYPE``, inputs
        ``opspec.INPUT_NAMES`` and output ``opspec.OUTPUT_NAMES``. Inputs: query/key
        ``[B, H, S, D]``, value ``[B, H, S, Dv]`` float32 or float16 with ``H ==
        layout.num_heads`` and ``1 <= S <= nQB * block_size``; key_padding_mask ``[B, S]``
        bool (True = real token). Output ``[B, H, S, Dv]`` in the dtype of ``query``.

    Raises:
        ValueError: ``opset < MIN_OPSET`` or a non-finite / non-positive ``scale``.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"function body needs default opset >= {MIN_OPSET}, got {opset}")
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite positive float, got {scale}")
    bs = int(layout.block_size)
    n_heads = layout.num_heads
    buckets = plan_buckets(layout, max_padding)
    g = _Graph()
    f32 = TensorProto.FLOAT
    q_in, k_in, v_in = opspec.INPUT_NAMES[:3]
    kpm_in = opspec.INPUT_NAMES[7]

    # -- 1. request sizes; padded, sanitised, augmented block views
    zero1, one1 = g.const(_i64(0), "zero"), g.const(_i64(1), "one")
    m1 = g.const(_i64(-1), "m1")
    shape_q = g.op("Shape", [q_in], "shape_q")
    shape_v = g.op("Shape", [v_in], "shape_v")
    s1 = g.op("Slice", [shape_q, g.const(_i64(2)), g.const(_i64(3))], "S")
    d1 = g.op("Slice", [shape_q, g.const(_i64(3)), g.const(_i64(4))], "D")
    dv1 = g.op("Slice", [shape_v, g.const(_i64(3)), g.const(_i64(4))], "Dv")
    b1 = g.op("Slice", [shape_q, zero1, one1], "B")
    bs1 = g.const(_i64(bs), "bs")
    nb1 = g.op("Div", [g.op("Add", [s1, g.const(_i64(bs - 1))]), bs1], "nb")
    nbx1 = g.op("Add", [nb1, one1], "nb_ext")  # + one all-invalid block for cropped tiles
    spx1 = g.op("Mul", [nbx1, bs1], "Sp_ext")
    padlen = g.op("Sub", [spx1, s1], "padlen")
    pads4 = g.op("Concat", [g.const(_i64(0, 0, 0, 0, 0, 0)), padlen, zero1], "pads4", axis=0)
    fzero = g.const(np.array(0.0, dtype=np.float32), "fzero")

    # key validity over the extended sequence [B|1, Sp_ext]: inside the request and real
    key_ok = g.op(
        "Less",
        [g.op("Range", [g.const(np.int64(0)), g.op("Squeeze", [spx1]), g.const(np.int64(1))]), s1],
        "in_request",
    )
    key_ok = g.op("Unsqueeze", [key_ok, zero1], "in_request2")  # [1, Sp_ext]
    if has_key_padding_mask:
        kpm_u8 = g.op(
            "Cast", [g.op("Cast", [kpm_in], "kpm_bool", to=TensorProto.BOOL)], to=TensorProto.UINT8
        )
        pads2 = g.op("Concat", [g.const(_i64(0, 0, 0)), padlen], "pads2", axis=0)
        kpm_pad = g.op("Pad", [kpm_u8, pads2, g.const(np.array(0, dtype=np.uint8))], "kpm_pad")
        key_ok = g.op("And", [g.op("Cast", [kpm_pad], to=TensorProto.BOOL), key_ok], "key_ok")
    key_ok4 = g.op("Unsqueeze", [key_ok, g.const(_i64(1, 3))], "key_ok4")  # [B|1, 1, Sp_ext, 1]
    key_bias_c = g.const(np.array(_KEY_BIAS, np.float32), "key_bias")

    def padded(x: str, hint: str) -> str:
        x32 = g.op("Cast", [x], f"{hint}32", to=f32)
        return g.op("Pad", [x32, pads4, fzero], f"{hint}pad")  # [B, H, Sp_ext, d]

    def blocks(x: str, dim: str, hint: str) -> str:
        shp = g.op("Concat", [zero1, m1, bs1, dim], f"{hint}shp", axis=0)
        return g.op("Reshape", [x, shp], f"{hint}blk")  # [B, H*nb_ext, bs, dim]

    d_aug = g.op("Add", [d1, one1], "D_aug")
    # Q * scale, padded along S (rows discarded later) and along D with the ones column
    pads_q = g.op("Concat", [g.const(_i64(0, 0, 0, 0, 0, 0)), padlen, one1], "pads_q", axis=0)
    q32 = g.op("Cast", [q_in], "q32", to=f32)
    scale_c = g.const(np.array(scale, dtype=np.float32), "scale")
    q_aug = g.op("Pad", [q32, pads_q, g.const(np.array(1.0, np.float32))], "q_aug")
    qb = blocks(q_aug, d_aug, "q")
    # K padded along S and D; one Where keeps real keys, zeroes invalid ones (padded slots
    # may hold NaN/Inf: selected away, never multiplied) and writes the key bias into the
    # extra column of invalid keys. V: zeros beyond S, Where on padded slots.
    kpad = g.op("Pad", [g.op("Cast", [k_in], "k32", to=f32), pads_q, fzero], "kpad")
    real_dim = g.op(
        "Less",
        [g.op("Range", [g.const(np.int64(0)), g.op("Squeeze", [d_aug]), g.const(np.int64(1))]), d1],
        "real_dim",
    )  # [D+1]: False for the key-bias column
    k_sel = g.op("And", [key_ok4, real_dim], "k_sel")
    k_fill = g.op("Where", [g.op("Or", [key_ok4, real_dim]), fzero, key_bias_c], "k_fill")
    kp = g.op("Where", [k_sel, kpad, k_fill], "k_aug")  # [B, H, Sp_ext, D+1]
    kb = blocks(kp, d_aug, "k")
    vp = padded(v_in, "v")
    if has_key_padding_mask:
        vp = g.op("Where", [key_ok4, vp, fzero], "v_safe")
    vb = blocks(vp, dv1, "v")

    table = np.concatenate(
        [
            np.ones((1, bs, bs), dtype=bool),
            np.zeros((1, bs, bs), dtype=bool),
            layout.masks.astype(bool),
        ]
    )
    bias_table = bool_table = None
    if any(b.has_partial for b in buckets):
        bias_table = g.const(np.where(table, 0.0, -np.inf).astype(np.float32), "bias_table")
        bool_table = g.const(table, "mask_table")
    ninf = g.const(np.array(-np.inf, dtype=np.float32), "ninf")

    # per-bucket row bookkeeping (outer graph; the math below may run in If branches)
    n_out = g.op("Mul", [nb1, g.const(_i64(n_heads))], "n_out")  # output rows H * nb
    prep = []
    row_ids = []
    for bi, bk in enumerate(buckets):
        p = f"b{bi}_"
        rows_r = g.const(bk.rows, p + "rows")
        # rows inside the request: a prefix of the bucket (rows sorted by query block);
        # at least one row is always computed (a zero-row batch trips Reshape), extra
        # rows are clamped onto the all-invalid block and dropped from the output.
        # count tables indexed by nb (export-time searchsorted; S > max_seq_len is out of
        # the tables' range and fails in Gather)
        in_req = np.searchsorted(bk.rows, np.arange(layout.num_blocks + 1), side="left")
        count = g.op(
            "Gather", [g.const(np.maximum(in_req, 1).astype(np.int64), p + "countx_tab"), nb1]
        )
        heads_c = _head(g, p + "heads", g.const(bk.heads, p + "heads_all"), zero1, count)
        rows_c = _head(g, p + "rows_in", rows_r, zero1, count)
        row_id = g.op("Add", [g.op("Mul", [heads_c, nb1]), rows_c])
        # a dummy row (bucket with no row in the request) goes to the trash slot H * nb
        row_ids.append(g.op("Where", [g.op("Less", [rows_c, nb1]), row_id, n_out], p + "row_id"))
        item = {"p": p, "bk": bk, "count": count}
        if bk.width:
            heads_x = g.op("Mul", [heads_c, nbx1], p + "head_off")  # [Rc]
            item["qidx"] = g.op("Add", [heads_x, g.op("Min", [rows_c, nb1])], p + "qidx")
            cols_c = _head(g, p + "cols", g.const(bk.cols, p + "cols_all"), zero1, count)
            item["kidx"] = g.op(
                "Add",
                [g.op("Unsqueeze", [heads_x, m1]), g.op("Min", [cols_c, nb1])],
                p + "kidx",
            )  # [Rc, n]; key blocks beyond the request -> the all-invalid block nb
        prep.append(item)

    def emit(gg: _Graph, exact: bool) -> str:
        """Bucket math into ``gg``; returns the concatenated outputs [B, rows, bs, Dv].

        ``exact``: tile masks applied with ``Where`` (a NaN/Inf K hidden by a partial tile
        cannot reach a score) and ``P @ V`` without 0 * NaN from hidden non-finite V.
        """
        outs = []
        for item in prep:
            p, bk, count = item["p"], item["bk"], item["count"]
            p = gg.prefix + p
            if bk.width == 0:
                zshape = gg.op("Concat", [b1, count, bs1, dv1], p + "zshape", axis=0)
                zero = gg.const(np.zeros((1, 1, 1, 1), np.float32), p + "z")
                outs.append(gg.op("Expand", [zero, zshape], p + "zero"))
                continue
            n = bk.width
            qg = gg.op("Gather", [qb, item["qidx"]], p + "qg", axis=1)  # [B, Rc, bs, D+1]
            kg, vg = (
                gg.op(
                    "Reshape",
                    [
                        gg.op("Gather", [src, item["kidx"]], p + hint + "g5", axis=1),
                        gg.op("Concat", [gg.const(_i64(0, 0, n * bs)), dim], axis=0),
                    ],
                    p + hint + "g",
                )  # [B, Rc, n*bs, d]
                for src, dim, hint in ((kb, d_aug, "k"), (vb, dv1, "v"))
            )
            scores = gg.op(
                "MatMul",
                [qg, gg.op("Transpose", [kg], p + "kT", perm=[0, 1, 3, 2])],
                p + "scores",
            )  # [B, Rc, bs, n*bs]; invalid keys carry _KEY_BIAS via the augmented column
            # scale after the product (ORT folds it into the MatMul); the key bias stays
            # overwhelming: scale * -1e30
            scores = gg.op("Mul", [scores, scale_c], p + "scaled")
            vis = None
            if bk.has_partial:
                table_c = bool_table if exact else bias_table
                ids = bk.mask_ids[0] if bk.uniform else bk.mask_ids
                tb = gg.op("Gather", [table_c, gg.const(ids, p + "mids")], p + "tiles")
                if bk.uniform:
                    tb = gg.op("Transpose", [tb], p + "tilesT", perm=[1, 0, 2])  # [bs, n, bs]
                    tb = gg.op("Reshape", [tb, gg.const(_i64(bs, n * bs))], p + "tmask")
                else:
                    tb = gg.op("Transpose", [tb], p + "tilesT", perm=[0, 2, 1, 3])
                    tb = gg.op("Reshape", [tb, gg.const(_i64(len(bk.rows), bs, n * bs))])
                    tb = _head(gg, p + "tmask_in", tb, zero1, count)
                if exact:
                    scores = gg.op("Where", [tb, scores, ninf], p + "masked")
                    vis = tb
                else:
                    scores = gg.op("Add", [scores, tb], p + "masked")
            probs = gg.op("Softmax", [scores], p + "probs", axis=-1)
            o = gg.op("MatMul", [probs, vg], p + "pv")  # [B, Rc, bs, Dv]
            if vis is not None:
                # keep 0 * NaN of hidden keys out: P @ finite(V), unless a visible V is
                # non-finite for that (row, dim), where the raw product is the answer
                nonfin = gg.op("Not", [gg.op("Equal", [gg.op("Sub", [vg, vg]), fzero])])
                vfin = gg.op("Where", [nonfin, fzero, vg], p + "vfin")
                o_fin = gg.op("MatMul", [probs, vfin], p + "pv_fin")
                cnt = gg.op(
                    "MatMul",
                    [gg.op("Cast", [vis], to=f32), gg.op("Cast", [nonfin], to=f32)],
                    p + "nonfinite_visible",
                )
                o = gg.op("Where", [gg.op("Greater", [cnt, fzero]), o, o_fin], p + "pv_exact")
            dead = ~table[bk.mask_ids].any(axis=(1, 3))  # [R, bs] rows with no visible key
            if dead.any() and bk.uniform:
                o = gg.op("Where", [gg.const(dead[0][:, None], p + "dead"), fzero, o], p + "o")
            elif dead.any():
                dead_c = _head(gg, p + "dead", gg.const(dead[:, :, None]), zero1, count)
                o = gg.op("Where", [dead_c, fzero, o], p + "o")
            outs.append(o)
        return outs[0] if len(outs) == 1 else gg.op("Concat", outs, "cat", axis=1)

    if any(b.has_partial for b in buckets):
        # exact path only when a real (unmasked-by-padding) K or V value is non-finite
        # the sum of all K and V is non-finite if any value is (or, harmlessly, on
        # overflow of huge finite values: the exact path is always correct)
        total = g.op(
            "Add",
            [g.op("ReduceSum", [kp], keepdims=0), g.op("ReduceSum", [vp], keepdims=0)],
            "kv_sum",
        )
        cond = g.op("Or", [g.op("IsNaN", [total]), g.op("IsInf", [total])], "any_nonfinite")
        branches = {}
        for tag, exact in (("exact_", True), ("fast_", False)):
            gg = _Graph(prefix=tag)
            out = emit(gg, exact)
            branches[tag] = helper.make_graph(
                gg.nodes, tag + "path", [], [helper.make_tensor_value_info(out, f32, None)]
            )
        cat = g.op(
            "If",
            [cond],
            "cat",
            then_branch=branches["exact_"],
            else_branch=branches["fast_"],
        )
    else:
        cat = emit(g, exact=False)

    # -- 4. back to row order, crop, cast
    ids = row_ids[0] if len(row_ids) == 1 else g.op("Concat", row_ids, "row_ids", axis=0)
    n_cat = g.op("Shape", [ids], "n_cat")  # H * nb real rows + dummy rows
    inv = g.op(
        "ScatterElements",
        [
            g.op(
                "ConstantOfShape",
                [g.op("Add", [n_out, one1])],
                "inv0",
                value=helper.make_tensor("v", 7, [1], [0]),
            ),
            ids,
            g.op("Range", [g.const(np.int64(0)), g.op("Squeeze", [n_cat]), g.const(np.int64(1))]),
        ],
        "inv",
        axis=0,
    )
    inv = g.op("Slice", [inv, zero1, n_out], "inv_real")  # drop the trash slot
    ordered = g.op("Gather", [cat, inv], "ordered", axis=1)  # [B, H*nb, bs, Dv]
    shp = g.op("Concat", [zero1, g.const(_i64(n_heads)), m1, dv1], "out_shape", axis=0)
    full = g.op("Reshape", [ordered, shp], "out_full")  # [B, H, Sp, Dv]
    cropped = g.op("Slice", [full, zero1, s1, g.const(_i64(2))], "out_crop")
    # no-op for S <= max_seq_len; a request longer than the layout fails here, loudly
    max_s = layout.seq_len if max_seq_len is None else int(max_seq_len)
    too_long = g.op("Cast", [g.op("Greater", [s1, g.const(_i64(max_s))])], to=TensorProto.INT64)
    s_guard = g.op("Add", [s1, too_long], "S_guard")  # S + 1 when S > max_seq_len
    guard = g.op("Concat", [b1, g.const(_i64(n_heads)), s_guard, dv1], "out_guard_shape", axis=0)
    cropped = g.op("Reshape", [cropped, guard], "out_guard")
    g.nodes.append(helper.make_node("CastLike", [cropped, q_in], [opspec.OUTPUT_NAMES[0]]))

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


def make_node_model(
    layout: BlockLayout,
    *,
    dtype: str = "float32",
    head_dim: int = 16,
    value_dim: int | None = None,
    key_padding_mask: bool = True,
    scale: float | None = None,
    opset: int = 20,
) -> onnx.ModelProto:
    """A model holding one ``BlockSparseAttention`` node and its function (tests, benches).

    Inputs ``query``/``key`` ``[batch, H, seq_len, head_dim]``, ``value``
    ``[batch, H, seq_len, value_dim]`` of ``dtype`` and optional ``key_padding_mask
    [batch, seq_len]`` bool; output ``output``. The layout tensors are initializers.
    """
    dv = head_dim if value_dim is None else value_dim
    scale = opspec.default_scale(head_dim) if scale is None else float(scale)
    et = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    h = layout.num_heads
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
        helper.make_tensor_value_info("key", et, ["batch", h, "seq_len", head_dim]),
        helper.make_tensor_value_info("value", et, ["batch", h, "seq_len", dv]),
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
    fn = build_function(layout, scale=scale, has_key_padding_mask=key_padding_mask, opset=opset)
    return helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", opset),
            helper.make_opsetid(opspec.DOMAIN, opspec.OP_VERSION),
        ],
        functions=[fn],
        ir_version=10,
    )
