"""ONNX Runtime "engine": an optimised ONNX model that keeps the source's ``metadata_props``.

ONNX Runtime writes the graph it runs after its graph optimisations when
``SessionOptions.optimized_model_filepath`` is set (the model-local
``BlockSparseAttention`` function is inlined at load, so the result holds standard and ORT
contrib ops only). The metadata of the source model is checked on the written file and re-added
when ORT dropped any of it.
"""

from __future__ import annotations

import time
from pathlib import Path

from sparse_attn.errors import InvalidInputError, UnsupportedEnvironmentError

#: ``--opt-level`` name -> ``onnxruntime.GraphOptimizationLevel`` member name.
OPT_LEVELS = {
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def build(
    onnx_path: Path,
    output: Path,
    *,
    opt_level: str = "extended",
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
    **unused,
) -> dict:
    """Write the ORT-optimised model to ``output``; return the sidecar fields.

    Args:
        onnx_path: source model. output: destination ``.onnx`` (any suffix).
        opt_level: ``basic`` (provider independent), ``extended`` (default) or ``all``
            (may hold layout transforms specific to the CPU it was built on).
        providers: execution providers the optimisation is done for.

    Raises:
        InvalidInputError: unknown ``opt_level`` or option.
        UnsupportedEnvironmentError: onnxruntime missing.
    """
    if unused:
        raise InvalidInputError(
            f"option(s) {', '.join(sorted(unused))} do not apply to --backend onnxruntime"
        )
    if opt_level not in OPT_LEVELS:
        raise InvalidInputError(f"opt_level must be one of {list(OPT_LEVELS)}, got {opt_level!r}")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise UnsupportedEnvironmentError(
            f"onnxruntime is not installed ({exc}); pip install 'sparse-attn[cpu]'"
        ) from exc
    import onnx

    from sparse_attn.export.metadata import read_metadata, set_metadata

    src_meta = read_metadata(onnx_path)

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[opt_level])
    so.optimized_model_filepath = str(output)
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(onnx_path), sess_options=so, providers=list(providers))
    build_s = time.perf_counter() - t0
    del sess

    written = onnx.load_model(str(output), load_external_data=False)
    have = read_metadata(written)
    readded = sorted(k for k, v in src_meta.items() if have.get(k) != v)
    if readded:
        set_metadata(written, src_meta)
        onnx.save_model(written, str(output))
    check = read_metadata(onnx.load_model(str(output)))
    missing = [k for k, v in src_meta.items() if check.get(k) != v]
    if missing:  # pragma: no cover - would be an onnx bug
        raise RuntimeError(f"metadata keys {missing} did not survive in {output}")

    return {
        "backend": "onnxruntime",
        "engine": str(output),
        "source_model": str(onnx_path),
        "onnxruntime_version": ort.__version__,
        "opt_level": opt_level,
        "providers": list(providers),
        "build_seconds": round(build_s, 3),
        "metadata_readded": readded,
        "layout_hash": src_meta.get("sparse_attn.layout_hash"),
        "metadata": src_meta,
    }
