"""sparse-attn: position-based block-sparse attention from PyTorch to ONNX, TensorRT and serving.

Public API (docs/spec.md)::

    import sparse_attn
    layout = sparse_attn.compile_layout(spec, seq_len=S, block_size=B, num_heads=H, causal=False)
    out = sparse_attn.block_sparse_attention(query, key, value, layout,
                                             key_padding_mask=None, scale=None, backend="auto")
    rt = sparse_attn.Runtime(path, backend="auto")
    outputs = rt.run({"input_ids": ids, "attention_mask": mask})

Names are imported lazily so that ``import sparse_attn`` stays cheap (no torch import).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "compile_layout": "sparse_attn.layout",
    "BlockLayout": "sparse_attn.layout",
    "parse_pattern": "sparse_attn.patterns",
    "block_sparse_attention": "sparse_attn.kernels",
    "Runtime": "sparse_attn.runtime",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparse_attn' has no attribute {name!r}")
