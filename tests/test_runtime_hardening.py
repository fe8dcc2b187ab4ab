"""Runtime, engines and `run`/`check` files: what a file is, external data, token ids,
surrogates, TensorRT plugin attributes, empty inputs, outputs never over inputs."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_runtime import (  # noqa: F401  (toy_family is an autouse fixture)
    VOCAB,
    build_toy_float_model,
    build_toy_text_model,
    toy_family,
)

from sparse_attn.cli import main
from sparse_attn.errors import InvalidInputError
from sparse_attn.runtime import Runtime, detect_kind


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("hard")
    return build_toy_text_model(d / "text.onnx"), build_toy_float_model(d / "float.onnx")


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_sidecar_does_not_override_a_valid_onnx_file(models, tmp_path):
    text, _ = models
    model = tmp_path / "x.onnx"
    model.write_bytes(text.read_bytes())
    (tmp_path / "x.onnx.json").write_text("{not json")
    assert detect_kind(model) == "onnx"
    Runtime(model).run({"input_ids": np.array([[101, 102]])})
    (tmp_path / "x.onnx.json").write_text(json.dumps({"backend": "tensorrt"}))
    assert detect_kind(model) == "onnx"


def _with_external(tmp_path, location: str, create: bool = True):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = numpy_helper.from_array(arr, "w")
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    for k, v in (("location", location), ("offset", "0"), ("length", str(arr.nbytes))):
        t.external_data.add(key=k, value=v)
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [t],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    path = d / "m.onnx"
    onnx.save(m, str(path))
    if create:
        target = (d / location).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(arr.tobytes())
    return path


@pytest.mark.parametrize(
    "location,create,message",
    [
        ("../secret.bin", True, "outside the model's directory"),
        ("/etc/hostname", False, "outside the model's directory"),
        ("missing.bin", False, "is missing"),
    ],
)
def test_external_data_must_stay_in_the_model_directory(tmp_path, location, create, message):
    path = _with_external(tmp_path, location, create)
    with pytest.raises(InvalidInputError, match=message):
        Runtime(path)


def test_external_data_next_to_the_model_loads(tmp_path):
    path = _with_external(tmp_path, "weights.bin")
    out = Runtime(path).run({"x": np.ones((2, 3), np.float32)})["y"]
    assert np.array_equal(out, np.arange(6, dtype=np.float32).reshape(2, 3) + 1)


def test_token_ids_are_range_checked_even_without_metadata(models, tmp_path):
    text, _ = models
    m = onnx.load(str(text))
    props = {p.key: p.value for p in m.metadata_props}
    cfg = json.loads(props["sparse_attn.model_config"])
    del cfg["vocab_size"]
    props["sparse_attn.model_config"] = json.dumps(cfg)
    del m.metadata_props[:]
    helper.set_model_props(m, props)
    path = tmp_path / "novocab.onnx"
    onnx.save(m, str(path))
    rt = Runtime(path)
    assert rt.info.vocab_size == VOCAB  # read from the embedding table of the graph
    for bad in (-1, VOCAB, 10**12):
        with pytest.raises(InvalidInputError, match="outside"):
            rt.run({"input_ids": np.array([[101, bad, 102]])})


def test_vocab_size_key_in_metadata_wins():
    from sparse_attn.runtime.validation import ModelInfo

    assert ModelInfo.from_metadata({"sparse_attn.vocab_size": "17"}).vocab_size == 17
    with pytest.raises(InvalidInputError):
        ModelInfo.from_metadata({"sparse_attn.vocab_size": "many"})


def test_lone_surrogates_are_bad_input(models):
    text, _ = models
    rt = Runtime(text)
    for bad in (["\ud800"], ["ok", "x\udfffy"]):
        with pytest.raises(InvalidInputError, match="lone surrogate"):
            rt.embed(bad)


def test_prepare_for_tensorrt_refuses_foreign_plugin_attributes():
    from sparse_attn import opspec
    from sparse_attn.engines.trt_engine import prepare_onnx_for_tensorrt

    for key, value in (("plugin_version", "2"), ("plugin_namespace", "other")):
        names = ["q", "k", "v", "rp", "ci", "mi", "mk"]
        node = helper.make_node(
            opspec.OP_TYPE, names, ["o"], domain=opspec.DOMAIN, block_size=16, **{key: value}
        )
        g = helper.make_graph([node], "g", [], [])
        m = helper.make_model(g)
        with pytest.raises(InvalidInputError, match=f"{key}='{value}'") as ei:
            prepare_onnx_for_tensorrt(m)
        assert "sparse-attn plugin is" in str(ei.value)


def test_tensorrt_adapter_does_not_lock_twice():
    from sparse_attn.runtime import runtime

    class Session:
        input_names, output_names = ["x"], ["y"]
        metadata = {"sparse_attn.inputs": json.dumps([{"name": "x", "dtype": "float32",
                                                        "shape": ["batch", 4]}])}  # fmt: skip

        def __init__(self):
            self._lock = threading.Lock()

        def run(self, feeds):
            with self._lock:
                return {"y": feeds["x"]}

    adapter = runtime._TensorRTAdapter.__new__(runtime._TensorRTAdapter)
    adapter.session = Session()
    assert not hasattr(runtime._TensorRTAdapter, "_lock")
    assert adapter.run({"x": np.ones(4)})["y"].shape == (4,)


def test_tensorrt_is_decided_in_one_place():
    import inspect

    from sparse_attn.engines import trt_engine
    from sparse_attn.plugins import tensorrt_plugin
    from sparse_attn.runtime import tensorrt_backend

    for mod in (trt_engine, tensorrt_backend, tensorrt_plugin):
        src = inspect.getsource(mod)
        assert "import_tensorrt(" in src, mod.__name__
        assert not re.search(r"import tensorrt\b(?!_)", src), mod.__name__


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_run_empty_input_files_exit_2(models, capsys, tmp_path, content):
    text, flt = models
    for name, model in (("in.txt", text), ("in.npz", flt), ("in.npz", text)):
        f = tmp_path / name
        f.write_bytes(content)
        code, out, err = _run(capsys, "run", model, "--input-file", f)
        assert code == 2, (name, err)
        assert err.startswith("sparse-attn: error:") and len(err.strip().splitlines()) == 1


def test_run_npz_on_a_text_model_gives_the_summary_and_json(models, capsys, tmp_path):
    text, _ = models
    f = tmp_path / "ids.npz"
    np.savez(f, input_ids=np.array([[101, 2000, 102]]))
    code, out, err = _run(capsys, "run", text, "--input-file", f, "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["outputs"]["sentence_embedding"]["shape"] == [1, 8] and rep["family"]
    code, out, err = _run(capsys, "run", text, "--input-file", f)
    assert code == 0 and "sentence_embedding: float32 [1, 8]" in out and "pattern" in out


def test_run_writes_outputs_with_o_and_never_over_an_input(models, capsys, tmp_path):
    text, flt = models
    o = tmp_path / "out.npz"
    code, out, err = _run(capsys, "run", text, "--text", "a b", "--text", "c", "-o", o)
    assert code == 0, err
    with np.load(o) as z:
        assert z["embeddings"].shape == (2, 8) and z["cosine"].shape == (2, 2)
    f = tmp_path / "x.npz"
    np.savez(f, x=np.ones((1, 3, 4), np.float32))
    for target in (f, flt):
        before = target.read_bytes()
        code, out, err = _run(capsys, "run", flt, "--input-file", f, "-o", target)
        assert code == 2 and target.read_bytes() == before, err
    code, out, err = _run(capsys, "run", flt, "--input-file", f, "-o", tmp_path / "y.txt")
    assert code == 2 and ".npz" in err


def test_cosine_table_fits_80_columns(models, capsys):
    text, _ = models
    texts = [f"text number {i} " * 3 for i in range(12)]
    args = ["run", text]
    for t in texts:
        args += ["--text", t]
    code, out, err = _run(capsys, *args)
    assert code == 0, err
    table = out[out.index("embeddings\n") :]  # the tables; the model line holds a long path
    assert max(len(line) for line in table.splitlines()) <= 80, out


def test_check_save_outputs_never_overwrites_the_model(models, capsys, tmp_path):
    _, flt = models
    model = tmp_path / "m.onnx"
    model.write_bytes(flt.read_bytes())
    for target in (model, tmp_path / "golden.onnx"):
        code, out, err = _run(capsys, "check", model, "--save-outputs", target)
        assert code == 2, err
    assert model.read_bytes() == flt.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
