"""The torch custom op ``sparse_attn::block_sparse_attention`` (docs/spec.md).

Registered with :func:`torch.library.custom_op` under ``opspec.TORCH_OP_NAME`` with a fake
(shape-only) implementation, so ``torch.export``, ``torch.compile`` and the ONNX exporter
trace it as one opaque node::

    import sparse_attn.ops  # registers the op
    t = sparse_attn.ops.layout_tensors(layout)
    out = torch.ops.sparse_attn.block_sparse_attention(
        q, k, v, t["row_ptr"], t["col_idx"], t["mask_idx"], t["masks"], None, bs, scale)

The real implementation is the array-level entry of the ``torch`` backend
(:func:`sparse_attn.kernels.torch_backend.attention_arrays`), which uses the compiled CPU
kernel when available; on CUDA the Triton kernel's ``attention_arrays``
(``sparse_attn.kernels.triton_kernel``) is used when it imports and supports the inputs
(as that backend declares), else the PyTorch path. Key/value may have fewer heads than
the query (grouped-query attention, ``H % Hkv == 0``); no path repeats them per query head.
"""

from __future__ import annotations

import importlib

import torch

from sparse_attn import opspec

__all__ = ["block_sparse_attention", "layout_tensors", "OP"]


def _cuda_impl(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_size: int):
    """The Triton kernel's array entry when it exists and takes these inputs, else None.

    The ``triton`` backend (:mod:`sparse_attn.kernels.triton_backend`) declares its limits:
    through ``not_supported_reason(query, key, value, block_size)`` (``None`` = accepted) when
    it has that function, else through its ``SUPPORTED_DTYPES`` and ``MAX_HEAD_DIM`` (and then
    only for as many K/V heads as query heads).
    """
    from sparse_attn.kernels import triton_backend

    reason_fn = getattr(triton_backend, "not_supported_reason", None)
    if reason_fn is not None:
        if reason_fn(query, key, value, int(block_size)) is not None:
            return None
    elif not (
        query.dtype in triton_backend.SUPPORTED_DTYPES
        and key.shape[1] == query.shape[1]
        and query.shape[-1] <= triton_backend.MAX_HEAD_DIM
        and value.shape[-1] <= triton_backend.MAX_HEAD_DIM
        and opspec.MIN_BLOCK_SIZE <= block_size <= opspec.MAX_BLOCK_SIZE
    ):
        return None
    try:
        mod = importlib.import_module("sparse_attn.kernels.triton_kernel")
    except Exception:  # noqa: BLE001 - optional backend; any import failure = absent
        return None
    return getattr(mod, "attention_arrays", None)


@torch.library.custom_op(opspec.TORCH_OP_NAME, mutates_args=())
def block_sparse_attention(
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
) -> torch.Tensor:
    """Block-sparse attention with the layout as tensors (the op's schema).

    Args:
        query: ``[B, H, S, D]`` float32/float16 (bfloat16, float64 also accepted on the
            torch path); key ``[B, Hkv, S, D]`` with ``H % Hkv == 0`` (query head ``h`` reads
            K/V head ``h // (H // Hkv)``); value ``[B, Hkv, S, Dv]``; ``D, Dv <= 256``.
        row_ptr: int32 ``[H, nQB+1]``, col_idx / mask_idx: int32 ``[H, nnz]``, masks: uint8
            ``[M >= 1, bs, bs]``: the full layout for max seq_len (see :func:`layout_tensors`).
        key_padding_mask: optional ``[B, S]`` bool, True = real token.
        block_size: tokens per block.
        scale: softmax scale (> 0).

    Returns:
        ``[B, H, S, Dv]`` in the dtype of ``query`` (a new tensor).

    Raises:
        InvalidInputError: on inconsistent shapes or arguments.
    """
    tensors = (query, key, value, row_ptr, col_idx, mask_idx, masks, key_padding_mask)
    if query.device.type == "cuda":
        impl = _cuda_impl(query, key, value, block_size)
        if impl is not None:
            # The torch path validates inside attention_arrays; the Triton launcher does not.
            from sparse_attn.kernels._validate import validate_arrays

            validate_arrays(*tensors, block_size, scale)
            return impl(*tensors, block_size, scale)
    from sparse_attn.kernels.torch_backend import attention_arrays

    return attention_arrays(*tensors, block_size, scale)


@block_sparse_attention.register_fake
def _(query, key, value, row_ptr, col_idx, mask_idx, masks, key_padding_mask, block_size, scale):
    b, h, s, _ = query.shape
    return query.new_empty((b, h, s, value.shape[-1]))


#: The registered op overload, ``torch.ops.sparse_attn.block_sparse_attention.default``.
OP = torch.ops.sparse_attn.block_sparse_attention.default


def layout_tensors(layout) -> dict[str, torch.Tensor]:
    """The layout as the op's input tensors (fresh CPU tensors, safe to register as buffers).

    Args:
        layout: :class:`sparse_attn.layout.BlockLayout`.

    Returns:
        ``{"row_ptr": int32 [H, nQB+1], "col_idx": int32 [H, nnz], "mask_idx": int32 [H, nnz],
        "masks": uint8 [M, bs, bs]}``; if the layout has no partial tile (M == 0) one
        all-zero mask is given, and if it stores no tile (nnz == 0) one padding entry
        (col 0, mask -1, outside every row), so no tensor is empty.
    """
    from sparse_attn.kernels.torch_backend import layout_arrays

    return {k: v.clone() for k, v in layout_arrays(layout, "cpu").items()}
