"""The op's schema (``opspec.SCHEMA``), what is derived from it, and the layout converter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import sparse_attn
import sparse_attn.ops
from sparse_attn import opspec
from sparse_attn.op_arrays import (
    layout_from_arrays,
    layout_from_node,
    layout_to_numpy,
    layout_to_tensors,
    node_metadata,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "kernels.md"


def test_docs_tables_are_the_schemas():
    text = DOCS.read_text(encoding="utf-8")
    assert opspec.render_docs(text) == text, "run: python -m sparse_attn.opspec docs/kernels.md"


def test_torch_op_schema_is_derived():
    schema = str(torch.ops.sparse_attn.block_sparse_attention.default._schema)
    assert schema == f"{opspec.DOMAIN}::{opspec.SCHEMA.torch_schema_string()}"
    names = [a.name for a in torch.ops.sparse_attn.block_sparse_attention.default._schema.arguments]
    assert tuple(names) == opspec.SCHEMA.call_arg_names()


def test_bind_shapes_rules_and_symbolic_output():
    shapes = {
        "query": (2, 8, 70, 256),
        "key": (2, 2, 70, 256),
        "value": (2, 2, 70, 40),
        "row_ptr": (1, 6),
        "col_idx": (1, 9),
        "mask_idx": (1, 9),
        "masks": (3, 16, 16),
        "key_padding_mask": None,
    }
    dims = opspec.SCHEMA.bind_shapes(shapes, {"block_size": 16})
    assert (dims["H"], dims["Hkv"], dims["D"], dims["Dv"], dims["nQB"]) == (8, 2, 256, 40, 5)
    assert opspec.SCHEMA.output_shape(shapes) == (2, 8, 70, 40)
    bad = [
        ({"key": (2, 3, 70, 256), "value": (2, 3, 70, 40)}, "H=8 must be a multiple of Hkv=3"),
        ({"value": (2, 2, 71, 40)}, r"value must be \[B=2, Hkv=2, S=70, Dv\]"),
        ({"row_ptr": (4, 6)}, "L=4 .* must be H=8 or 1"),
        ({"masks": (3, 16, 8)}, r"masks must be \[M=3, block_size=16, block_size=16\]"),
        ({"query": (2, 8, 70, 257), "key": (2, 2, 70, 257)}, r"must be in 1\.\.256, got 257"),
        ({"query": (2, 8, 70)}, "query must have rank 4"),
    ]
    for change, match in bad:
        with pytest.raises(ValueError, match=match):
            opspec.SCHEMA.bind_shapes({**shapes, **change}, {"block_size": 16})


def test_backend_limits_reasons():
    lim = opspec.BackendLimits("x", ("float32",), max_head_dim=128, grouped_kv=False)
    assert not lim.not_supported_reasons(
        dtype="float32", head_dim=64, value_dim=64, num_heads=4, num_kv_heads=4, block_size=64
    )
    r = lim.not_supported_reasons(
        dtype="float16", head_dim=256, value_dim=64, num_heads=4, num_kv_heads=1, block_size=64
    )
    assert len(r) == 3 and "Hkv == H" in r[2] and "exceeds 128" in r[1]


def test_tolerance_table_scopes():
    assert opspec.tolerance("op", "torch.float16").atol == 2e-3
    assert opspec.tolerance("graph", "bfloat16") == opspec.tolerance("graph", "float16")
    assert opspec.tolerance("model", "float64") == opspec.tolerance("model", "float32")
    with pytest.raises(KeyError):
        opspec.tolerance("nope", "float32")


def test_meta_keys():
    assert opspec.meta_key("max_seq_len") == "sparse_attn.max_seq_len"
    assert opspec.NODE_LAYOUT_SEQ_LEN_KEY not in opspec.META_KEYS
    with pytest.raises(KeyError):
        opspec.meta_key("layout_seq_len")  # node-level, not a model key


@pytest.mark.parametrize(
    ("spec", "seq_len", "bs", "heads"),
    [
        ("band(w=3) | global(n=2)", 70, 16, 2),  # ragged length, partial tiles
        ("block_local(b=32)", 64, 16, 1),  # only full tiles: M = 0 (one padding mask)
        ("band(w=0)", 1, 16, 3),  # S = 1
    ],
)
def test_layout_round_trips_through_the_op_arrays(spec, seq_len, bs, heads):
    layout = sparse_attn.compile_layout(spec, seq_len=seq_len, block_size=bs, num_heads=heads)
    arrays = layout_to_numpy(layout)
    assert tuple(arrays) == opspec.LAYOUT_INPUTS and all(a.size for a in arrays.values())
    back = layout_from_arrays(*arrays.values(), bs, layout.seq_len)
    assert back.equals(layout) and back.layout_hash() == layout.layout_hash()
    t = layout_to_tensors(layout)
    assert layout_from_arrays(*t.values(), bs, seq_len).equals(layout)
    assert layout_to_tensors(layout) is t  # cached per device
    with pytest.raises(ValueError, match="does not match"):
        layout_from_arrays(*arrays.values(), bs, layout.num_blocks * bs + 1)


def test_layout_without_tiles_round_trips():
    from sparse_attn.layout import BlockLayout

    empty = BlockLayout(
        seq_len=20,
        block_size=16,
        row_ptr=np.zeros((2, 3), np.int32),
        col_idx=np.zeros((2, 0), np.int32),
        mask_idx=np.zeros((2, 0), np.int32),
        masks=np.zeros((0, 16, 16), np.uint8),
    )
    arrays = layout_to_numpy(empty)
    assert arrays["col_idx"].shape == (2, 1) and arrays["masks"].shape == (1, 16, 16)
    assert layout_from_arrays(*arrays.values(), 16, 20).equals(empty)


def test_layout_from_node_reads_the_true_seq_len():
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    layout = sparse_attn.compile_layout("band(w=5)", seq_len=50, block_size=16, num_heads=2)
    arrays = layout_to_numpy(layout)
    consts = {f"c_{k}": numpy_helper.from_array(v, f"c_{k}") for k, v in arrays.items()}
    node = helper.make_node(
        opspec.OP_TYPE,
        ["q", "k", "v", *consts],
        ["out"],
        domain=opspec.DOMAIN,
        **opspec.SCHEMA.onnx_attributes(16, 0.5),
    )
    assert layout_from_node(node, consts).seq_len == 64  # without the key: nQB * bs
    for k, v in node_metadata(layout).items():
        node.metadata_props.add(key=k, value=v)
    assert layout_from_node(node, consts).equals(layout)
    del onnx
