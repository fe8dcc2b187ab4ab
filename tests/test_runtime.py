"""Runtime: request validation, ONNX Runtime / torch backends, text front end, comparison.

Uses small models built here with onnx.helper (a toy text model and a toy float model) plus a
toy family registered in ``sparse_attn.export.FAMILIES`` so the torch backend can rebuild
them from metadata; the real MiniLM export is covered by the slow tests.
"""

from __future__ import annotations

import json
import sys
import threading
import types
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_attn
from sparse_attn.errors import InvalidInputError
from sparse_attn.runtime import Runtime, detect_kind
from sparse_attn.runtime.compare import (
    TOLERANCES,
    check_model,
    compare_arrays,
    tolerance_for,
)
from sparse_attn.runtime.text import (
    TextEncoder,
    TextTruncatedWarning,
    cosine_matrix,
    default_minilm_dir,
    mean_pool,
    read_text_file,
)
from sparse_attn.runtime.validation import ModelInfo, TensorSpec, validate_request

VOCAB = 30522  # MiniLM's vocabulary, so the real tokenizer's ids fit the toy table
EMB = 8
TOY_FAMILY = "toy_runtime_family"


def _meta(family: str, inputs: list[dict], outputs: list[dict], cfg: dict, max_len: int) -> dict:
    return {
        "sparse_attn.model": family,
        "sparse_attn.model_config": json.dumps(cfg),
        "sparse_attn.inputs": json.dumps(inputs),
        "sparse_attn.outputs": json.dumps(outputs),
        "sparse_attn.max_seq_len": str(max_len),
        "sparse_attn.static_seq_len": "false",
        "sparse_attn.dtype": "float32",
        "sparse_attn.pattern": "band(w=2)",
    }


