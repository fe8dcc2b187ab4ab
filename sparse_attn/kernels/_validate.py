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
ACCEPTED_DTYPES = tuple(getattr(torch, name) for name in opspec.TORCH_DTYPES)


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
    dims = bind_shapes({"query": query, "key": key, "value": value})
    b, h, s, d = dims["B"], dims["H"], dims["S"], dims["D"]
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


def bind_shapes(tensors: dict, block_size: int | None = None) -> dict:
    """Check tensor shapes against the op's schema (``opspec.SCHEMA``) and bind its dims.

    ``query [B, H, S, D]``, ``key [B, Hkv, S, D]``, ``value [B, Hkv, S, Dv]`` with
    ``H % Hkv == 0`` (grouped-query K/V: query head ``h`` reads K/V head ``h // (H // Hkv)``)
    and ``1 <= D, Dv <= opspec.MAX_HEAD_DIM``; the layout tensors when given (see the schema).
    Sizes are compared, never converted, so ``torch.export`` keeps dynamic dims dynamic.

    Args:
        tensors: input name -> tensor (or ``None`` for an absent optional input).
        block_size: the ``block_size`` attribute when the layout tensors are checked.

    Returns:
        ``{dim name: size}`` (``B``, ``H``, ``Hkv``, ``S``, ``D``, ``Dv``, ...).

    Raises:
        InvalidInputError: naming the expected and the received shapes.
    """
    shapes = {k: (None if t is None else tuple(t.shape)) for k, t in tensors.items()}
    attrs = None if block_size is None else {"block_size": block_size}
    try:
        dims = opspec.SCHEMA.bind_shapes(shapes, attrs)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    if dims["B"] < 1 or dims["H"] < 1 or dims["Hkv"] < 1:
        raise InvalidInputError(
            f"batch and head counts must be >= 1, got query {list(shapes['query'])}, "
            f"key {list(shapes['key'])}"
        )
    return dims


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


def validate_arrays(*args, **kwargs) -> None:
    """Check the inputs of the array-level entry ``attention_arrays`` (and the torch op).

    Arguments: the op's call, positional or by name (``opspec.SCHEMA.call_arg_names()``).
    Shapes: query ``[B, H, S, D]``, key ``[B, Hkv, S, D]``, value ``[B, Hkv, S, Dv]`` with
    ``H % Hkv == 0``, ``row_ptr [H or 1, nQB+1]``, ``col_idx``/``mask_idx [H or 1, nnz]``
    (integer), ``masks [M, bs, bs]``,
    ``key_padding_mask`` ``None`` or ``[B, S]``; ``S <= nQB * block_size``.

    Raises:
        TypeError: missing, extra or unknown arguments.
        InvalidInputError: on any inconsistency.
    """
    call = opspec.SCHEMA.bind_call(args, kwargs)
    query, key, value = call.query, call.key, call.value
    block_size, key_padding_mask = call.block_size, call.key_padding_mask
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InvalidInputError(f"{name} must be a rank-4 tensor [B, H, S, D], got {got}")
    if not (key.dtype == query.dtype == value.dtype):
        raise InvalidInputError(
            f"query, key and value must share one dtype, got {_dtype_name(query.dtype)}, "
            f"{_dtype_name(key.dtype)}, {_dtype_name(value.dtype)}"
        )
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise InvalidInputError(f"block_size must be an int >= 1, got {block_size!r}")
    layout = {name: call[name] for name in opspec.SCHEMA.layout_inputs()}
    for name, t in layout.items():
        if not isinstance(t, torch.Tensor):
            raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dims = bind_shapes(
        {"query": query, "key": key, "value": value, **layout, "key_padding_mask": None},
        block_size,
    )
    b, s, d, nqb = dims["B"], dims["S"], dims["D"], dims["nQB"]
    for name in ("row_ptr", "col_idx", "mask_idx"):
        t = call[name]
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise InvalidInputError(f"{name} must be an integer tensor (int32), got {t.dtype}")
    if not 1 <= s <= nqb * block_size:
        raise InvalidInputError(
            f"sequence length S={s} must be in 1..{nqb * block_size} (nQB={nqb} blocks of "
            f"{block_size})"
        )
    if key_padding_mask is not None:
        _check_key_padding_mask(key_padding_mask, b, s, query.device)
    resolve_scale(call.scale, d)
