"""``--model attention`` export end to end: torch.onnx.export -> checked ONNX file, run in
ONNX Runtime at several S from one file, compared with the float64 reference."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
import torch

from sparse_attn import opspec
from sparse_attn.errors import InvalidInputError
from sparse_attn.export import attention, build_torch_model, exporter
from sparse_attn.export.metadata import build_metadata, read_metadata
from sparse_attn.kernels.reference import reference_attention
from sparse_attn.layout import compile_layout

ort = pytest.importorskip("onnxruntime")

from test_function_body import assert_close, make_inputs  # noqa: E402


def run_ort(path, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def ref(layout, q, k, v, kpm):
    t = [torch.from_numpy(np.ascontiguousarray(x)) for x in (q, k, v)]
    return reference_attention(*t, layout, None if kpm is None else torch.from_numpy(kpm)).numpy()


EXPORTS = [
    # spec, max_seq_len, block, heads, D, dtype, causal, kpm
    ("band(w=20) | global(n=3)", 100, 16, 2, 8, "float32", False, True),
    ("longformer(window=32, n=2)", 96, 32, 3, 16, "float16", False, True),
    ("sliding_window(w=24)", 80, 16, 2, 8, "float32", True, False),
]


@pytest.mark.parametrize("spec,max_s,bs,heads,d,dtype,causal,kpm", EXPORTS)
def test_export_attention_runs_in_ort_at_several_lengths(
    tmp_path, caplog, spec, max_s, bs, heads, d, dtype, causal, kpm
):
    out = tmp_path / "sub" / "attn.onnx"
    with caplog.at_level(logging.INFO, logger="sparse_attn.export"):
        path = attention.export_onnx(
            out,
            pattern=spec,
            block_size=bs,
            max_seq_len=max_s,
            dtype=dtype,
            causal=causal,
            num_heads=heads,
            head_dim=d,
            key_padding_mask=kpm,
        )
    assert path == out and out.exists()
    line = caplog.text  # the library logs the check line; the CLI prints it
    assert "export check: onnxruntime CPU vs torch" in line and "PASS" in line

    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    (node,) = [n for n in model.graph.node if n.op_type == opspec.OP_TYPE]
    assert node.domain == opspec.DOMAIN
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_namespace"] == b"sparse_attn" and attrs["block_size"] == bs
    node_meta = {p.key: p.value for p in node.metadata_props}
    assert node_meta[opspec.NODE_LAYOUT_SEQ_LEN_KEY] == str(max_s)  # the body's length guard
    assert [f.name for f in model.functions] == [opspec.OP_TYPE]
    names = [i.name for i in model.graph.input]
    assert names == ["query", "key", "value"] + (["key_padding_mask"] if kpm else [])
    q_dims = model.graph.input[0].type.tensor_type.shape.dim
    assert q_dims[0].dim_param == "batch" and q_dims[2].dim_param == "seq_len"
    assert [o.name for o in model.graph.output] == ["output"]

    meta = read_metadata(out)
    assert all(k in meta for k in opspec.META_KEYS), [k for k in opspec.META_KEYS if k not in meta]
    layout = compile_layout(spec, max_s, bs, num_heads=heads, causal=causal)
    assert meta["sparse_attn.layout_hash"] == layout.layout_hash()
    assert meta["sparse_attn.max_seq_len"] == str(max_s) and meta["sparse_attn.dtype"] == dtype
    assert json.loads(meta["sparse_attn.inputs"])[0]["shape"] == ["batch", heads, "seq_len", d]

    npdt = np.float16 if dtype == "float16" else np.float32
    atol, rtol = (1e-3, 4e-3) if dtype == "float16" else (2e-5, 1e-4)
    rng = np.random.default_rng(7)
    torch_model = build_torch_model(meta)
    for s in (1, bs + 5, max_s):
        q, k, v, pad = make_inputs(rng, 2, heads, s, d, d, npdt, poison=kpm)
        feeds = dict(query=q, key=k, value=v)
        if kpm:
            feeds["key_padding_mask"] = pad
        got = run_ort(out, feeds)
        assert got.dtype == npdt
        expect = ref(layout, q, k, v, pad if kpm else None)
        assert_close(got, expect, atol, rtol, f"{spec} S={s}")
        with torch.no_grad():
            eager = torch_model(**{n: torch.from_numpy(x) for n, x in feeds.items()})["output"]
        assert_close(eager.numpy(), expect, atol, rtol, f"torch model {spec} S={s}")
    q, k, v, pad = make_inputs(rng, 1, heads, max_s + 1, d, d, npdt)
    feeds = dict(query=q, key=k, value=v, **({"key_padding_mask": pad} if kpm else {}))
    with pytest.raises(Exception, match="ONNXRuntimeError"):  # S > max_seq_len: loud error
        run_ort(out, feeds)


def test_static_seq_len_pattern_exports_with_fixed_s(tmp_path):
    out = tmp_path / "static.onnx"
    attention.export_onnx(
        out,
        pattern="global(n=16, last=16) | band(w=8)",
        block_size=16,
        max_seq_len=64,
        num_heads=1,
        head_dim=8,
        verbose=False,
    )
    model = onnx.load(str(out))
    q_dims = model.graph.input[0].type.tensor_type.shape.dim
    assert q_dims[0].dim_param == "batch" and q_dims[2].dim_value == 64
    meta = read_metadata(model)
    assert meta["sparse_attn.static_seq_len"] == "true"
    layout = compile_layout("global(n=16, last=16) | band(w=8)", 64, 16)
    q, k, v, pad = make_inputs(np.random.default_rng(0), 2, 1, 64, 8, 8, np.float32)
    got = run_ort(out, dict(query=q, key=k, value=v, key_padding_mask=pad))
    assert_close(got, ref(layout, q, k, v, pad), 2e-5, 1e-4, "static S")


class _FrozenS(torch.nn.Module):
    """A model that computes its layout from the traced shape: S gets frozen."""

    def forward(self, query, key, value):
        from sparse_attn.export.symbolic import sparse_attention
        from sparse_attn.ops import layout_tensors

        s = int(query.shape[2])
        lay = layout_tensors(compile_layout("band(w=4)", s, 16, num_heads=query.shape[1]))
        out = sparse_attention(
            query,
            key,
            value,
            lay["row_ptr"],
            lay["col_idx"],
            lay["mask_idx"],
            lay["masks"],
            None,
            16,
            0.5,
        )
        return {"output": out}


def test_frozen_seq_len_is_detected(tmp_path):
    q = torch.randn(2, 1, 40, 8)
    layout = compile_layout("band(w=4)", 64, 16)
    meta = build_metadata(
        model="attention",
        layout=layout,
        dtype="float32",
        model_config={},
        max_seq_len=64,
        num_heads=1,
        head_dim=8,
    )
    axes = {n: {0: "batch", 2: "seq_len"} for n in ("query", "key", "value")}
    out = tmp_path / "frozen.onnx"
    with pytest.raises(
        RuntimeError,
        match=r"dynamic shape check failed: input 'query' axis 2 \(seq_len\) is fixed at 40",
    ):
        exporter.export_model(
            _FrozenS(),
            {"query": q, "key": q, "value": q},
            out,
            output_names=["output"],
            dynamic_axes=axes,
            metadata=meta,
            verbose=False,
        )
    assert not out.exists()


def test_dynamic_dim_detector_on_a_static_model():
    layout = compile_layout("band(w=4)", 32, 16)
    from sparse_attn.export.function_body import make_node_model

    model = make_node_model(layout, head_dim=4)
    axes = {"query": {0: "batch", 2: "seq_len"}}
    exporter.check_dynamic_dims(model, axes)  # symbolic: passes
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 32  # frozen S
    with pytest.raises(RuntimeError, match=r"input 'query' axis 2 \(seq_len\) is fixed at 32"):
        exporter.check_dynamic_dims(model, axes)


def test_bad_arguments_are_refused_before_work(tmp_path):
    kw = dict(pattern="band(w=4)", block_size=16, max_seq_len=32, num_heads=1, head_dim=4)
    with pytest.raises(InvalidInputError, match="dtype"):
        attention.export_onnx(tmp_path / "a.onnx", dtype="bfloat16", **kw)
    with pytest.raises(InvalidInputError, match=r"\.onnx"):
        attention.export_onnx(tmp_path / "a.txt", **kw)
    with pytest.raises(InvalidInputError, match="block_size"):
        attention.export_onnx(tmp_path / "a.onnx", **{**kw, "block_size": 7})
    with pytest.raises(InvalidInputError, match="head"):
        attention.export_onnx(tmp_path / "a.onnx", **{**kw, "head_dim": None})
    weights = tmp_path / "weights.onnx"
    weights.write_bytes(b"precious")
    with pytest.raises(InvalidInputError, match="refusing to overwrite"):
        exporter._resolve_output(weights, [weights])
    assert weights.read_bytes() == b"precious"


def test_build_torch_model_dispatch_errors():
    with pytest.raises(InvalidInputError, match="sparse_attn.model"):
        build_torch_model({})
    with pytest.raises(InvalidInputError, match="unknown model family"):
        build_torch_model({"sparse_attn.model": "nope", "sparse_attn.model_config": "{}"})
    with pytest.raises(InvalidInputError, match="layout"):
        build_torch_model({"sparse_attn.model": "attention", "sparse_attn.model_config": "{}"})


@pytest.mark.parametrize("family", ["minilm", "bigbird", "longformer", "mistral"])
def test_build_torch_model_hf_family_missing_keys(family):
    """Each Hugging Face family names itself and the first missing key, before any work."""
    cases = (({}, "pattern"), ({"pattern": None}, "block_size"))
    cases += (({"pattern": None, "block_size": 16}, "max_seq_len"),)
    for cfg, key in cases:
        meta = {"sparse_attn.model": family, "sparse_attn.model_config": json.dumps(cfg)}
        with pytest.raises(InvalidInputError, match=f"^{family} model_config lacks '{key}'; re-"):
            build_torch_model(meta)


def test_hf_family_model_configs():
    """Key order, conversions and per-family keys of ``sparse_attn.model_config``."""
    from sparse_attn.export import bigbird, longformer, minilm, mistral

    common = {"block_size": 16, "max_seq_len": 64, "dtype": "float16"}
    got = bigbird.model_config_for("band(w=1)", config=None, seed=3.0, causal=1, **common)
    assert list(got.items()) == [
        ("family", "bigbird"),
        ("pattern", "band(w=1)"),
        ("block_size", 16),
        ("max_seq_len", 64),
        ("dtype", "float16"),
        ("config", {}),
        ("seed", 3),
        ("model_dir", None),
        ("causal", True),
    ]
    assert type(got["seed"]) is int
    got = longformer.model_config_for(
        None, config={"a": 1}, seed=2, num_global=2.0, causal=0, **common
    )
    assert list(got)[5:] == ["config", "seed", "model_dir", "num_global", "causal"]
    assert (got["config"], got["num_global"], got["causal"]) == ({"a": 1}, 2, False)
    assert type(got["num_global"]) is int
    got = mistral.model_config_for(None, config=None, seed=1, **common)
    assert list(got)[5:] == ["config", "seed"] and got["family"] == "mistral"
    got = minilm.model_config_for(["band(w=1)", "band(w=2)"], causal=1, **common)
    assert list(got)[5:] == ["causal"] and got["causal"] is True
    assert got["pattern"] == ["band(w=1)", "band(w=2)"]


def test_hf_common_pattern_summary_and_dynamic_inputs():
    from types import SimpleNamespace

    from sparse_attn.export import hf_common

    a = compile_layout("band(w=1)", seq_len=64, block_size=16, num_heads=2)
    b = compile_layout("band(w=2)", seq_len=64, block_size=16, num_heads=2)
    assert hf_common.pattern_summary([a, a]) == a.spec
    assert hf_common.pattern_summary([a, b]) == f"layer 0: {a.spec}; layer 1: {b.spec}"
    assert hf_common.model_layouts(SimpleNamespace(layout=a)) == [a]
    assert hf_common.model_layouts(SimpleNamespace(layout=a, layer_layouts=(a, b))) == [a, b]
    for max_s, (s1, s2) in {100: (24, 53), 30: (24, 30), 5: (5, 5), 2: (2, 2)}.items():
        example, check = hf_common.dynamic_length_inputs(max_s, 50)
        assert tuple(example["input_ids"].shape) == (2, s1)
        assert tuple(check["input_ids"].shape) == (2, s2)
        assert int(example["attention_mask"][1].sum()) == s1 - min(3, s1 - 1)
        assert int(check["attention_mask"][1].sum()) == s2 - min(5, s2 - 1)
        assert int(example["input_ids"].min()) >= 3 and int(check["input_ids"].max()) < 50


def test_export_custom_per_head_layout_and_rebuild(tmp_path):
    from test_function_body import custom_layout

    layout = custom_layout()  # 3 heads, S=75, block 16, empty query rows, ragged edge
    out = tmp_path / "custom.onnx"
    attention.export_onnx(
        out,
        pattern=layout,
        block_size=16,
        max_seq_len=75,
        num_heads=3,
        head_dim=4,
        value_dim=5,
        verbose=False,
    )
    meta = read_metadata(out)
    assert meta["sparse_attn.layout_hash"] == layout.layout_hash()
    torch_model = build_torch_model(meta)
    rng = np.random.default_rng(11)
    for s in (1, 31, 75):
        q, k, _, pad = make_inputs(rng, 2, 3, s, 4, 4, np.float32)
        v = rng.standard_normal((2, 3, s, 5)).astype(np.float32)
        feeds = dict(query=q, key=k, value=v, key_padding_mask=pad)
        expect = ref(layout, q, k, v, pad)
        assert_close(run_ort(out, feeds), expect, 2e-5, 1e-4, f"custom S={s}")
        with torch.no_grad():
            eager = torch_model(**{n: torch.from_numpy(x) for n, x in feeds.items()})["output"]
        assert_close(eager.numpy(), expect, 2e-5, 1e-4, f"rebuilt torch model S={s}")
    with pytest.raises(InvalidInputError, match="seq_len 75"):
        attention.export_onnx(
            tmp_path / "x.onnx",
            pattern=layout,
            block_size=16,
            max_seq_len=80,
            num_heads=3,
            head_dim=4,
        )


def test_dynamic_axes_for():
    """One naming rule for the exported inputs' dynamic axes (attention and HF families)."""
    got = exporter.dynamic_axes_for(("q", "k"), static_seq_len=False, seq_axis=2)
    assert got == {"q": {0: "batch", 2: "seq_len"}, "k": {0: "batch", 2: "seq_len"}}
    assert got["q"] is not got["k"]
    assert exporter.dynamic_axes_for(["ids"], static_seq_len=True, seq_axis=1) == {
        "ids": {0: "batch"}
    }


