"""Input validation shared by the dispatcher and the array-level entry points.

Everything here runs *before* any work starts and raises :class:`InvalidInputError` with a
message that states the expected and the received value and how to fix it (docs/spec.md).
"""

from __future__ import annotations

import math

import torch

from sparse_attn import opspec
from sparse_attn.errors import InvalidInputError

#: Floating dtypes the dispatcher accepts at all; each backend narrows this down through
#: its ``not_supported_reasons``.
ACCEPTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def validate_inputs(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout,
    key_padding_mask: torch.Tensor | None,
    scale: float | None,
) -> float:
    """Check the inputs of :func:`sparse_attn.kernels.block_sparse_attention`.

    Args:
        query: ``[B, H, S, D]`` float tensor, ``1 <= D <= 256``.
        key: ``[B, Hkv, S, D]`` with ``H % Hkv == 0``, same dtype and device as ``query``.
        value: ``[B, Hkv, S, Dv]``, ``1 <= Dv <= 256``, same dtype and device as ``query``.
        layout: a :class:`sparse_attn.layout.BlockLayout` with ``num_heads`` H (or 1) and
            ``seq_len >= S`` (``== S`` when ``layout.requires_static_seq_len``).
        key_padding_mask: ``None`` or ``[B, S]`` bool (or integer, nonzero = real token),
            on the same device as ``query``.
        scale: ``None`` (``1/sqrt(D)``) or a finite float > 0.

    Returns:
        The resolved softmax scale as a Python float.

    Raises:
        InvalidInputError: on any inconsistency, naming the expected and received values.
    """
    from sparse_attn.layout import BlockLayout

    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise InvalidInputError(f"{name} must be a torch.Tensor [B, H, S, D], got {type(t)}")
        if t.dim() != 4:
            raise InvalidInputError(
                f"{name} must have rank 4 [B, H, S, D], got shape {list(t.shape)}; "
                "reshape [B, S, H, D] inputs with .transpose(1, 2)"
            )
    if not isinstance(layout, BlockLayout):
        raise InvalidInputError(
            f"layout must be a sparse_attn.BlockLayout (see sparse_attn.compile_layout), "
            f"got {type(layout).__name__}"
        )
    b, h, _hkv, s, d, _dv = check_qkv_shapes(query, key, value)
    if layout.num_heads not in (1, h):
        raise InvalidInputError(
            f"query has H={h} heads but the layout has num_heads={layout.num_heads}; compile the "
            f"layout with num_heads={h} (or 1, shared by every head)"
        )
    if not 1 <= s <= layout.seq_len:
        raise InvalidInputError(
            f"sequence length S={s} must be in 1..{layout.seq_len} (the layout's seq_len); "
            "compile the layout for a longer max sequence length"
        )
    if layout.requires_static_seq_len and s != layout.seq_len:
        raise InvalidInputError(
            f"pattern {layout.spec!r} depends on the end of the sequence, so the layout is fixed "
            f"at seq_len={layout.seq_len}, got S={s}; pad the inputs to {layout.seq_len} tokens"
        )
    if not (key.dtype == query.dtype == value.dtype):
        raise InvalidInputError(
            f"query, key and value must share one dtype, got {_dtype_name(query.dtype)}, "
            f"{_dtype_name(key.dtype)}, {_dtype_name(value.dtype)}"
        )
    if query.dtype not in ACCEPTED_DTYPES:
        raise InvalidInputError(
            f"dtype {_dtype_name(query.dtype)} is not supported; use one of "
            f"{', '.join(_dtype_name(x) for x in ACCEPTED_DTYPES)}"
        )
    if not (key.device == query.device == value.device):
        raise InvalidInputError(
            f"query, key and value must be on one device, got {query.device}, {key.device}, "
            f"{value.device}"
        )
    if key_padding_mask is not None:
        _check_key_padding_mask(key_padding_mask, b, s, query.device)
    return resolve_scale(scale, d)


