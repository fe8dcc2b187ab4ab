"""Kernels stage: block-sparse attention backends and the public dispatcher.

``block_sparse_attention(query, key, value, layout, key_padding_mask=None, scale=None,
backend="auto")`` validates its inputs, picks a backend and runs it (docs/spec.md).

Backends (each a module exposing ``NAME``, ``not_supported_reasons(...)`` and
``attention(...)``, imported lazily):

* ``"reference"``: dense masked attention in float64, the oracle (O(S^2)).
* ``"torch"``: block-sparse in PyTorch ops, CPU or GPU; uses the compiled CPU kernel
  (``cpu_ext``) for CPU tensors when it is available.
* ``"triton"``: the GPU kernel (Triton; CPU only under ``TRITON_INTERPRET=1``).
* ``"auto"``: the first of ``AUTO_ORDER`` that supports the inputs (Triton on CUDA, torch
  otherwise). The reference is never chosen automatically.

Inside ``torch.compile`` the ``auto`` and ``torch`` backends run through the custom op
``torch.ops.sparse_attn.block_sparse_attention`` (:mod:`sparse_attn.kernels.op`), so the call
traces as one node (``fullgraph=True`` works).
"""

from __future__ import annotations

import functools
import importlib

import torch

from sparse_attn.errors import BackendNotSupportedError
from sparse_attn.kernels import op as _op
from sparse_attn.kernels._validate import validate_inputs
from sparse_attn.op_arrays import call_with_layout

__all__ = ["block_sparse_attention", "BACKENDS", "AUTO_ORDER", "available_backends"]

#: backend name -> module that implements it.
BACKENDS = {
    "reference": "sparse_attn.kernels.reference",
    "torch": "sparse_attn.kernels.torch_backend",
    "triton": "sparse_attn.kernels.triton_backend",
}
#: Preference order of ``backend="auto"`` (fastest first).
AUTO_ORDER = ("triton", "torch")


@functools.cache
def _load(name: str):
    """Import a backend module once; returns ``(module, None)`` or ``(None, reason)``.

    The outcome is cached: a backend whose import failed (e.g. triton not installed) is not
    re-imported, and re-searched on ``sys.path``, on every call.
    """
    try:
        return importlib.import_module(BACKENDS[name]), None
    except Exception as exc:  # noqa: BLE001 - an optional backend may fail to import
        return None, f"backend module {BACKENDS[name]} could not be imported ({exc})"


def _reasons(name: str, query, key, value, layout, key_padding_mask):
    mod, err = _load(name)
    if mod is None:
        return None, [err]
    try:
        reasons = list(mod.not_supported_reasons(query, key, value, layout, key_padding_mask))
    except Exception as exc:  # noqa: BLE001 - a backend's check must not hide the others
        reasons = [f"support check failed: {exc}"]
    return mod, reasons


def available_backends(query, key, value, layout, key_padding_mask=None) -> dict[str, list[str]]:
    """``{backend: reasons}`` for every backend (empty list = it can take these inputs)."""
    return {
        name: _reasons(name, query, key, value, layout, key_padding_mask)[1] for name in BACKENDS
    }


def block_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Block-sparse attention over a :class:`~sparse_attn.layout.BlockLayout`.

    ``out[b, h, i] = sum_j softmax_j(scale * q_i . k_j over visible j) v_j`` where key ``j`` is
    visible from query ``i`` when the layout's token mask of head ``h`` allows it and
    ``key_padding_mask[b, j]`` is True (docs/spec.md). Softmax and accumulation are float32
    (float64 for float64 inputs).

    Args:
        query: ``[B, H, S, D]`` float32 or float16 (bfloat16 / float64 where the backend
            supports it).
        key: ``[B, Hkv, S, D]``, same dtype and device; ``H % Hkv == 0`` (grouped-query
            attention: query head ``h`` reads K/V head ``h // (H // Hkv)``; no backend
            repeats K/V per query head). ``1 <= D <= 256``.
        value: ``[B, Hkv, S, Dv]``, same dtype and device; ``1 <= Dv <= 256``.
        layout: a BlockLayout with ``num_heads`` H (or 1) and ``1 <= S <= seq_len``; a request
            shorter than ``seq_len`` uses the layout's top-left crop (keys ``>= S`` are never
            read). A layout with ``requires_static_seq_len`` needs ``S == seq_len``.
        key_padding_mask: optional ``[B, S]`` bool (True = real token) or integer
            (nonzero = real token).
        scale: softmax scale, default ``1/sqrt(D)``; a finite float > 0.
        backend: ``"auto"``, ``"torch"``, ``"reference"`` or ``"triton"``.

    Returns:
        ``[B, H, S, Dv]`` in the dtype of ``query``. Rows with no visible key are exactly 0;
        masked keys never influence the output, even when their K/V hold NaN or Inf.

    Raises:
        InvalidInputError: on bad shapes, dtypes, devices, scale, or S out of range (the
            message gives the expected and the received value).
        BackendNotSupportedError: unknown backend name, or no (or not the requested) backend
            can take the inputs; ``.reasons`` maps each backend to its reasons.
    """
    if not isinstance(backend, str) or (backend != "auto" and backend not in BACKENDS):
        raise BackendNotSupportedError(
            f"unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}"
        )
    scale = validate_inputs(query, key, value, layout, key_padding_mask, scale)
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        key_padding_mask = key_padding_mask != 0
    if backend in ("auto", "torch") and torch.compiler.is_compiling():
        # under torch.compile: one opaque custom-op node instead of graph breaks
        return _via_custom_op(query, key, value, layout, key_padding_mask, scale)
    candidates = AUTO_ORDER if backend == "auto" else (backend,)
    all_reasons: dict[str, list[str]] = {}
    for name in candidates:
        if backend == "auto" and name == "triton" and query.device.type != "cuda":
            # the interpreter (TRITON_INTERPRET=1) is for checks, never the fastest choice
            all_reasons[name] = ["auto uses triton only for CUDA tensors"]
            continue
        mod, reasons = _reasons(name, query, key, value, layout, key_padding_mask)
        if mod is not None and not reasons:
            return mod.attention(query, key, value, layout, key_padding_mask, scale)
        all_reasons[name] = reasons
    what = "no backend can" if backend == "auto" else f"backend {backend!r} cannot"
    raise BackendNotSupportedError(
        f"{what} take query {list(query.shape)} {str(query.dtype).replace('torch.', '')} "
        f"on {query.device}",
        all_reasons,
    )


def _via_custom_op(query, key, value, layout, key_padding_mask, scale: float) -> torch.Tensor:
    return call_with_layout(_op.OP, query, key, value, layout, key_padding_mask, scale)