def test_export_grouped_kv_cli_runs_in_ort_with_hkv_heads(tmp_path, capsys):
    """``--num-kv-heads``: K/V inputs of Hkv heads, metadata records Hkv, and ORT matches the
    float64 reference at two batch sizes and two sequence lengths from one file."""
    from sparse_attn.cli import main

    out = tmp_path / "gqa.onnx"
    args = ["export", "--model", "attention", "--pattern", "band(w=20) | global(n=2)"]
    args += ["--causal", "--num-heads", "4", "--num-kv-heads", "2", "--head-dim", "40"]
    args += ["--max-seq-len", "96", "--block-size", "16", "-o", str(out)]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "PASS" in captured.out
    model = onnx.load(str(out))
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }
    assert dims["query"] == ["batch", 4, "seq_len", 40]
    assert dims["key"] == dims["value"] == ["batch", 2, "seq_len", 40]
    meta = read_metadata(out)
    assert meta["sparse_attn.num_kv_heads"] == "2" and meta["sparse_attn.num_heads"] == "4"
    assert json.loads(meta["sparse_attn.model_config"])["num_kv_heads"] == 2
    layout = compile_layout("band(w=20) | global(n=2)", 96, 16, num_heads=4, causal=True)
    rng = np.random.default_rng(21)
    for b, s in ((1, 96), (3, 41)):
        q = rng.standard_normal((b, 4, s, 40)).astype(np.float32)
        _, k, v, pad = make_inputs(rng, b, 2, s, 40, 40, np.float32)
        got = run_ort(out, dict(query=q, key=k, value=v, key_padding_mask=pad))
        assert_close(got, ref(layout, q, k, v, pad), 2e-5, 1e-4, f"GQA B={b} S={s}")
    code = main([*args[:-2], "--num-kv-heads", "3", "-o", str(tmp_path / "bad.onnx")])
    assert code == 2 and "num_kv_heads must divide" in capsys.readouterr().err
