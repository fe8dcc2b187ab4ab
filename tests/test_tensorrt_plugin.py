"""The TensorRT plugin module: names agree with opspec; glue logic; real TensorRT when present.

There is no TensorRT (and no GPU) on the CI machine. What runs here:

* the plugin's identity, inputs and fields are compared with :mod:`sparse_attn.opspec`,
  through ``describe()`` and through the signatures handed to ``tensorrt.plugin`` (derived
  from ``opspec.SCHEMA``; ``tensorrt.plugin`` registers their parameter names and types);
* ``register()`` raises ``UnsupportedEnvironmentError`` without TensorRT;
* the AOT glue (plugin fields -> kernel spec -> PTX, launch grid, int32 extra args) is driven
  through a *recording stand-in* for ``tensorrt.plugin`` that only captures the decorated
  functions and passes integer shapes. It checks our code, not TensorRT: nothing here claims
  TensorRT accepted the plugin.

The tests marked ``tensorrt`` need a real TensorRT + GPU and skip here with a reason.
"""

from __future__ import annotations

import inspect
import sys
import types

import pytest

from sparse_attn import opspec
from sparse_attn.errors import UnsupportedEnvironmentError
from sparse_attn.plugins import tensorrt_plugin as tp


def _tensorrt_available() -> bool:
    try:
        import tensorrt.plugin  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def test_describe_agrees_with_opspec():
    d = tp.describe()
    assert d["id"] == opspec.QUALIFIED_NAME == f"{opspec.PLUGIN_NAMESPACE}::{opspec.OP_TYPE}"
    assert (d["namespace"], d["name"], d["version"]) == (
        opspec.PLUGIN_NAMESPACE,
        opspec.OP_TYPE,
        opspec.PLUGIN_VERSION,
    )
    assert d["inputs"] == list(opspec.INPUT_NAMES)
    assert tuple(d["attributes"]) == opspec.PLUGIN_FIELDS
    assert d["attributes"] == {"block_size": "int", "scale": "float"}
    assert [opspec.ATTRIBUTES[k] for k in d["attributes"]] == ["int", "float"]
    assert d["outputs"] == list(opspec.OUTPUT_NAMES)


def test_plugin_and_node_signatures_derive_from_the_schema():
    """The plugin's three signatures and the ONNX node come from opspec.SCHEMA.

    Derived here independently from the schema's declarations (inputs, plugin fields and
    their types), then compared with what the plugin hands ``tensorrt.plugin`` and with the
    node the exporter writes.
    """
    _, trtp = _stand_in_modules()
    sigs = tp.plugin_signatures(trtp)
    tensors = [t.name for t in opspec.SCHEMA.inputs]
    fields = {a.name: a.py_type for a in opspec.SCHEMA.attributes if a.plugin_field}
    assert fields == {"block_size": int, "scale": float}
    trailing = {"register": [], "aot_impl": ["outputs", "tactic"], "impl": ["outputs", "stream"]}
    for kind, sig in sigs.items():
        names = list(sig.parameters)
        assert names == tensors + list(fields) + trailing[kind], (kind, names)
        kind_t = trtp.Tensor if kind == "impl" else trtp.TensorDesc
        for name in tensors:
            assert sig.parameters[name].annotation is kind_t, (kind, name)
        for name, typ in fields.items():
            assert sig.parameters[name].annotation is typ, (kind, name)
        for p in sig.parameters.values():
            assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            assert p.default is inspect.Parameter.empty  # tensorrt.plugin refuses defaults
    assert sigs["register"].return_annotation is trtp.TensorDesc
    assert len(sigs["aot_impl"].return_annotation.__args__) == 4
    # the ONNX node: inputs in the schema's order, its attributes, the fixed routing values
    attrs = opspec.SCHEMA.onnx_attributes(32, 0.125)
    assert list(attrs) == [a.name for a in opspec.SCHEMA.attributes]
    assert attrs["plugin_namespace"] == opspec.PLUGIN_NAMESPACE
    assert attrs["plugin_version"] == opspec.PLUGIN_VERSION
    assert opspec.SCHEMA.onnx_input_names() == tuple(tensors)
    # the torch op and the C++ schema string: tensors, then the argument attributes
    torch_sig = opspec.SCHEMA.torch_schema_string()
    assert torch_sig.startswith("block_sparse_attention(Tensor query, Tensor key")
    assert "Tensor? key_padding_mask, int block_size, float scale) -> Tensor" in torch_sig


