"""Engines: turn an exported ``.onnx`` model into a deployable artifact (SPEC section 3).

``build_engine(onnx_path, output, backend="auto", **options) -> dict`` writes

* ``backend="tensorrt"``: a serialized TensorRT engine at ``output`` (the
  ``sparse_attn::BlockSparseAttention`` nodes become our plugin, :mod:`sparse_attn.plugins`),
  see :mod:`sparse_attn.engines.trt_engine`;
* ``backend="onnxruntime"``: an ONNX Runtime optimised ONNX model at ``output`` that keeps the
  source model's ``metadata_props``, see :mod:`sparse_attn.engines.ort_engine`;

and in both cases a JSON sidecar ``<output>.json`` (:func:`sidecar_path`) describing the
artifact (backend, versions, device, profiles, layout hash, the model's metadata). It returns
that JSON object. ``backend="auto"`` picks TensorRT when TensorRT and a CUDA GPU are usable
and ONNX Runtime otherwise (what ``make engine`` does).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sparse_attn.errors import InvalidInputError

__all__ = ["BACKENDS", "build_engine", "default_backend", "read_sidecar", "sidecar_path"]

BACKENDS = ("auto", "tensorrt", "onnxruntime")
#: ``format`` field of the sidecar JSON.
SIDECAR_FORMAT = "sparse-attn-engine/1"


def sidecar_path(output: str | os.PathLike) -> Path:
    """``<output>.json``: the JSON description written next to an engine."""
    return Path(str(output) + ".json")


def read_sidecar(output: str | os.PathLike) -> dict:
    """The sidecar JSON of an engine, or ``{}`` when there is none.

    Raises:
        InvalidInputError: the sidecar exists but is not valid JSON.
    """
    p = sidecar_path(output)
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{p} is not valid JSON ({exc}); rebuild the engine") from exc


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT cannot build here (no package, no GPU), or None when it can."""
    try:
        import tensorrt  # noqa: F401
        import tensorrt.plugin  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError or a missing shared library
        return f"TensorRT is not installed or cannot load ({exc})"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "PyTorch is missing"
    return None


def default_backend() -> str:
    """``"tensorrt"`` when TensorRT and a GPU are usable, else ``"onnxruntime"``."""
    return "tensorrt" if tensorrt_unavailable_reason() is None else "onnxruntime"


def build_engine(
    onnx_path: str | os.PathLike,
    output: str | os.PathLike,
    backend: str = "auto",
    **options,
) -> dict:
    """Build an engine from an exported ONNX model; returns the sidecar JSON object.

    Args:
        onnx_path: model written by ``sparse-attn export``.
        output: path of the engine (TensorRT) or optimised ONNX model (ONNX Runtime); must
            differ from ``onnx_path``. Parent directories are created.
        backend: ``"auto"``, ``"tensorrt"`` or ``"onnxruntime"``.
        options: backend options (see ``trt_engine.build`` / ``ort_engine.build``).

    Raises:
        InvalidInputError: missing input, output == input, unknown backend or option.
        UnsupportedEnvironmentError: TensorRT requested without TensorRT or a GPU.
        RuntimeError: a build check failed (e.g. no plugin layer in the network).
    """
    src = Path(onnx_path)
    out = Path(output)
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown engine backend {backend!r}; choose one of {BACKENDS}")
    if not src.is_file():
        raise InvalidInputError(f"model file {src} does not exist; export one first")
    if out.resolve() == src.resolve():
        raise InvalidInputError(f"output {out} would overwrite the input model; choose -o")
    if backend == "auto":
        backend = default_backend()
    out.parent.mkdir(parents=True, exist_ok=True)
    if backend == "tensorrt":
        from sparse_attn.engines import trt_engine

        info = trt_engine.build(src, out, **options)
    else:
        from sparse_attn.engines import ort_engine

        info = ort_engine.build(src, out, **options)
    info = {"format": SIDECAR_FORMAT, **info}
    sidecar_path(out).write_text(json.dumps(info, indent=2, sort_keys=False) + "\n")
    return info