def check_qkv_shapes(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[int, int, int, int, int, int]:
    """Check the shapes of rank-4 ``query``, ``key`` and ``value`` against each other.

    ``query [B, H, S, D]``, ``key [B, Hkv, S, D]``, ``value [B, Hkv, S, Dv]`` with
    ``H % Hkv == 0`` (grouped-query K/V: query head ``h`` reads K/V head ``h // (H // Hkv)``)
    and ``1 <= D, Dv <= opspec.MAX_HEAD_DIM``.

    Returns:
        ``(B, H, Hkv, S, D, Dv)``.

    Raises:
        InvalidInputError: naming the expected and the received shapes.
    """
    # no int() on the sizes: under torch.export they are symbols, and int() would fix them
    b, h, s, d = query.shape
    hkv = key.shape[1]
    dv = value.shape[3]
    if key.shape[0] != b or key.shape[2] != s or key.shape[3] != d:
        raise InvalidInputError(
            f"key must be [B={b}, Hkv, S={s}, D={d}] (query is {list(query.shape)}), "
            f"got {list(key.shape)}"
        )
    if tuple(value.shape[:3]) != (b, hkv, s):
        raise InvalidInputError(
            f"value must be [B={b}, Hkv={hkv}, S={s}, Dv] like key {list(key.shape)}, "
            f"got {list(value.shape)}"
        )
    if b < 1 or h < 1 or hkv < 1:
        raise InvalidInputError(
            f"batch and head counts must be >= 1, got query {list(query.shape)}, "
            f"key {list(key.shape)}"
        )
    if h % hkv:
        raise InvalidInputError(
            f"query heads H={h} must be a multiple of key/value heads Hkv={hkv} (grouped-query "
            f"attention: query head h reads K/V head h // (H // Hkv)); got H % Hkv = {h % hkv}"
        )
    for name, n in (("head_dim D of query/key", d), ("head_dim Dv of value", dv)):
        if not 1 <= n <= opspec.MAX_HEAD_DIM:
            raise InvalidInputError(
                f"{name} must be in 1..{opspec.MAX_HEAD_DIM}, got {n}; split wider heads"
            )
    return b, h, hkv, s, d, dv


def _check_key_padding_mask(
    key_padding_mask: torch.Tensor, b: int, s: int, device: torch.device
) -> None:
    if not isinstance(key_padding_mask, torch.Tensor):
        raise InvalidInputError(
            f"key_padding_mask must be a torch.Tensor [B, S] bool, got {type(key_padding_mask)}"
        )
    if tuple(key_padding_mask.shape) != (b, s):
        raise InvalidInputError(
            f"key_padding_mask must be [B={b}, S={s}] (True = real token), "
            f"got {list(key_padding_mask.shape)}"
        )
    if key_padding_mask.dtype.is_floating_point or key_padding_mask.dtype.is_complex:
        raise InvalidInputError(
            f"key_padding_mask must be bool (True = real token) or integer (nonzero = real), got "
            f"{_dtype_name(key_padding_mask.dtype)}; an additive float mask is not accepted"
        )
    if key_padding_mask.device != device:
        raise InvalidInputError(
            f"key_padding_mask is on {key_padding_mask.device} but query is on {device}; "
            "move it with .to(query.device)"
        )


def resolve_scale(scale: float | None, head_dim: int) -> float:
    """Return ``scale`` as a float, or ``1/sqrt(head_dim)`` when None.

    Raises:
        InvalidInputError: if ``scale`` is not a finite number > 0.
    """
    if scale is None:
        return opspec.default_scale(head_dim)
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise InvalidInputError(f"scale must be a number, got a tensor of shape {scale.shape}")
        scale = scale.item()
    try:
        val = float(scale)
    except (TypeError, ValueError):
        raise InvalidInputError(f"scale must be a finite number > 0, got {scale!r}") from None
    if not math.isfinite(val) or val <= 0:
        raise InvalidInputError(f"scale must be a finite number > 0, got {val}")
    return val


def validate_arrays(
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
) -> None:
    """Check the inputs of the array-level entry ``attention_arrays`` (and the torch op).

    Shapes: query ``[B, H, S, D]``, key ``[B, Hkv, S, D]``, value ``[B, Hkv, S, Dv]`` with
    ``H % Hkv == 0``, ``row_ptr [H or 1, nQB+1]``, ``col_idx``/``mask_idx [H or 1, nnz]``
    (integer), ``masks [M, bs, bs]``,
    ``key_padding_mask`` ``None`` or ``[B, S]``; ``S <= nQB * block_size``.

    Raises:
        InvalidInputError: on any inconsistency.
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InvalidInputError(f"{name} must be a rank-4 tensor [B, H, S, D], got {got}")
    b, h, _hkv, s, d, _dv = check_qkv_shapes(query, key, value)
    if not (key.dtype == query.dtype == value.dtype):
        raise InvalidInputError(
            f"query, key and value must share one dtype, got {_dtype_name(query.dtype)}, "
            f"{_dtype_name(key.dtype)}, {_dtype_name(value.dtype)}"
        )
    if not isinstance(block_size, int) or block_size < 1:
        raise InvalidInputError(f"block_size must be an int >= 1, got {block_size!r}")
    if row_ptr.dim() != 2 or row_ptr.shape[0] not in (1, h):
        raise InvalidInputError(
            f"row_ptr must be [H={h} (or 1), nQB+1], got {list(row_ptr.shape)}; the layout is "
            "per query head: its num_heads must equal the number of heads of query (or be 1)"
        )
    nqb = row_ptr.shape[1] - 1
    lh = row_ptr.shape[0]
    if col_idx.dim() != 2 or col_idx.shape != mask_idx.shape or col_idx.shape[0] != lh:
        raise InvalidInputError(
            f"col_idx and mask_idx must both be [{lh}, nnz] (as many rows as row_ptr), got "
            f"{list(col_idx.shape)} and {list(mask_idx.shape)}"
        )
    for name, t in (("row_ptr", row_ptr), ("col_idx", col_idx), ("mask_idx", mask_idx)):
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise InvalidInputError(f"{name} must be an integer tensor (int32), got {t.dtype}")
    if masks.dim() != 3 or tuple(masks.shape[1:]) != (block_size, block_size):
        raise InvalidInputError(
            f"masks must be [M, {block_size}, {block_size}], got {list(masks.shape)}"
        )
    if not 1 <= s <= nqb * block_size:
        raise InvalidInputError(
            f"sequence length S={s} must be in 1..{nqb * block_size} (nQB={nqb} blocks of "
            f"{block_size})"
        )
    if key_padding_mask is not None:
        _check_key_padding_mask(key_padding_mask, b, s, query.device)
    resolve_scale(scale, d)
