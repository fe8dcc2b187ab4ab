"""The ``triton`` backend of :func:`sparse_attn.kernels.block_sparse_attention`.

Runs the block-sparse flash-attention kernel of :mod:`sparse_attn.kernels.triton_kernel`:
compiled for CUDA tensors, and through Triton's CPU interpreter for CPU tensors when the
environment variable ``TRITON_INTERPRET=1`` is set (slow: for tests and checks only).

Supported (see :func:`not_supported_reasons`): float32, float16, bfloat16 (bfloat16 on CUDA
needs compute capability >= 8.0); head dims ``D`` and ``Dv`` of 1..256 (padded inside to a power
of two >= 16); grouped-query K/V (``key``/``value`` with ``Hkv`` heads, ``H % Hkv == 0``, read in
place); block sizes ``opspec.MIN_BLOCK_SIZE..opspec.MAX_BLOCK_SIZE`` (16..128, any integer: non
powers of two are padded inside); layouts with one pattern per query head, or one for all. On a
CUDA device the launch configuration of :func:`~sparse_attn.kernels.triton_kernel.launch_config`
must fit the device's shared memory per block.
"""

from __future__ import annotations

import importlib.util

import torch

from sparse_attn import opspec

NAME = "triton"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Largest head dim D / Dv (the op's limit, which the kernel takes whole).
MAX_HEAD_DIM = opspec.MAX_HEAD_DIM
#: Environment variable that turns on Triton's CPU interpreter (read by Triton itself).
INTERPRET_ENV = "TRITON_INTERPRET"


def _triton_missing() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "the 'triton' package is not installed (pip install 'sparse-attn[triton]')"
    return None


def _array_reasons(query, key, value, block_size: int, cpu_needs_interpreter: bool) -> list[str]:
    """Reasons that depend only on the tensors and the block size (see the two entries below)."""
    missing = _triton_missing()
    if missing:
        return [missing]
    from sparse_attn.kernels.triton_kernel import interpreter_enabled

    reasons: list[str] = []
    dev = query.device
    if dev.type == "cpu":
        if cpu_needs_interpreter and not interpreter_enabled():
            reasons.append(
                f"CPU tensors run only under Triton's interpreter: set {INTERPRET_ENV}=1 "
                "(slow; for tests) or move the tensors to a CUDA device"
            )
    elif dev.type == "cuda":
        if query.dtype == torch.bfloat16:
            major, minor = torch.cuda.get_device_capability(dev)
            if major < 8:
                reasons.append(
                    f"bfloat16 needs compute capability >= 8.0, device has {major}.{minor}"
                )
    else:
        reasons.append(f"device {dev.type!r} not supported (cuda, or cpu under {INTERPRET_ENV}=1)")
    if query.dtype not in SUPPORTED_DTYPES:
        reasons.append(
            f"dtype {str(query.dtype).replace('torch.', '')} not supported "
            "(float32, float16, bfloat16 are)"
        )
    d, dv = int(query.shape[-1]), int(value.shape[-1])
    for name, n in (("head_dim", d), ("value head_dim", dv)):
        if not 1 <= n <= MAX_HEAD_DIM:
            reasons.append(f"{name} {n} not supported (1..{MAX_HEAD_DIM})")
    h, hkv = int(query.shape[1]), int(key.shape[1])
    if hkv < 1 or h % hkv or int(value.shape[1]) != hkv:
        reasons.append(
            f"key/value heads must divide the query heads (H % Hkv == 0), got H={h}, key "
            f"{hkv}, value {int(value.shape[1])} heads"
        )
    bs = int(block_size)
    if not opspec.MIN_BLOCK_SIZE <= bs <= opspec.MAX_BLOCK_SIZE:
        reasons.append(
            f"block_size {bs} not supported ({opspec.MIN_BLOCK_SIZE}..{opspec.MAX_BLOCK_SIZE})"
        )
    if not reasons and dev.type == "cuda":
        reasons += _device_fit_reasons(query.dtype, bs, d, dv, dev)
    return reasons


def not_supported_reasons(query, key, value, layout, key_padding_mask) -> list[str]:
    """Why this backend cannot take these (validated) inputs; an empty list = supported.

    Args: as :func:`sparse_attn.kernels.block_sparse_attention` (already validated there).

    Returns:
        Readable reasons, e.g. ``"CPU tensors need TRITON_INTERPRET=1 ..."``.
    """
    reasons = _array_reasons(query, key, value, int(layout.block_size), True)
    h = int(query.shape[1])
    if layout.num_heads not in (1, h):
        reasons.append(f"layout has {layout.num_heads} heads, query has {h} (need equal)")
    return reasons


def not_supported_reason(query, key, value, block_size: int) -> str | None:
    """The array-level check used by the custom op's CUDA route: None when the kernel takes
    ``query [B, H, S, D]``, ``key [B, Hkv, S, D]``, ``value [B, Hkv, S, Dv]`` with this
    ``block_size``, else the reasons joined into one line. What the kernel takes, not where it
    runs: CPU tensors are not refused here for want of ``TRITON_INTERPRET`` (the op's route is
    for CUDA tensors; the dispatcher's :func:`not_supported_reasons` says it)."""
    reasons = _array_reasons(query, key, value, block_size, False)
    return "; ".join(reasons) if reasons else None


def _device_fit_reasons(dtype, block_size: int, d: int, dv: int, dev) -> list[str]:
    """The launch configuration's shared memory against the device's per-block opt-in limit."""
    from sparse_attn.kernels.triton_kernel import launch_config, shared_memory_bound

    cfg = launch_config(dtype, block_size, d, dv)
    need = shared_memory_bound(dtype, cfg, d, dv)
    props = torch.cuda.get_device_properties(dev)
    have = int(getattr(props, "shared_memory_per_block_optin", 0) or 0)
    if have and need > have:
        return [
            f"tiles {cfg.block_m}x{cfg.block_n} for head dims D={d}, Dv={dv} "
            f"({str(dtype).replace('torch.', '')}) need up to {need} bytes of shared memory, "
            f"device {props.name} offers {have} per block; use a smaller head dim or block "
            "size, or the torch backend"
        ]
    return []


def attention(query, key, value, layout, key_padding_mask, scale: float) -> torch.Tensor:
    """Run the Triton kernel (inputs validated by the dispatcher, ``scale`` resolved).

    Args:
        query: ``[B, H, S, D]``; key ``[B, Hkv, S, D]``; value ``[B, Hkv, S, Dv]``; same
            dtype; ``H % Hkv == 0`` (query head ``h`` reads K/V head ``h // (H // Hkv)``).
        layout: :class:`~sparse_attn.layout.BlockLayout` for ``seq_len >= S`` (cropped by
            bounds inside the kernel).
        key_padding_mask: ``[B, S]`` bool (True = real token) or None.
        scale: softmax scale.

    Returns:
        ``[B, H, S, Dv]`` in ``query``'s dtype (softmax and accumulation in fp32).
    """
    from sparse_attn.kernels.triton_kernel import attention_arrays
    from sparse_attn.op_arrays import call_with_layout

    return call_with_layout(
        attention_arrays, query, key, value, layout, key_padding_mask, float(scale)
    )
