"""The torch custom op ``sparse_attn::block_sparse_attention``, derived from ``opspec.SCHEMA``.

The op's torch schema (:meth:`~sparse_attn.opspec.OpSchema.torch_signature`) and its fake
(shape-only) implementation (:meth:`~sparse_attn.opspec.OpSchema.output_shape`) both come
from the schema, so ``torch.export``, ``torch.compile`` and the ONNX exporter trace the op as
one opaque node whose signature cannot drift from the ONNX node or the TensorRT plugin.

The real implementation is the array-level entry of the ``torch`` backend
(:func:`sparse_attn.kernels.torch_backend.attention_arrays`, which uses the compiled CPU
kernel when it takes the inputs); on CUDA the Triton kernel's ``attention_arrays`` is used
when it imports and the ``triton`` backend declares that it takes the inputs, else the
PyTorch path. Key/value may have fewer heads than the query (``H % Hkv == 0``); no path
repeats them per query head. Public names are re-exported by :mod:`sparse_attn.ops`.
"""

from __future__ import annotations

import importlib

import torch

from sparse_attn import opspec
from sparse_attn.kernels import torch_backend
from sparse_attn.kernels._validate import validate_arrays
from sparse_attn.op_arrays import layout_to_tensors

__all__ = ["OP", "block_sparse_attention", "layout_tensors"]

_ARG_NAMES = opspec.SCHEMA.call_arg_names()
_BLOCK_SIZE = _ARG_NAMES.index("block_size")


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


def _impl(*args) -> torch.Tensor:
    """Block-sparse attention with the layout as tensors (arguments: the schema's order).

    Args (``opspec.SCHEMA.call_arg_names()``):
        query ``[B, H, S, D]`` float32/float16 (bfloat16, float64 on the torch path);
        key ``[B, Hkv, S, D]`` with ``H % Hkv == 0`` (query head ``h`` reads K/V head
        ``h // (H // Hkv)``); value ``[B, Hkv, S, Dv]``; ``D, Dv <= 256``;
        row_ptr int32 ``[H or 1, nQB+1]``, col_idx / mask_idx int32 ``[H or 1, nnz]``, masks
        uint8 ``[M >= 1, bs, bs]``: the full layout for its seq_len (:func:`layout_tensors`);
        key_padding_mask optional ``[B, S]`` bool, True = real token; block_size (tokens);
        scale (> 0).

    Returns:
        ``[B, H, S, Dv]`` in the dtype of ``query`` (a new tensor).

    Raises:
        InvalidInputError: on inconsistent shapes or arguments.
    """
    query, key, value = args[:3]
    if query.device.type == "cuda":
        impl = _cuda_impl(query, key, value, args[_BLOCK_SIZE])
        if impl is not None:
            validate_arrays(*args)  # the torch path validates inside; the launcher does not
            return impl(*args)
    return torch_backend.attention_arrays(*args)


def _fake(*args) -> torch.Tensor:
    """Shape-only implementation: the schema's output dims bound from the input shapes."""
    named = dict(zip(_ARG_NAMES, args, strict=True))
    shapes = {n: (None if named[n] is None else tuple(named[n].shape)) for n in opspec.INPUT_NAMES}
    return named["query"].new_empty(opspec.SCHEMA.output_shape(shapes))


torch.library.define(opspec.TORCH_OP_NAME, opspec.SCHEMA.torch_signature())
torch.library.impl(opspec.TORCH_OP_NAME, "CompositeExplicitAutograd", _impl)
torch.library.register_fake(opspec.TORCH_OP_NAME, _fake)

#: The registered op overload, ``torch.ops.sparse_attn.block_sparse_attention.default``.
OP = torch.ops.sparse_attn.block_sparse_attention.default
#: The op's overload packet (call it like a function with the schema's arguments).
block_sparse_attention = torch.ops.sparse_attn.block_sparse_attention


def layout_tensors(layout) -> dict[str, torch.Tensor]:
    """The layout as the op's input tensors (fresh CPU tensors, safe to register as buffers).

    Args:
        layout: :class:`sparse_attn.layout.BlockLayout`.

    Returns:
        ``{"row_ptr": int32 [H, nQB+1], "col_idx": int32 [H, nnz], "mask_idx": int32 [H, nnz],
        "masks": uint8 [M, bs, bs]}`` (:func:`sparse_attn.op_arrays.layout_to_numpy`: no
        tensor is empty).
    """
    return {k: v.clone() for k, v in layout_to_tensors(layout, "cpu").items()}
