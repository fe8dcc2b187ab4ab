"""Serving runtime: ``Runtime(path, backend="auto")`` with request validation, a text front
end, and accuracy checks against the PyTorch reference (docs/spec.md).

Modules: :mod:`.runtime` (``Runtime``), :mod:`.validation` (metadata, request checks),
:mod:`.text` (tokenizer, pooling), :mod:`.compare` (accuracy report, Polygraphy files),
:mod:`.onnxruntime_backend`, :mod:`.torch_backend`, ``tensorrt_backend`` (engines part).
"""

from __future__ import annotations

from sparse_attn.runtime.runtime import BACKENDS, Runtime, detect_kind, read_metadata

__all__ = ["BACKENDS", "Runtime", "detect_kind", "read_metadata"]
