"""A :class:`~sparse_attn.layout.BlockLayout` as the op's layout inputs, and back.

The op takes its layout as four arrays (``opspec.LAYOUT_INPUTS``: ``row_ptr [H, nQB+1]``,
``col_idx [H, nnz]``, ``mask_idx [H, nnz]``, ``masks [M, bs, bs]``), constant initializers
in an exported model. This module is the one conversion both ways:

* :func:`layout_to_numpy` / :func:`layout_to_tensors`: the op's arrays of a layout. No
  array is ever empty (a layout with no partial tile gets one all-zero mask that no tile
  uses; one that stores no tile gets one padding entry outside every row), so each one can
  be an ONNX initializer and a TensorRT input. Cached on the layout (per device).
* :func:`call_with_layout`: run an array-level entry (the op's calling convention) on a
  layout.
* :func:`layout_from_arrays`: the layout back from the arrays; the padding above is
  removed, so ``layout_from_arrays(*layout_to_numpy(lay).values(), bs, lay.seq_len)``
  equals ``lay`` (same :meth:`~BlockLayout.layout_hash`).
* :func:`node_metadata` / :func:`layout_from_node`: the true ``seq_len`` of a layout is not
  in its arrays (they hold ``ceil(seq_len / bs)`` blocks), so an ONNX node records it in its
  ``metadata_props`` under ``opspec.NODE_LAYOUT_SEQ_LEN_KEY``, read back with the arrays.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sparse_attn import opspec
from sparse_attn.layout import BlockLayout

__all__ = [
    "call_with_layout",
    "layout_from_arrays",
    "layout_from_node",
    "layout_to_numpy",
    "layout_to_tensors",
    "node_metadata",
]


def layout_to_numpy(layout: BlockLayout) -> dict[str, np.ndarray]:
    """The op's layout inputs of ``layout`` (cached on the layout; treat them as read-only).

    Returns:
        ``{"row_ptr": int32 [H, nQB+1], "col_idx": int32 [H, nnz'], "mask_idx": int32
        [H, nnz'], "masks": uint8 [M', bs, bs]}`` in ``opspec.LAYOUT_INPUTS`` order, with
        ``M' = max(M, 1)`` and ``nnz' = max(nnz, 1)`` (see the module docstring).
    """
    cached = layout._cache.get("op_arrays.numpy")
    if cached is not None:
        return cached
    bs = layout.block_size
    masks = layout.masks
    if masks.shape[0] == 0:
        masks = np.zeros((1, bs, bs), dtype=np.uint8)
    col_idx, mask_idx = layout.col_idx, layout.mask_idx
    if col_idx.shape[1] == 0:
        col_idx = np.zeros((layout.num_heads, 1), dtype=np.int32)
        mask_idx = np.full((layout.num_heads, 1), -1, dtype=np.int32)
    out = {  # copies: the read-only flag below must not reach the layout's own arrays
        "row_ptr": np.array(layout.row_ptr, dtype=np.int32, order="C"),
        "col_idx": np.array(col_idx, dtype=np.int32, order="C"),
        "mask_idx": np.array(mask_idx, dtype=np.int32, order="C"),
        "masks": np.array(masks, dtype=np.uint8, order="C"),
    }
    assert tuple(out) == opspec.LAYOUT_INPUTS
    for a in out.values():
        a.setflags(write=False)
    layout._cache["op_arrays.numpy"] = out
    return out


def layout_to_tensors(layout: BlockLayout, device="cpu") -> dict:
    """:func:`layout_to_numpy` as torch tensors on ``device`` (cached per device on the layout).

    The tensors are shared by every caller: clone them before writing (``ops.layout_tensors``
    gives fresh copies).
    """
    import torch

    dev = torch.device(device)
    key = ("op_arrays.tensors", str(dev))
    cached = layout._cache.get(key)
    if cached is not None:
        return cached
    out = {k: torch.from_numpy(v.copy()).to(dev) for k, v in layout_to_numpy(layout).items()}
    layout._cache[key] = out
    return out


def call_with_layout(entry, query, key, value, layout, key_padding_mask, scale: float):
    """``entry(...)`` called with the op's arguments, ``layout``'s arrays on the query's
    device and its ``block_size``.

    ``entry`` is any array-level entry with the op's calling convention
    (``opspec.SCHEMA.call_arg_names()``): a backend's ``attention_arrays`` or the custom op.
    """
    t = layout_to_tensors(layout, query.device)
    return entry(
        query, key, value, *t.values(), key_padding_mask, int(layout.block_size), float(scale)
    )


def layout_from_arrays(
    row_ptr,
    col_idx,
    mask_idx,
    masks,
    block_size: int,
    seq_len: int | None = None,
    **kw,
) -> BlockLayout:
    """The :class:`BlockLayout` held by the op's layout arrays (numpy or torch).

    Args:
        row_ptr, col_idx, mask_idx, masks: the op's layout inputs (``opspec.LAYOUT_INPUTS``).
        block_size: the node's ``block_size``.
        seq_len: the layout's true length in tokens; default ``nQB * block_size``. Must be in
            ``((nQB - 1) * block_size, nQB * block_size]``.
        **kw: ``spec``, ``causal``, ``requires_static_seq_len`` of the layout.

    Returns:
        The layout, without the padding :func:`layout_to_numpy` adds.

    Raises:
        ValueError: inconsistent shapes or a ``seq_len`` that does not match ``nQB``.
    """
    rp, ci, mi, mk = (_as_numpy(a) for a in (row_ptr, col_idx, mask_idx, masks))
    rp, ci, mi, mk = (
        rp.astype(np.int32),
        ci.astype(np.int32),
        mi.astype(np.int32),
        mk.astype(np.uint8),
    )
    bs = int(block_size)
    nqb = rp.shape[1] - 1
    if seq_len is None:
        seq_len = nqb * bs
    seq_len = int(seq_len)
    if not (nqb - 1) * bs < seq_len <= nqb * bs:
        raise ValueError(
            f"seq_len {seq_len} does not match row_ptr's {nqb} blocks of {bs} tokens "
            f"(needs {(nqb - 1) * bs + 1}..{nqb * bs})"
        )
    nnz = int(rp[:, -1].max()) if rp.size else 0
    ci, mi = ci[:, :nnz], mi[:, :nnz]
    used = mi[mi >= 0]
    if mk.shape[0] == 1 and used.size == 0 and not mk.any():
        mk = mk[:0]  # the padding mask of a layout without partial tiles
    return BlockLayout(
        seq_len=seq_len,
        block_size=bs,
        row_ptr=np.ascontiguousarray(rp),
        col_idx=np.ascontiguousarray(ci),
        mask_idx=np.ascontiguousarray(mi),
        masks=np.ascontiguousarray(mk),
        **kw,
    )


def node_metadata(layout: BlockLayout) -> dict[str, str]:
    """``metadata_props`` an op node carries for ``layout``: its true ``seq_len``."""
    return {opspec.NODE_LAYOUT_SEQ_LEN_KEY: str(int(layout.seq_len))}


def layout_from_node(node, constants: Mapping[str, object]) -> BlockLayout:
    """The layout of one ``BlockSparseAttention`` ONNX node.

    Args:
        node: ``onnx.NodeProto`` of the op.
        constants: name -> ``onnx.TensorProto`` (initializers and Constant outputs).

    Returns:
        The layout, with the ``seq_len`` of the node's ``metadata_props``
        (:func:`node_metadata`), else ``nQB * block_size``.

    Raises:
        CheckFailedError: no ``block_size`` attribute, or a layout input that is not a constant.
    """
    from onnx import helper, numpy_helper

    from sparse_attn.errors import CheckFailedError

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if "block_size" not in attrs:
        raise CheckFailedError(f"node {node.name!r} has no block_size attribute")
    arrays = []
    for name in opspec.LAYOUT_INPUTS:
        i = opspec.INPUT_NAMES.index(name)
        src = node.input[i] if i < len(node.input) else ""
        if src not in constants:
            raise CheckFailedError(
                f"layout input {name!r} of node {node.name!r} is not a constant "
                f"({src!r}); register the layout tensors as buffers"
            )
        arrays.append(numpy_helper.to_array(constants[src]))
    meta = {p.key: p.value for p in node.metadata_props}
    seq_len = meta.get(opspec.NODE_LAYOUT_SEQ_LEN_KEY)
    return layout_from_arrays(
        *arrays, int(attrs["block_size"]), None if seq_len is None else int(seq_len)
    )


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)