def test_exported_node_follows_the_schema(tmp_path):
    """The node ``symbolic.sparse_attention`` emits: the schema's inputs and attributes."""
    onnx = pytest.importorskip("onnx")
    from sparse_attn.export.attention import export_onnx

    out = export_onnx(
        tmp_path / "a.onnx",
        pattern="band(w=4)",
        block_size=16,
        max_seq_len=40,
        num_heads=2,
        head_dim=8,
        verbose=False,
    )
    model = onnx.load(str(out))
    (node,) = [n for n in model.graph.node if n.op_type == opspec.OP_TYPE]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert list(attrs) == [a.name for a in opspec.SCHEMA.attributes]
    assert attrs["block_size"] == 16 and attrs["plugin_namespace"] == b"sparse_attn"
    assert len(node.input) == len(opspec.SCHEMA.onnx_input_names())  # with key_padding_mask
    inits = {t.name for t in model.graph.initializer}
    layout_at = [opspec.INPUT_NAMES.index(n) for n in opspec.LAYOUT_INPUTS]
    assert all(node.input[i] in inits for i in layout_at)
    assert {p.key: p.value for p in node.metadata_props}[opspec.NODE_LAYOUT_SEQ_LEN_KEY] == "40"


@pytest.mark.skipif(_tensorrt_available(), reason="TensorRT is installed here")
def test_register_without_tensorrt_says_so():
    with pytest.raises(UnsupportedEnvironmentError, match="TensorRT"):
        tp.register()


# ------------------------------------------------------------ recording stand-in (glue only)
class _Dim(int):
    """An integer standing in for a build-time-constant ShapeExpr."""

    is_constant = True

    def constant_value(self) -> int:
        return int(self)


class _Desc:
    def __init__(self, shape, dtype):
        self.shape_expr = [_Dim(s) for s in shape]
        self.dtype = dtype

    def like(self):
        return _Desc(list(self.shape_expr), self.dtype)


