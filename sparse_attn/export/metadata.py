"""``metadata_props`` of exported models.

Every key is declared once, with its meaning, in ``opspec.SCHEMA.meta_keys`` (the model-level
ones are ``opspec.META_KEYS``); this module only fills in their values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import onnx

from sparse_attn import opspec
from sparse_attn.layout import BlockLayout

_ELEM_NAMES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.BOOL: "bool",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
}


def layouts_hash(layouts: BlockLayout | Sequence[BlockLayout]) -> str:
    """``layout_hash()`` of one layout, or a SHA-256 over the hashes of several, in order."""
    if isinstance(layouts, BlockLayout):
        return layouts.layout_hash()
    hashes = [lay.layout_hash() for lay in layouts]
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256(json.dumps(hashes).encode()).hexdigest()


def io_signature(values: Sequence[onnx.ValueInfoProto]) -> list[dict]:
    """``[{"name", "dtype", "shape"}]`` of graph inputs/outputs; symbolic dims as strings."""
    out = []
    for v in values:
        tt = v.type.tensor_type
        shape = [
            d.dim_param
            if d.HasField("dim_param")
            else (d.dim_value if d.HasField("dim_value") else "?")
            for d in tt.shape.dim
        ]
        out.append(
            {
                "name": v.name,
                "dtype": _ELEM_NAMES.get(
                    tt.elem_type, onnx.TensorProto.DataType.Name(tt.elem_type).lower()
                ),
                "shape": shape,
            }
        )
    return out


def build_metadata(
    *,
    model: str,
    layout: BlockLayout | Sequence[BlockLayout],
    dtype: str,
    model_config: dict,
    max_seq_len: int,
    num_heads: int,
    head_dim: int,
    pattern: str | None = None,
    causal: bool | None = None,
    static_seq_len: bool | None = None,
) -> dict[str, str]:
    """The ``sparse_attn.*`` metadata of an export (all but inputs/outputs and versions).

    Args:
        model: family name (``sparse_attn.model``).
        layout: the layout, or the layouts in node order when a model holds several.
        dtype: ``"float32"`` | ``"float16"``.
        model_config: JSON-serialisable dict read back by the family's
            ``build_torch_model``.
        max_seq_len: tokens; num_heads, head_dim: of the attention op.
        pattern: expanded spec; default the (first) layout's ``spec``.
        causal / static_seq_len: default from the (first) layout.

    Returns:
        ``{key: str}``; :func:`sparse_attn.export.exporter.export_model` adds
        ``sparse_attn.inputs``, ``sparse_attn.outputs`` and the versions.
    """
    first = layout if isinstance(layout, BlockLayout) else layout[0]
    static = first.requires_static_seq_len if static_seq_len is None else static_seq_len
    values = {
        "model": model,
        "pattern": first.spec if pattern is None else pattern,
        "causal": json.dumps(bool(first.causal if causal is None else causal)),
        "block_size": str(int(first.block_size)),
        "max_seq_len": str(int(max_seq_len)),
        "static_seq_len": json.dumps(bool(static)),
        "num_heads": str(int(num_heads)),
        "head_dim": str(int(head_dim)),
        "dtype": dtype,
        "layout_hash": layouts_hash(layout),
        "model_config": json.dumps(model_config, sort_keys=True),
    }
    meta = {opspec.meta_key(k): v for k, v in values.items()}
    family_keys = [k.name for k in opspec.SCHEMA.meta_keys if k.written_by == "family"]
    assert sorted(meta) == sorted(family_keys), "build_metadata and opspec.SCHEMA disagree"
    return meta


def version_metadata() -> dict[str, str]:
    """Package, torch and onnx versions (``sparse_attn.version``, ``torch_version``, ...)."""
    import torch

    import sparse_attn

    return {
        opspec.meta_key("version"): sparse_attn.__version__,
        opspec.meta_key("torch_version"): torch.__version__,
        opspec.meta_key("onnx_version"): onnx.__version__,
    }


def set_metadata(model_proto: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Replace or add ``meta`` entries in ``model_proto.metadata_props`` (in place)."""
    existing = {p.key: p for p in model_proto.metadata_props}
    for key, value in meta.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            model_proto.metadata_props.add(key=key, value=str(value))


def read_metadata(model: str | onnx.ModelProto) -> dict[str, str]:
    """``metadata_props`` of an ONNX file or model as a dict (weights not loaded)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def missing_keys(meta: dict[str, str]) -> list[str]:
    """Keys of ``opspec.META_KEYS`` absent from ``meta``."""
    return [k for k in opspec.META_KEYS if k not in meta]
