"""Engines: turn an exported ``.onnx`` model into a deployable artifact (docs/spec.md).

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

from sparse_attn.errors import InvalidInputError, UnsupportedEnvironmentError

__all__ = [
    "BACKENDS",
    "build_engine",
    "default_backend",
    "import_tensorrt",
    "read_sidecar",
    "sidecar_path",
    "tensorrt_unavailable_reason",
]

BACKENDS = ("auto", "tensorrt", "onnxruntime")
#: ``format`` field of the sidecar JSON.
SIDECAR_FORMAT = "sparse-attn-engine/1"


def sidecar_path(output: str | os.PathLike) -> Path:
    """``<output>.json``: the JSON description written next to an engine."""
    return Path(str(output) + ".json")


def read_sidecar(output: str | os.PathLike, *, strict: bool = True) -> dict:
    """The sidecar JSON object of an engine, or ``{}`` when there is none.

    Args:
        output: the engine (not the sidecar) path.
        strict: raise on a sidecar that is not a JSON object; ``False`` returns ``{}`` (used
            when the sidecar is only a hint, e.g. to tell what a file is).

    Raises:
        InvalidInputError: ``strict`` and the sidecar is unreadable or not a JSON object.
    """
    p = sidecar_path(output)
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        if not strict:
            return {}
        raise InvalidInputError(
            f"{p} is not valid JSON ({' '.join(str(exc).split())[:200]}); rebuild the engine"
        ) from None
    if not isinstance(data, dict):
        if not strict:
            return {}
        raise InvalidInputError(f"{p} does not hold a JSON object; rebuild the engine")
    return data


def _tensorrt_import_error() -> str | None:
    try:
        import tensorrt  # noqa: F401
        import tensorrt.plugin  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError or a missing shared library
        return f"TensorRT (>= 10.9 with tensorrt.plugin) is not installed or cannot load ({exc})"
    return None


def tensorrt_unavailable_reason(need_gpu: bool = True) -> str | None:
    """Why TensorRT cannot be used here, or None when it can. The one place that decides.

    Args:
        need_gpu: also require a visible CUDA GPU (building and running engines do; the
            plugin's registration alone does not).
    """
    reason = _tensorrt_import_error()
    if reason or not need_gpu:
        return reason
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "PyTorch is missing"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


def import_tensorrt(action: str, *, need_gpu: bool = True, hint: str = ""):
    """``(tensorrt, tensorrt.plugin)`` modules, or an error saying why they cannot be used.

    Args:
        action: what needs TensorRT, for the message (e.g. ``"build a TensorRT engine"``).
        need_gpu: see :func:`tensorrt_unavailable_reason`.
        hint: how to do without, appended to the message.

    Raises:
        UnsupportedEnvironmentError: TensorRT (or a GPU, when needed) is missing.
    """
    reason = tensorrt_unavailable_reason(need_gpu)
    if reason:
        raise UnsupportedEnvironmentError(
            f"cannot {action}: {reason}" + (f"; {hint}" if hint else "")
        )
    import tensorrt
    import tensorrt.plugin

    return tensorrt, tensorrt.plugin


def default_backend() -> str:
    """``"tensorrt"`` when TensorRT and a GPU are usable, else ``"onnxruntime"``."""
    return "tensorrt" if tensorrt_unavailable_reason() is None else "onnxruntime"


#: Extensions of what each backend writes (checked before any work).
OUTPUT_SUFFIXES = {
    "tensorrt": (".engine", ".plan", ".trt"),
    "onnxruntime": (".onnx",),
}


def build_engine(
    onnx_path: str | os.PathLike,
    output: str | os.PathLike,
    backend: str = "auto",
    **options,
) -> dict:
    """Build an engine from an exported ONNX model; returns the sidecar JSON object.

    Args:
        onnx_path: model written by ``sparse-attn export``.
        output: path of the engine (TensorRT: ``.engine``, ``.plan`` or ``.trt``) or optimised
            ONNX model (ONNX Runtime: ``.onnx``); never ``onnx_path``. Parent directories are
            created; the file and its ``.json`` description are written atomically.
        backend: ``"auto"``, ``"tensorrt"`` or ``"onnxruntime"``.
        options: backend options (see ``trt_engine.build`` / ``ort_engine.build``).

    Raises:
        InvalidInputError: missing input or not an ONNX model, output == input, wrong output
            extension, unknown backend or option.
        UnsupportedEnvironmentError: TensorRT requested without TensorRT or a GPU.
        RuntimeError: a build check failed (e.g. no plugin layer in the network).
    """
    from sparse_attn.fileio import atomic_output, check_output_path, write_text
    from sparse_attn.runtime.runtime import detect_kind

    src = Path(onnx_path)
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown engine backend {backend!r}; choose one of {BACKENDS}")
    if not src.is_file():
        raise InvalidInputError(f"model file {src} does not exist; export one first")
    if detect_kind(src) != "onnx":
        raise InvalidInputError(
            f"{src} is a TensorRT engine; build engines from the .onnx model it came from"
        )
    if backend == "auto":
        backend = default_backend()
    out = check_output_path(
        output, what="engine output", suffixes=OUTPUT_SUFFIXES[backend], inputs=[src]
    )
    check_output_path(sidecar_path(out), what="engine description", inputs=[src])
    with atomic_output(out) as tmp:
        if backend == "tensorrt":
            from sparse_attn.engines import trt_engine

            info = trt_engine.build(src, tmp, **options)
        else:
            from sparse_attn.engines import ort_engine

            info = ort_engine.build(src, tmp, **options)
        info = {"format": SIDECAR_FORMAT, **info, "engine": str(out)}
        write_text(sidecar_path(out), json.dumps(info, indent=2, sort_keys=False) + "\n")
    return info
