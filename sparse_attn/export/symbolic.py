"""The export-aware call of ``sparse_attn::BlockSparseAttention`` (docs/spec.md).

:func:`sparse_attention` is the one place a model calls the op. Under
``torch.onnx.export(..., dynamo=True)`` it emits a bare custom node with
``torch.onnx.ops.symbolic`` (a full onnxscript body through ``custom_translation_table``
would be inlined by the exporter and the custom node lost, see FACTS); everywhere else it
runs the torch custom op ``torch.ops.sparse_attn.block_sparse_attention``.
"""

from __future__ import annotations

import torch

from sparse_attn import opspec

#: Node-level ``metadata_props`` key holding the op's layout length (the body's guard).
NODE_MAX_SEQ_LEN_KEY = "sparse_attn.max_seq_len"


def sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    mask_idx: torch.Tensor,
    masks: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    block_size: int,
    scale: float,
    max_seq_len: int | None = None,
) -> torch.Tensor:
    """Block-sparse attention over a layout given as tensors; exportable to ONNX.

    Args:
        query: ``[B, H, S, D]`` float32 or float16; key ``[B, H, S, D]``; value
            ``[B, H, S, Dv]``, same dtype.
        row_ptr: int32 ``[H, nQB + 1]``; col_idx, mask_idx: int32 ``[H, nnz]``; masks: uint8
            ``[M >= 1, bs, bs]`` -- the full layout for ``max_seq_len``
            (:func:`sparse_attn.ops.layout_tensors`), registered as module buffers so
            that they become constant initializers of the exported model.
        key_padding_mask: optional ``[B, S]`` (bool, or 0/1 integers), True = real token.
        block_size: tokens per block (the node's ``block_size`` attribute).
        scale: softmax scale (the node's ``scale`` attribute), a Python float.
        max_seq_len: the layout's ``seq_len`` (optional). Recorded in the node's
            ``metadata_props`` (``sparse_attn.max_seq_len``) so that the function body
            refuses longer requests; without it the guard is ``nQB * block_size``.

    Returns:
        ``[B, H, S, Dv]`` in the dtype of ``query``: softmax/accumulation in fp32, rows
        with no visible key are 0 (docs/spec.md).

    Raises:
        InvalidInputError: from the torch op on inconsistent shapes or arguments (eager).
    """
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        key_padding_mask = key_padding_mask != 0
    tensors = [query, key, value, row_ptr, col_idx, mask_idx, masks]
    if torch.onnx.is_in_onnx_export():
        inputs = tensors if key_padding_mask is None else [*tensors, key_padding_mask]
        return torch.onnx.ops.symbolic(
            opspec.QUALIFIED_NAME,
            inputs,
            opspec.OpAttributes(int(block_size), float(scale)).as_onnx_attributes(),
            dtype=query.dtype,
            shape=(query.shape[0], query.shape[1], query.shape[2], value.shape[3]),
            version=opspec.OP_VERSION,
            metadata_props=None
            if max_seq_len is None
            else {NODE_MAX_SEQ_LEN_KEY: str(int(max_seq_len))},
        )
    import sparse_attn.ops  # noqa: F401  (registers torch.ops.sparse_attn.*)

    return torch.ops.sparse_attn.block_sparse_attention(
        *tensors, key_padding_mask, int(block_size), float(scale)
    )