def _stand_in_modules():
    trt = types.ModuleType("tensorrt")
    for name in ("float32", "float16", "bfloat16", "int32", "int64", "int8", "uint8", "bool"):
        setattr(trt, name, f"trt.{name}")
    trt.get_plugin_registry = lambda: types.SimpleNamespace(get_creator=lambda *a: "creator")
    trtp = types.ModuleType("tensorrt.plugin")
    trtp.recorded = {}

    def recorder(kind):
        def deco_factory(plugin_id):
            def deco(fn):
                trtp.recorded[kind] = (plugin_id, fn)
                return fn

            return deco

        return deco_factory

    for kind in ("register", "aot_impl", "impl", "autotune"):
        setattr(trtp, kind, recorder(kind))
    trtp.TensorDesc = _Desc
    trtp.Tensor = type("Tensor", (), {})
    trtp.KernelLaunchParams = types.SimpleNamespace
    trtp.ShapeExprs = types.SimpleNamespace(from_tuple=list)
    trtp.SymIntExprs = lambda n: [None] * n
    trtp.SymInt32 = lambda v: v
    trtp.cdiv = lambda a, b: -(-int(a) // int(b))
    trt.plugin = trtp
    return trt, trtp


@pytest.fixture()
def stand_in(monkeypatch):
    pytest.importorskip("triton", reason="triton is not installed")
    trt, trtp = _stand_in_modules()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    monkeypatch.setattr(tp, "_REGISTERED", False)
    monkeypatch.setattr(tp, "_current_arch", lambda: 90)
    yield trt, trtp
    tp._REGISTERED = False


def test_aot_glue_produces_ptx_grid_and_int32_extras(stand_in):
    from sparse_attn.plugins import aot

    trt, trtp = stand_in
    tp.register()
    assert {pid for pid, _ in trtp.recorded.values()} == {opspec.QUALIFIED_NAME}
    b, h, s, d, dv, nqb, nnz = 2, 4, 100, 64, 32, 4, 11
    q = _Desc([b, h, s, d], trt.float16)
    k = _Desc([b, h, s, d], trt.float16)
    v = _Desc([b, h, s, dv], trt.float16)
    rp = _Desc([h, nqb + 1], trt.int32)
    ci = _Desc([h, nnz], trt.int32)
    mi = _Desc([h, nnz], trt.int32)
    mk = _Desc([3, 32, 32], trt.int32)  # the engine builder widens the uint8 table
    kpm = _Desc([b, s], trt.bool)
    out = trtp.recorded["register"][1](q, k, v, rp, ci, mi, mk, kpm, 32, 0.125)
    assert list(out.shape_expr) == [b, h, s, dv] and out.dtype == trt.float16
    name, ptx, params, extra = trtp.recorded["aot_impl"][1](
        q, k, v, rp, ci, mi, mk, kpm, 32, 0.125, (out,), 0
    )
    assert name == "_block_sparse_attn_fwd" and ".version 9.0" in ptx
    _, entry = aot.entry_params(ptx)
    assert len(entry) == 8 + len(extra) + 1, "PTX params != inputs + extra args + output"
    assert (params.grid_x, params.grid_y) == (-(-s // 32), b * h)
    assert params.block_x in (128, 256) and params.shared_mem > 0
    spec = aot.KernelSpec("float16", 32, h, d, dv, h, nqb + 1, nnz, 0.125, "bool", "int32")
    assert list(extra) == list(aot.runtime_int_values(spec, s))
    assert all(isinstance(x, int) and 0 < x < 2**31 for x in extra)


@pytest.mark.tensorrt
@pytest.mark.skipif(not _tensorrt_available(), reason="needs TensorRT (>= 10.9) and a GPU")
def test_real_tensorrt_registry_has_the_creator():
    import tensorrt as trt

    tp.register()
    creator = trt.get_plugin_registry().get_creator(
        opspec.OP_TYPE, opspec.PLUGIN_VERSION, opspec.PLUGIN_NAMESPACE
    )
    assert creator is not None


def test_aot_glue_grouped_kv_and_wide_heads(stand_in):
    """Key/value with Hkv < H heads and D = 256: output [B, H, S, Dv]; K/V strides of Hkv."""
    from sparse_attn.plugins import aot

    trt, trtp = stand_in
    tp.register()
    b, h, hkv, s, d, dv, nqb, nnz = 2, 4, 1, 100, 256, 128, 2, 3
    q = _Desc([b, h, s, d], trt.bfloat16)
    k = _Desc([b, hkv, s, d], trt.bfloat16)
    v = _Desc([b, hkv, s, dv], trt.bfloat16)
    rp, ci, mi = (
        _Desc([h, nqb + 1], trt.int32),
        _Desc([h, nnz], trt.int32),
        _Desc([h, nnz], trt.int32),
    )
    mk, kpm = _Desc([1, 64, 64], trt.int32), _Desc([b, s], trt.bool)
    out = trtp.recorded["register"][1](q, k, v, rp, ci, mi, mk, kpm, 64, 0.0625)
    assert list(out.shape_expr) == [b, h, s, dv] and out.dtype == trt.bfloat16
    _, _, params, extra = trtp.recorded["aot_impl"][1](
        q, k, v, rp, ci, mi, mk, kpm, 64, 0.0625, (out,), 0
    )
    spec = aot.KernelSpec("bfloat16", 64, h, d, dv, h, nqb + 1, nnz, 0.0625, "bool", "int32", hkv)
    assert list(extra) == list(aot.runtime_int_values(spec, s))
    assert (params.grid_x, params.grid_y) == aot.launch_grid(spec, b, s)[:2]
