"""Family ``attention``: the bare ``sparse_attn::BlockSparseAttention`` op as a model.

ONNX inputs ``query [batch, H, seq_len, D]``, ``key [batch, Hkv, seq_len, D]``, ``value
[batch, Hkv, seq_len, Dv]`` (float32 or float16; ``Hkv = num_kv_heads``, default H, must
divide H: grouped-query attention) and, unless disabled, ``key_padding_mask [batch,
seq_len]`` (bool, True = real token); output ``output [batch, H, seq_len, Dv]``.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

from sparse_attn import limits, opspec
from sparse_attn.errors import InvalidInputError
from sparse_attn.layout import BlockLayout

FAMILY = "attention"

#: Family-specific ``sparse-attn export`` options (see sparse_attn/export/__init__.py).
CLI_OPTIONS = {
    "num_heads": {"type": "int", "default": None, "help": "attention heads H (required)"},
    "num_kv_heads": {
        "type": "int",
        "default": None,
        "help": "key/value heads Hkv, a divisor of H (grouped-query attention; default: H)",
    },
    "head_dim": {"type": "int", "default": None, "help": "query/key head dim D (required)"},
    "value_dim": {"type": "int", "default": None, "help": "value head dim Dv (default: D)"},
    "key_padding_mask": {
        "type": "bool",
        "default": True,
        "help": "give the model a key_padding_mask [B, S] input (default: yes)",
    },
    "scale": {"type": "float", "default": None, "help": "softmax scale (default: 1/sqrt(D))"},
}


def _pos_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def resolve_layout(
    pattern, *, block_size: int, max_seq_len: int | None, num_heads: int, causal: bool
) -> BlockLayout:
    """The layout of an export: ``pattern`` compiled for ``max_seq_len``, or a given layout.

    Raises:
        InvalidInputError: a BlockLayout whose size, heads, block size or causality
            disagree with the arguments, or a pattern that does not compile.
    """
    if isinstance(pattern, BlockLayout):
        if max_seq_len is not None and pattern.seq_len != max_seq_len:
            raise InvalidInputError(
                f"layout is for seq_len {pattern.seq_len} but max_seq_len is {max_seq_len}"
            )
        if pattern.block_size != block_size or pattern.num_heads != num_heads:
            raise InvalidInputError(
                f"layout has block_size {pattern.block_size} and {pattern.num_heads} heads; "
                f"expected block_size {block_size} and {num_heads} heads"
            )
        return pattern
    if max_seq_len is None:
        raise InvalidInputError("max_seq_len is required to compile a pattern; pass --max-seq-len")
    from sparse_attn.layout import compile_layout

    return compile_layout(pattern, max_seq_len, block_size, num_heads=num_heads, causal=causal)


def encode_layout(layout: BlockLayout) -> str:
    """Base64 of an ``.npz`` (no pickles) holding the layout arrays and sizes."""
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        seq_len=np.int64(layout.seq_len),
        block_size=np.int64(layout.block_size),
        row_ptr=layout.row_ptr,
        col_idx=layout.col_idx,
        mask_idx=layout.mask_idx,
        masks=layout.masks,
        requires_static_seq_len=np.bool_(layout.requires_static_seq_len),
        causal=np.bool_(layout.causal),
    )
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_layout(data: str, spec: str = "custom") -> BlockLayout:
    """Inverse of :func:`encode_layout` (``allow_pickle=False``)."""
    with np.load(io.BytesIO(base64.b64decode(data)), allow_pickle=False) as z:
        return BlockLayout(
            seq_len=int(z["seq_len"]),
            block_size=int(z["block_size"]),
            row_ptr=z["row_ptr"],
            col_idx=z["col_idx"],
            mask_idx=z["mask_idx"],
            masks=z["masks"],
            spec=spec,
            causal=bool(z["causal"]),
            requires_static_seq_len=bool(z["requires_static_seq_len"]),
        )


def _model_class():
    import torch

    from sparse_attn.export.modules import SparseAttention

    class AttentionModel(torch.nn.Module):
        """The bare op: ``forward(query, key, value, key_padding_mask=None) -> {"output"}``."""

        def __init__(self, layout: BlockLayout, scale: float | None) -> None:
            super().__init__()
            self.attn = SparseAttention(layout, scale=scale)

        def forward(self, query, key, value, key_padding_mask=None):
            return {"output": self.attn(query, key, value, key_padding_mask)}

    return AttentionModel


def build_torch_model(model_config: dict):
    """Rebuild the eager model from metadata ``sparse_attn.model_config`` (see export_onnx).

    Returns:
        ``torch.nn.Module`` (eval) with ``forward(query, key, value, key_padding_mask=None)
        -> {"output": Tensor [B, H, S, Dv]}``.

    Raises:
        InvalidInputError: a config without the layout or with a layout of the wrong shape.
    """
    try:
        layout = decode_layout(model_config["layout"], model_config.get("pattern", "custom"))
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidInputError(f"attention model_config has no valid 'layout': {exc}") from exc
    if layout.num_heads != int(model_config.get("num_heads", layout.num_heads)):
        raise InvalidInputError("attention model_config: num_heads disagrees with the layout")
    return _model_class()(layout, model_config.get("scale")).eval()


def _random_inputs(batch, heads, kv_heads, s, d, dv, dtype, with_kpm, seed, poison):
    import torch

    g = torch.Generator().manual_seed(seed)
    tdt = torch.float16 if dtype == "float16" else torch.float32
    q = torch.randn(batch, heads, s, d, generator=g).to(tdt)
    k = torch.randn(batch, kv_heads, s, d, generator=g).to(tdt)
    v = torch.randn(batch, kv_heads, s, dv, generator=g).to(tdt)
    feeds = {"query": q, "key": k, "value": v}
    if with_kpm:
        kpm = torch.rand(batch, s, generator=g) > 0.25
        kpm[:, 0] = True
        if batch > 1 and s > 2:
            kpm[-1, s // 2 :] = False  # a padded tail
        if poison:  # padded slots hold NaN/Inf: they must never reach the output
            pad = ~kpm[:, None, :, None]
            feeds["key"] = torch.where(pad, torch.tensor(float("nan"), dtype=tdt), k)
            feeds["value"] = torch.where(pad, torch.tensor(float("inf"), dtype=tdt), v)
        feeds["key_padding_mask"] = kpm
    return feeds


def export_onnx(
    output_path,
    *,
    pattern,
    block_size: int,
    max_seq_len: int | None,
    dtype: str = "float32",
    causal: bool = False,
    num_heads: int | None = None,
    head_dim: int | None = None,
    value_dim: int | None = None,
    num_kv_heads: int | None = None,
    key_padding_mask: bool = True,
    scale: float | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> Path:
    """Export the bare op (``--model attention``) to ``output_path``.

    Args:
        output_path: ``*.onnx`` path (parents created).
        pattern: spec string | preset | Pattern | per-head list | BlockLayout.
        block_size: tokens per block (``opspec.MIN_BLOCK_SIZE..MAX_BLOCK_SIZE``).
        max_seq_len: the layout's length; S is dynamic in 1..max_seq_len (fixed at
            max_seq_len for patterns that need the end of the sequence).
        dtype: ``"float32"`` | ``"float16"`` (graph inputs/outputs; fp32 math inside).
        causal: intersect the pattern with ``j <= i``.
        num_heads, head_dim: H and D (required); value_dim: Dv (default D).
        num_kv_heads: Hkv, the key/value heads (default H; must divide H). The model's
            ``key``/``value`` inputs have Hkv heads; query head ``h`` reads K/V head
            ``h // (H / Hkv)``, and no K/V is copied per query head.
        key_padding_mask: add the optional ``key_padding_mask`` input.
        scale: softmax scale (default ``1/sqrt(D)``).
        seed: seed of the random check inputs.
        verbose: print the export check line.

    Returns:
        The written path.

    Raises:
        InvalidInputError: bad arguments (before any work).
        RuntimeError: an export-time check failed.
    """
    if num_heads is None or head_dim is None:
        raise InvalidInputError("--model attention needs --num-heads and --head-dim")
    num_heads = _pos_int("num_heads", num_heads)
    head_dim = _pos_int("head_dim", head_dim)
    value_dim = head_dim if value_dim is None else _pos_int("value_dim", value_dim)
    num_kv_heads = num_heads if num_kv_heads is None else _pos_int("num_kv_heads", num_kv_heads)
    if num_heads % num_kv_heads:
        raise InvalidInputError(
            f"num_kv_heads must divide num_heads: {num_heads} % {num_kv_heads} != 0; "
            "pass a divisor of --num-heads to --num-kv-heads"
        )
    for name, dim in (("head_dim", head_dim), ("value_dim", value_dim)):
        if dim > opspec.MAX_HEAD_DIM:
            raise InvalidInputError(f"{name} must be <= {opspec.MAX_HEAD_DIM}, got {dim}")
    block_size = _pos_int("block_size", block_size)
    if not opspec.MIN_BLOCK_SIZE <= block_size <= opspec.MAX_BLOCK_SIZE:
        raise InvalidInputError(
            f"block_size must be in {opspec.MIN_BLOCK_SIZE}..{opspec.MAX_BLOCK_SIZE}, got {block_size}"
        )
    if max_seq_len is not None:
        max_seq_len = _pos_int("max_seq_len", max_seq_len)
    if dtype not in opspec.SUPPORTED_DTYPES:
        raise InvalidInputError(f"dtype must be one of {opspec.SUPPORTED_DTYPES}, got {dtype!r}")
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise InvalidInputError(f"scale must be a finite positive number, got {scale!r}")
    layout = resolve_layout(
        pattern, block_size=block_size, max_seq_len=max_seq_len, num_heads=num_heads, causal=causal
    )
    limits.check_export_size(layout, head_dim, value_dim)
    max_seq_len = layout.seq_len
    static = layout.requires_static_seq_len
    if max_seq_len < 2:
        raise InvalidInputError("max_seq_len must be >= 2 for an export with dynamic S")
    resolved_scale = opspec.default_scale(head_dim) if scale is None else float(scale)

    from sparse_attn.export import exporter
    from sparse_attn.export.metadata import build_metadata

    config = {
        "pattern": layout.spec,
        "causal": bool(layout.causal),
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "head_dim": head_dim,
        "value_dim": value_dim,
        "block_size": block_size,
        "max_seq_len": max_seq_len,
        "dtype": dtype,
        "key_padding_mask": bool(key_padding_mask),
        "scale": resolved_scale,
        "static_seq_len": bool(static),
        "layout": encode_layout(layout),
    }
    model = build_torch_model(config)
    # trace at a length that is not a block multiple when possible; check at several S
    trace_s = max_seq_len if static else max(2, max_seq_len - max(1, block_size // 2))
    lengths = (
        [max_seq_len] if static else sorted({max_seq_len, trace_s, max(1, max_seq_len // 3), 1})
    )
    shape_args = (num_heads, num_kv_heads)
    example = _random_inputs(
        2, *shape_args, trace_s, head_dim, value_dim, dtype, key_padding_mask, seed, False
    )
    checks = [
        _random_inputs(
            b, *shape_args, s, head_dim, value_dim, dtype, key_padding_mask, seed + 1 + i, True
        )
        for i, (b, s) in enumerate((1 + i % 2, s) for i, s in enumerate(lengths))
    ]
    dynamic_axes = exporter.dynamic_axes_for(
        ("query", "key", "value"), static_seq_len=static, seq_axis=2
    )
    if key_padding_mask:
        dynamic_axes.update(
            exporter.dynamic_axes_for(("key_padding_mask",), static_seq_len=static, seq_axis=1)
        )
    meta = build_metadata(
        model=FAMILY,
        layout=layout,
        dtype=dtype,
        model_config=config,
        max_seq_len=max_seq_len,
        num_heads=num_heads,
        head_dim=head_dim,
    )
    meta["sparse_attn.num_kv_heads"] = str(num_kv_heads)
    result = exporter.export_model(
        model,
        example,
        output_path,
        output_names=["output"],
        dynamic_axes=dynamic_axes,
        metadata=meta,
        check_inputs=checks,
        verbose=verbose,
    )
    return result.path


def config_summary(model_config: dict) -> str:
    """One-line description of an attention model config (CLI output)."""
    keys = ("pattern", "num_heads", "head_dim", "max_seq_len", "block_size", "dtype")
    return json.dumps({k: model_config.get(k) for k in keys})
