"""The ``reference`` backend: dense masked attention, the oracle every other backend meets.

It expands the layout to the token mask (``BlockLayout.token_mask``), intersects it with the
key padding mask and computes softmax attention densely, by default in float64 (any input
dtype; the result is returned in the query's dtype). Cost is O(S^2) time; memory is bounded
by processing query rows in chunks. Semantics (docs/spec.md):

* a query row with no visible key outputs exactly 0;
* masked keys never influence the output, even when their K or V hold NaN or Inf: scores
  are *selected* (``torch.where``), never added to a ``-inf`` bias, and when V holds a
  non-finite value the product ``P @ V`` is formed with a select per (query, key) pair so
  that ``0 * NaN`` never reaches a row that cannot see that key.

Algorithm: scaled dot-product attention, Vaswani et al., "Attention Is All You Need"
(arXiv 1706.03762), Sec. 3.2.1, with the pattern mask of docs/spec.md.
"""

from __future__ import annotations

import numpy as np
import torch

from sparse_attn.kernels._validate import resolve_scale, validate_inputs

NAME = "reference"

#: Elements of one chunk's score tensor ``[B, H, chunk, S]``.
_CHUNK_ELEMENTS = 1 << 22
#: Elements of one chunk's exact ``[B, H, chunk, S, Dv]`` product (non-finite V only).
_CHUNK_ELEMENTS_NONFINITE = 1 << 22


def not_supported_reasons(query, key, value, layout, key_padding_mask) -> list[str]:
    """Why the reference cannot take these (validated) inputs: it takes every float dtype."""
    reasons = []
    if not query.dtype.is_floating_point:
        reasons.append(f"dtype {query.dtype} is not a floating dtype")
    return reasons


def attention(query, key, value, layout, key_padding_mask, scale: float) -> torch.Tensor:
    """Backend entry (inputs validated by the dispatcher): float64 dense masked attention."""
    return _layout_attention(query, key, value, layout, key_padding_mask, scale, torch.float64)


def _layout_attention(query, key, value, layout, key_padding_mask, scale, compute_dtype):
    """:func:`masked_attention` over ``layout.token_mask(S)`` (inputs already validated)."""
    s = query.shape[2]
    token_mask = torch.from_numpy(np.ascontiguousarray(layout.token_mask(s))).to(query.device)
    return masked_attention(
        query, key, value, token_mask, key_padding_mask, scale, compute_dtype=compute_dtype
    )


def reference_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Dense masked attention over ``layout`` (validated), the oracle of the tests.

    Args:
        query: ``[B, H, S, D]`` any float dtype; key ``[B, Hkv, S, D]`` with ``H % Hkv == 0``
            (query head ``h`` reads K/V head ``h // (H // Hkv)``); value ``[B, Hkv, S, Dv]``.
        layout: :class:`~sparse_attn.layout.BlockLayout` with ``num_heads`` H (or 1) and
            ``seq_len >= S`` (top-left crop used).
        key_padding_mask: optional ``[B, S]`` bool, True = real token.
        scale: softmax scale, default ``1/sqrt(D)``.
        compute_dtype: dtype of the whole computation (float64 by default).

    Returns:
        ``[B, H, S, Dv]`` in the dtype of ``query``.

    Raises:
        InvalidInputError: on inconsistent shapes, dtypes, devices or a bad scale.
    """
    scale = validate_inputs(query, key, value, layout, key_padding_mask, scale)
    return _layout_attention(query, key, value, layout, key_padding_mask, scale, compute_dtype)


def masked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    token_mask: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Dense attention with an explicit boolean token mask (NaN/Inf safe, empty rows = 0).

    Args:
        query: ``[B, H, S, D]``; key ``[B, Hkv, S, D]``; value ``[B, Hkv, S, Dv]`` with
            ``H % Hkv == 0`` (repeated per query head here); any float dtype.
        token_mask: bool ``[H, S, S]`` or ``[S, S]`` (or ``[B, H, S, S]``);
            ``token_mask[h, i, j]`` = key ``j`` visible from query ``i``.
        key_padding_mask: optional ``[B, S]`` bool/int, True/nonzero = real token.
        scale: softmax scale, default ``1/sqrt(D)``.
        compute_dtype: dtype of the computation (float64 by default).

    Returns:
        ``[B, H, S, Dv]`` in the dtype of ``query``.
    """
    b, h, s, d = query.shape
    dv = value.shape[-1]
    scale = resolve_scale(scale, d)
    vis_all = token_mask.to(device=query.device, dtype=torch.bool)
    while vis_all.dim() < 4:
        vis_all = vis_all.unsqueeze(0)
    if key_padding_mask is not None:
        kpm = key_padding_mask.to(device=query.device).bool()[:, None, None, :]
        vis_all = vis_all & kpm
    vis_all = vis_all.expand(b, h, s, s)
    q = query.to(compute_dtype)
    group = h // key.shape[1]
    # grouped-query K/V: the dense oracle simply repeats each K/V head for its query heads
    k = key.to(compute_dtype).repeat_interleave(group, dim=1)
    v = value.to(compute_dtype).repeat_interleave(group, dim=1)
    finite_v = bool(torch.isfinite(v).all())
    out = torch.zeros((b, h, s, dv), dtype=compute_dtype, device=query.device)
    per_row = b * h * s * (1 if finite_v else dv)
    budget = _CHUNK_ELEMENTS if finite_v else _CHUNK_ELEMENTS_NONFINITE
    chunk = max(1, budget // max(1, per_row))
    for i0 in range(0, s, chunk):
        i1 = min(s, i0 + chunk)
        vis = vis_all[:, :, i0:i1, :]
        scores = torch.matmul(q[:, :, i0:i1, :], k.transpose(-1, -2)) * scale
        scores = torch.where(vis, scores, torch.full_like(scores, -torch.inf))
        m = scores.amax(dim=-1, keepdim=True)
        m = torch.where(m == -torch.inf, torch.zeros_like(m), m)
        p = torch.where(vis, torch.exp(scores - m), torch.zeros_like(scores))
        denom = p.sum(dim=-1, keepdim=True)
        if finite_v:
            num = torch.matmul(p, v)
        else:
            prod = p[..., None] * v[:, :, None, :, :]  # [B, H, c, S, Dv]
            num = torch.where(vis[..., None], prod, torch.zeros_like(prod)).sum(dim=-2)
        # Rows with no visible key are exactly 0; a row that sees a NaN key stays NaN
        # (test visibility, not denom > 0, which is False for NaN).
        has_key = vis.any(dim=-1, keepdim=True)
        safe = torch.where(has_key, denom, torch.ones_like(denom))
        out[:, :, i0:i1, :] = torch.where(has_key, num / safe, torch.zeros_like(num))
    return out.to(query.dtype)