def build_toy_text_model(path, max_len: int = 40, seed: int = 0):
    """ONNX model: embedding lookup -> masked token vectors + mean pooled sentence embedding.

    Inputs input_ids / attention_mask int64 [batch, seq_len]; outputs last_hidden_state
    [batch, seq_len, EMB], sentence_embedding [batch, EMB]. Its metadata names the toy family
    (whose torch model computes the same thing) and points the tokenizer at MiniLM's files.
    """
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((VOCAB, EMB)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis_m1"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["last_hidden_state"]),
        helper.make_node("ReduceSum", ["last_hidden_state", "axis_1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis_1"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "eps"], ["count_safe"]),
        helper.make_node("Div", ["summed", "count_safe"], ["sentence_embedding"]),
    ]
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([-1], np.int64), "axis_m1"),
        numpy_helper.from_array(np.array([1], np.int64), "axis_1"),
        numpy_helper.from_array(np.array([1e-9], np.float32), "eps"),
    ]
    graph = helper.make_graph(
        nodes,
        "toy_text",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq_len"]),
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.INT64, ["batch", "seq_len"]
            ),
        ],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "seq_len", EMB]
            ),
            helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", EMB]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    ins = [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq_len"]},
        {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq_len"]},
    ]
    outs = [
        {"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", "seq_len", EMB]},
        {"name": "sentence_embedding", "dtype": "float32", "shape": ["batch", EMB]},
    ]
    cfg = {
        "kind": "text",
        "seed": seed,
        "vocab_size": VOCAB,
        "tokenizer_path": str(default_minilm_dir()),
    }
    md = _meta(TOY_FAMILY, ins, outs, cfg, max_len)
    helper.set_model_props(model, md)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def build_toy_float_model(path, max_len: int = 16, static: bool = False):
    """ONNX model: output = 2 * x * key_padding_mask[..., None]; x float32 [batch, seq_len, 4]."""
    s = max_len if static else "seq_len"
    nodes = [
        helper.make_node("Cast", ["key_padding_mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "axis_m1"], ["m3"]),
        helper.make_node("Mul", ["x", "m3"], ["xm"]),
        helper.make_node("Mul", ["xm", "two"], ["output"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1], np.int64), "axis_m1"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    graph = helper.make_graph(
        nodes,
        "toy_float",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", s, 4]),
            helper.make_tensor_value_info("key_padding_mask", TensorProto.BOOL, ["batch", s]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", s, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    shape_s = max_len if static else "seq_len"
    ins = [
        {"name": "x", "dtype": "float32", "shape": ["batch", shape_s, 4]},
        {"name": "key_padding_mask", "dtype": "bool", "shape": ["batch", shape_s]},
    ]
    outs = [{"name": "output", "dtype": "float32", "shape": ["batch", shape_s, 4]}]
    md = _meta(TOY_FAMILY, ins, outs, {"kind": "float"}, max_len)
    md["sparse_attn.static_seq_len"] = "true" if static else "false"
    helper.set_model_props(model, md)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


class _ToyTorch(torch.nn.Module):
    """Eager twin of the toy ONNX models (the torch backend's reference)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.kind = cfg["kind"]
        if self.kind == "text":
            rng = np.random.default_rng(cfg["seed"])
            self.table = torch.from_numpy(rng.standard_normal((VOCAB, EMB)).astype(np.float32))
        self.bias = float(cfg.get("bias", 0.0))

    def forward(self, **kw):
        if self.kind == "text":
            m = kw["attention_mask"].to(torch.float32)[..., None]
            hidden = self.table[kw["input_ids"]] * m
            emb = hidden.sum(1) / m.sum(1).clamp_min(1e-9)
            return {"last_hidden_state": hidden + self.bias, "sentence_embedding": emb}
        m = kw["key_padding_mask"].to(torch.float32)[..., None]
        return {"output": kw["x"] * m * 2.0 + self.bias}


@pytest.fixture(autouse=True)
def toy_family(monkeypatch):
    """Register the toy family so ``build_torch_model`` can rebuild the toy models."""
    import sparse_attn.export as export

    mod = types.ModuleType(TOY_FAMILY)
    mod.build_torch_model = lambda cfg: _ToyTorch(cfg).eval()
    monkeypatch.setitem(sys.modules, TOY_FAMILY, mod)
    monkeypatch.setitem(export.FAMILIES, TOY_FAMILY, TOY_FAMILY)
    yield


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return build_toy_text_model(tmp_path_factory.mktemp("toy") / "text.onnx")


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    return build_toy_float_model(tmp_path_factory.mktemp("toy") / "float.onnx")


def _ids(b: int, s: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(0, VOCAB, size=(b, s)).astype(np.int64),
        "attention_mask": np.ones((b, s), dtype=np.int64),
    }


def _assert_close(got, exp, atol=1e-6, rtol=1e-6):
    got, exp = np.asarray(got, np.float64), np.asarray(exp, np.float64)
    assert got.shape == exp.shape, (got.shape, exp.shape)
    err = np.abs(got - exp)
    bad = err > atol + rtol * np.abs(exp)
    if bad.any():
        i = np.unravel_index(int(np.argmax(err)), err.shape)
        raise AssertionError(
            f"{int(bad.sum())} mismatches; worst at {i}: got {got[i]} expected {exp[i]}"
        )


# ---------------------------------------------------------------------- running
def test_public_api_and_onnxruntime_matches_numpy(text_model):
    rt = sparse_attn.Runtime(text_model)
    assert rt.backend == "onnxruntime"
    assert rt.input_names == ["input_ids", "attention_mask"]
    assert rt.output_names == ["last_hidden_state", "sentence_embedding"]
    assert rt.max_seq_len == 40 and rt.is_text_model
    feeds = _ids(3, 7)
    feeds["attention_mask"][2, 4:] = 0
    out = rt.run(feeds)
    # fp64 numpy reference of the same computation
    table = np.random.default_rng(0).standard_normal((VOCAB, EMB)).astype(np.float32)
    m = feeds["attention_mask"][..., None].astype(np.float64)
    hidden = table[feeds["input_ids"]].astype(np.float64) * m
    _assert_close(out["last_hidden_state"], hidden)
    _assert_close(out["sentence_embedding"], hidden.sum(1) / m.sum(1), atol=1e-5, rtol=1e-5)
    assert out["last_hidden_state"].shape == (3, 7, EMB)  # the request's real shape


def test_torch_backend_matches_onnxruntime(text_model, float_model):
    for path, feeds in (
        (text_model, _ids(2, 5)),
        (
            float_model,
            {"x": np.ones((2, 3, 4), np.float32), "key_padding_mask": np.ones((2, 3), bool)},
        ),
    ):
        a = Runtime(path, backend="onnxruntime").run(feeds)
        b = Runtime(path, backend="torch").run(feeds)
        assert list(a) == list(b)
        for k in a:
            _assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)


def test_optional_mask_is_filled_with_ones(float_model):
    rt = Runtime(float_model)
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    _assert_close(rt.run({"x": x})["output"], 2.0 * x)


def test_tensorrt_backend_refuses_onnx_file(text_model):
    with pytest.raises(InvalidInputError, match="not a TensorRT engine"):
        Runtime(text_model, backend="tensorrt")


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda f: {"input_idz": f["input_ids"], "attention_mask": f["attention_mask"]},
            "unknown input",
        ),
        (
            lambda f: {**f, "input_ids": f["input_ids"].astype(np.float32)},
            "expected dtype int64, received float32",
        ),
        (lambda f: {**f, "input_ids": f["input_ids"][0]}, "expected rank 2"),
        (lambda f: {k: v[:0] for k, v in f.items()}, "empty batch"),
        (lambda f: _ids(1, 41), "exceeds the model's max_seq_len 40"),
        (lambda f: {**f, "attention_mask": f["attention_mask"][:, :3]}, "must agree"),
        (lambda f: {**f, "input_ids": f["input_ids"] * 0 + VOCAB}, "outside \\[0, 30522\\)"),
        (lambda f: {**f, "input_ids": f["input_ids"] * 0 - 1}, "outside"),
        (lambda f: {"attention_mask": f["attention_mask"]}, "missing input"),
        (lambda f: {k: v[:, :0] for k, v in f.items()}, "must be >= 1"),
        (lambda f: [1, 2, 3], "must be a dict"),
    ],
)
def test_bad_requests_refused_then_good_request_served(text_model, mutate, message):
    rt = Runtime(text_model)
    good = _ids(2, 6)
    expected = rt.run(good)
    with pytest.raises(InvalidInputError, match=message):
        rt.run(mutate(good))
    again = rt.run(good)
    for k in expected:
        np.testing.assert_array_equal(again[k], expected[k])


def test_static_model_requires_exact_length(tmp_path):
    rt = Runtime(build_toy_float_model(tmp_path / "static.onnx", max_len=8, static=True))
    with pytest.raises(InvalidInputError, match="static sequence length of 8"):
        rt.validate({"x": np.zeros((1, 5, 4), np.float32)})
    assert rt.run({"x": np.zeros((1, 8, 4), np.float32)})["output"].shape == (1, 8, 4)


def test_batch_sizes_must_agree(float_model):
    rt = Runtime(float_model)
    with pytest.raises(InvalidInputError, match="batch size 3 differs from 2"):
        rt.run({"x": np.zeros((2, 3, 4), np.float32), "key_padding_mask": np.ones((3, 3), bool)})
    with pytest.raises(InvalidInputError, match="dimension 2 must be 4"):
        rt.run({"x": np.zeros((2, 3, 5), np.float32)})


@pytest.mark.parametrize("content", [b"", b"hello, I am not a model\n", bytes(range(256)) * 8])
def test_not_a_model_file(tmp_path, content):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(InvalidInputError, match="neither an ONNX model nor a TensorRT engine"):
        Runtime(p)
    with pytest.raises(InvalidInputError, match="neither"):
        Runtime(p, backend="torch")


def test_missing_file_and_bad_backend(tmp_path, text_model):
    with pytest.raises(InvalidInputError, match="does not exist"):
        Runtime(tmp_path / "nope.onnx")
    with pytest.raises(InvalidInputError, match="unknown backend"):
        Runtime(text_model, backend="tvm")
    assert detect_kind(text_model) == "onnx"


def test_torch_backend_needs_metadata(tmp_path):
    p = build_toy_float_model(tmp_path / "m.onnx")
    model = onnx.load(str(p))
    del model.metadata_props[:]
    onnx.save(model, str(p))
    assert Runtime(p).run({"x": np.ones((1, 2, 4), np.float32)})["output"].shape == (1, 2, 4)
    with pytest.raises(InvalidInputError, match="cannot be rebuilt"):
        Runtime(p, backend="torch")


def test_validate_request_torch_tensors_and_lists():
    info = ModelInfo.from_metadata({"sparse_attn.max_seq_len": "4"})
    specs = [TensorSpec("input_ids", np.dtype(np.int64), ("batch", "seq_len"))]
    req = validate_request({"input_ids": torch.zeros(2, 3, dtype=torch.int64)}, specs, info)
    assert req.batch == 2 and req.seq_len == 3
    req = validate_request({"input_ids": [[1, 2]]}, specs, info)
    assert req.feeds["input_ids"].dtype == np.int64
    with pytest.raises(InvalidInputError, match="ragged"):
        validate_request({"input_ids": [[1, 2], [3]]}, specs, info)


# ---------------------------------------------------------------------- text front end
def test_text_encoder_matches_tokenizer_and_warns_on_truncation():
    tok_file = default_minilm_dir() / "tokenizer.json"
    enc = TextEncoder(tok_file, max_seq_len=12)
    feeds, lengths = enc.encode(["Hello world.", "A somewhat longer sentence here."])
    from tokenizers import Tokenizer

    ref_tok = Tokenizer.from_file(str(tok_file))
    ref_tok.no_padding()
    ref = ref_tok.encode("Hello world.")
    assert list(feeds["input_ids"][0, : lengths[0]]) == ref.ids
    assert feeds["input_ids"][0, 0] == 101 and feeds["input_ids"][0, lengths[0] - 1] == 102
    assert feeds["attention_mask"][0].sum() == lengths[0]
    assert feeds["input_ids"].shape == (2, max(lengths))
    with pytest.warns(TextTruncatedWarning, match="cut to 12"):
        feeds, lengths = enc.encode(["word " * 50])
    assert lengths == [12] and feeds["input_ids"][0, -1] == 102  # [SEP] kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.encode(["short"])
    static = TextEncoder(tok_file, max_seq_len=12, pad_to_max=True)
    assert static.encode(["short"])[0]["input_ids"].shape == (1, 12)
    with pytest.raises(InvalidInputError, match="no texts"):
        enc.encode([])


def test_embed_and_run_text(text_model):
    rt = Runtime(text_model)
    texts = ["The cat sat on the mat.", "Dogs bark.", "The cat sat on the mat."]
    emb = rt.embed(texts, batch_size=2)
    assert emb.shape == (3, EMB)
    cos = cosine_matrix(emb)
    assert abs(cos[0, 2] - 1.0) < 1e-6 and cos[0, 1] < 0.999
    out = rt.run_text(texts[:2])
    _assert_close(out["sentence_embedding"], emb[:2], atol=1e-6)
    assert "token_type_ids" not in rt.encode(texts)  # only the model's own inputs


def test_mean_pool_reference():
    h = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    m = np.array([[1, 1, 0], [1, 0, 0]])
    _assert_close(mean_pool(h, m), [[1.0, 2.0], [6.0, 7.0]])


def test_read_text_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text('first line\n\n{"text": "json text"}\n"a json string"\n{not json}\n')
    assert read_text_file(p) == ["first line", "json text", "a json string", "{not json}"]
    p.write_text('{"txt": 1}\n')
    with pytest.raises(InvalidInputError, match="no string 'text'"):
        read_text_file(p)
    p.write_text("\n\n")
    with pytest.raises(InvalidInputError, match="holds no text"):
        read_text_file(p)


# ---------------------------------------------------------------------- comparison
def test_compare_arrays_metrics_against_hand_computed():
    tol = TOLERANCES["float32"]
    exp = np.array([[1.0, -2.0, 0.5], [0.0, 4.0, 3.0]], np.float32)
    got = exp.copy()
    got[1, 2] += 0.01  # one clear mismatch: |d| = 0.01 > 1e-4 + 1e-3 * 3
    got[0, 0] += 5e-5  # within tolerance
    r = compare_arrays(got, exp, tol)
    assert r["worst"]["index"] == [1, 2]
    assert abs(r["worst"]["got"] - 3.01) < 1e-6 and r["worst"]["expected"] == 3.0
    assert abs(r["max_abs_err"] - 0.01) < 1e-6
    assert abs(r["max_rel_err"] - 0.01 / 3.0) < 1e-6
    assert r["mismatch_fraction"] == pytest.approx(1 / 6)
    assert not r["passed"]
    same = compare_arrays(exp, exp, tol)
    assert (
        same["passed"] and same["max_abs_err"] == 0.0 and same["cosine_min"] == pytest.approx(1.0)
    )
    nan = exp.copy()
    nan[0, 1] = np.nan
    r = compare_arrays(nan, exp, tol)
    assert not r["passed"] and r["worst"]["index"] == [0, 1]
    assert not compare_arrays(exp[:1], exp, tol)["passed"]
    assert tolerance_for("float16") is TOLERANCES["float16"]


def test_embedding_cosine_gate():
    tol = TOLERANCES["float16"]
    exp = np.ones((2, 4), np.float32)
    got = exp.copy()
    got[1] = [1.0, 1.0, 1.0, -1.0]  # big change in one row
    r = compare_arrays(got, exp, tol)
    assert r["embedding"] and r["cosine_min"] == pytest.approx(0.5) and not r["passed"]


def test_check_model_passes_and_detects_a_wrong_reference(text_model, float_model, monkeypatch):
    report, feeds, got, exp = check_model(text_model)
    assert (
        report["passed"] and report["backend"] == "onnxruntime" and report["reference"] == "torch"
    )
    for name in ("last_hidden_state", "sentence_embedding"):
        m = report["outputs"][name]
        for key in (
            "max_abs_err",
            "max_rel_err",
            "mismatch_fraction",
            "tolerance",
            "passed",
            "worst",
        ):
            assert key in m
        # independent measurement of the same numbers
        d = np.abs(got[name].astype(np.float64) - exp[name].astype(np.float64))
        assert m["max_abs_err"] == pytest.approx(float(d.max()), abs=1e-12)
    assert report["inputs"]["input_ids"][0] == 5
    report, *_ = check_model(float_model)
    assert report["passed"] and report["inputs"]["x"] == [2, 13, 4]
    # a reference that disagrees must fail the check
    orig = _ToyTorch.__init__

    def biased(self, cfg):
        orig(self, cfg)
        self.bias = 0.5

    monkeypatch.setattr(_ToyTorch, "__init__", biased)
    report, *_ = check_model(float_model)
    assert not report["passed"]
    assert report["outputs"]["output"]["max_abs_err"] == pytest.approx(0.5, rel=1e-5)


def test_concurrent_small_smoke(text_model):
    rt = Runtime(text_model)
    feeds = _ids(2, 9)
    expected = rt.run(feeds)["sentence_embedding"]
    errors = []

    def work():
        try:
            for _ in range(5):
                np.testing.assert_array_equal(rt.run(feeds)["sentence_embedding"], expected)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_tensorrt_engine_detected_by_sidecar(tmp_path, text_model):
    """A TensorRT engine (bytes + ``<engine>.json`` sidecar from sparse_attn.engines) is
    recognised by content; without TensorRT it is refused with exit code 1, and its torch
    reference still runs from the sidecar's metadata."""
    from sparse_attn.errors import UnsupportedEnvironmentError
    from sparse_attn.runtime import read_metadata

    meta = {m.key: m.value for m in onnx.load(str(text_model)).metadata_props}
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00\x01 not really an engine")
    (tmp_path / "model.engine.json").write_text(
        json.dumps({"format": "sparse-attn-engine/1", "backend": "tensorrt", "metadata": meta})
    )
    assert detect_kind(engine) == "tensorrt"
    assert read_metadata(engine) == meta
    with pytest.raises(InvalidInputError, match="is a TensorRT engine"):
        Runtime(engine, backend="onnxruntime")
    from sparse_attn.engines import tensorrt_unavailable_reason

    if tensorrt_unavailable_reason() is not None:
        with pytest.raises(UnsupportedEnvironmentError) as info:
            Runtime(engine)
        assert info.value.exit_code == 1
    ref = Runtime(engine, backend="torch").run(_ids(1, 4))
    exp = Runtime(text_model).run(_ids(1, 4))
    _assert_close(ref["sentence_embedding"], exp["sentence_embedding"], atol=1e-5)


def test_onnxruntime_session_options_are_applied(tmp_path):
    """intra_op_threads / allow_spinning reach the ONNX Runtime session options."""
    import onnx
    from onnx import TensorProto, helper

    from sparse_attn.runtime.onnxruntime_backend import OnnxRuntimeBackend

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "id.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    seen = {}
    import onnxruntime as ort

    real = ort.InferenceSession

    def spy(p, opts, providers=None):
        seen["threads"] = opts.intra_op_num_threads
        seen["spin"] = opts.get_session_config_entry("session.intra_op.allow_spinning")
        return real(p, opts, providers=providers)

    ort.InferenceSession = spy
    try:
        OnnxRuntimeBackend(path, intra_op_threads=1, allow_spinning=False)
    finally:
        ort.InferenceSession = real
    assert seen == {"threads": 1, "spin": "0"}
