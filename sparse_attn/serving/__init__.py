"""Serving: an HTTP server with dynamic batching, Ray Serve replicas, Triton repositories.

* :func:`create_app` (:mod:`.app`): the ASGI application over one :class:`sparse_attn.Runtime`:
  the KServe / Triton v2 inference protocol, ``/v1/embeddings`` for text encoders,
  Prometheus ``/metrics``; requests are merged by :class:`DynamicBatcher` (:mod:`.batching`).
* :func:`run_server` / :class:`ServerThread` (:mod:`.server`): uvicorn, graceful shutdown.
* :mod:`.ray_app`: the same application as a Ray Serve deployment with replicas.
* :mod:`.triton_repo`: Triton Inference Server model repositories (``sparse-attn triton-repo``).
* :mod:`.pytriton_app`: the Runtime bound into PyTriton (Triton's python backend).

Everything imports lazily: ``import sparse_attn.serving`` needs none of the web packages.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "create_app": "sparse_attn.serving.app",
    "default_model_name": "sparse_attn.serving.app",
    "BatchPolicy": "sparse_attn.serving.batching",
    "DynamicBatcher": "sparse_attn.serving.batching",
    "QueueFullError": "sparse_attn.serving.batching",
    "ShuttingDownError": "sparse_attn.serving.batching",
    "run_merged": "sparse_attn.serving.batching",
    "run_server": "sparse_attn.serving.server",
    "ServerThread": "sparse_attn.serving.server",
    "write_repository": "sparse_attn.serving.triton_repo",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparse_attn.serving' has no attribute {name!r}")
