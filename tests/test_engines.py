"""``sparse-attn engine`` and the engines package; the runtime's TensorRT session; gpu_check.

Runs here: the ONNX Runtime backend end to end on a small one-node model (metadata kept, same
outputs as the source model and as the float64 reference), the CLI's exit codes, the pure-ONNX
preparation for TensorRT's parser, the optimisation profile, and the "no TensorRT / no GPU"
paths. Building or running a real TensorRT engine needs TensorRT and a GPU: those tests skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from testing import assert_close, band_mask, causal_mask, global_mask, layout_from_masks

from sparse_attn import opspec
from sparse_attn.cli import main
from sparse_attn.engines import build_engine, read_sidecar, tensorrt_unavailable_reason
from sparse_attn.engines.trt_engine import optimization_profile, prepare_onnx_for_tensorrt
from sparse_attn.errors import InvalidInputError, UnsupportedEnvironmentError

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
onnx = pytest.importorskip("onnx", reason="onnx is not installed")

REPO = Path(__file__).resolve().parents[1]
S_MAX, BS, H, D = 48, 16, 2, 16
NO_TRT = tensorrt_unavailable_reason()


def _layout():
    return layout_from_masks(
        np.stack([band_mask(S_MAX, 5) | global_mask(S_MAX, 2), causal_mask(S_MAX)]), BS
    )


def _model(path: Path, key_padding_mask: bool = True, static: bool = False) -> Path:
    from sparse_attn.export.function_body import make_node_model

    layout = _layout()
    m = make_node_model(layout, head_dim=D, key_padding_mask=key_padding_mask)
    meta = {
        "sparse_attn.model": "attention",
        "sparse_attn.max_seq_len": str(S_MAX),
        "sparse_attn.static_seq_len": "true" if static else "false",
        "sparse_attn.block_size": str(BS),
        "sparse_attn.layout_hash": layout.layout_hash(),
        "sparse_attn.num_heads": str(H),
    }
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save_model(m, str(path))
    return path


def _feeds(b=2, s=37, seed=0):
    g = np.random.default_rng(seed)
    f = {n: g.standard_normal((b, H, s, D)).astype(np.float32) for n in ("query", "key", "value")}
    kpm = np.ones((b, s), dtype=bool)
    kpm[1, 30:] = False
    f["key_padding_mask"] = kpm
    return f


def test_onnxruntime_engine_keeps_metadata_and_outputs(tmp_path):
    src = _model(tmp_path / "m.onnx")
    out = tmp_path / "eng" / "m.opt.onnx"
    info = build_engine(src, out, backend="onnxruntime")
    assert out.is_file() and (tmp_path / "eng" / "m.opt.onnx.json").is_file()
    side = read_sidecar(out)
    assert side == json.loads(json.dumps(info))
    assert side["backend"] == "onnxruntime" and side["layout_hash"] == _layout().layout_hash()
    src_meta = {p.key: p.value for p in onnx.load_model(str(src)).metadata_props}
    got_meta = {p.key: p.value for p in onnx.load_model(str(out)).metadata_props}
    assert got_meta == src_meta
    feeds = _feeds()
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert_close(b, a, atol=1e-6, rtol=1e-6, name="optimised vs source")
    from sparse_attn.kernels.reference import reference_attention

    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    ref = reference_attention(
        t["query"].double(), t["key"].double(), t["value"].double(), _layout(),
        t["key_padding_mask"],
    )  # fmt: skip
    assert_close(b, ref, name="optimised vs float64 reference", dtype=torch.float32)


def test_cli_engine_onnxruntime_and_auto(tmp_path, capsys):
    src = _model(tmp_path / "m.onnx")
    assert (
        main(["engine", str(src), "--backend", "onnxruntime", "-o", str(tmp_path / "o1.onnx")]) == 0
    )
    assert "wrote" in capsys.readouterr().out
    if NO_TRT:
        assert main(["engine", str(src), "-o", str(tmp_path / "o2.onnx")]) == 0
        assert read_sidecar(tmp_path / "o2.onnx")["backend"] == "onnxruntime"


@pytest.mark.skipif(NO_TRT is None, reason="TensorRT and a GPU are present")
def test_cli_engine_tensorrt_without_tensorrt_exits_1(tmp_path, capsys):
    src = _model(tmp_path / "m.onnx")
    code = main(["engine", str(src), "--backend", "tensorrt", "-o", str(tmp_path / "e.engine")])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "TensorRT" in err, err
    assert not (tmp_path / "e.engine").exists()


def test_cli_engine_bad_input_exits_2(tmp_path, capsys):
    src = _model(tmp_path / "m.onnx")
    assert main(["engine", str(src), "--backend", "onnxruntime", "-o", str(src)]) == 2
    assert main(["engine", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert main(["engine", str(src), "--backend", "onnxruntime", "-o", str(tmp_path / "x")]) == 2
    capsys.readouterr()


def test_prepare_for_tensorrt_adds_mask_aot_and_int32_table(tmp_path):
    src = onnx.load_model(str(_model(tmp_path / "m.onnx", key_padding_mask=False)))
    prep, n = prepare_onnx_for_tensorrt(src)
    assert n == 1
    node = next(x for x in prep.graph.node if x.op_type == opspec.OP_TYPE)
    assert len(node.input) == len(opspec.INPUT_NAMES)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["aot"] == 1
    assert attrs["plugin_namespace"] in (opspec.PLUGIN_NAMESPACE, opspec.PLUGIN_NAMESPACE.encode())
    inits = {t.name: t for t in prep.graph.initializer}
    masks = inits[node.input[opspec.INPUT_NAMES.index("masks")]]
    assert masks.data_type == onnx.TensorProto.INT32
    orig = onnx.numpy_helper.to_array(
        next(t for t in src.graph.initializer if t.name == "masks")
    ).astype(np.int32)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(masks), orig)
    # the added all-true [B, S] mask, run on its own with ONNX Runtime
    helpers = [x for x in prep.graph.node if x.name.startswith("_sparse_attn_trt_kpm_")]
    kpm_name = node.input[-1]
    g = onnx.helper.make_graph(
        helpers,
        "kpm",
        [onnx.helper.make_tensor_value_info("query", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info(kpm_name, onnx.TensorProto.BOOL, None)],
        initializer=[t for t in prep.graph.initializer if t.name.startswith("_sparse_attn")],
    )
    sub = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 20)])
    sub.ir_version = 10
    q = np.zeros((3, H, 21, D), np.float32)
    (kpm,) = ort.InferenceSession(sub.SerializeToString()).run(None, {"query": q})
    assert kpm.shape == (3, 21) and kpm.dtype == bool and kpm.all()
    # a model that already has the mask keeps its inputs
    prep2, _ = prepare_onnx_for_tensorrt(onnx.load_model(str(_model(tmp_path / "k.onnx"))))
    node2 = next(x for x in prep2.graph.node if x.op_type == opspec.OP_TYPE)
    assert node2.input[-1] == "key_padding_mask"


def test_prepare_refuses_model_without_our_node():
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    with pytest.raises(InvalidInputError, match="BlockSparseAttention"):
        prepare_onnx_for_tensorrt(onnx.helper.make_model(g))


def test_optimization_profile(tmp_path):
    m = onnx.load_model(str(_model(tmp_path / "m.onnx")))
    meta = {p.key: p.value for p in m.metadata_props}
    prof = optimization_profile(m, meta, batch=(1, 2, 8))
    assert prof["query"] == {"min": [1, H, 1, D], "opt": [2, H, 24, D], "max": [8, H, S_MAX, D]}
    assert prof["key_padding_mask"]["max"] == [8, S_MAX]
    assert set(prof) == {"query", "key", "value", "key_padding_mask"}
    static = optimization_profile(m, {**meta, "sparse_attn.static_seq_len": "true"})
    assert static["value"]["min"][2] == static["value"]["max"][2] == S_MAX
    with pytest.raises(InvalidInputError, match="max_seq_len"):
        optimization_profile(m, {})
    with pytest.raises(InvalidInputError, match="batch"):
        optimization_profile(m, meta, batch=(2, 1, 8))


@pytest.mark.skipif(NO_TRT is None, reason="TensorRT and a GPU are present")
def test_tensorrt_session_without_tensorrt_raises(tmp_path):
    from sparse_attn.runtime.tensorrt_backend import TensorRTSession

    with pytest.raises(UnsupportedEnvironmentError, match="TensorRT"):
        TensorRTSession(str(tmp_path / "x.engine"))


@pytest.mark.tensorrt
@pytest.mark.skipif(NO_TRT is not None, reason=f"needs TensorRT and a GPU ({NO_TRT})")
def test_real_tensorrt_engine_matches_reference(tmp_path):
    from sparse_attn.kernels.reference import reference_attention
    from sparse_attn.runtime.tensorrt_backend import TensorRTSession

    src = _model(tmp_path / "m.onnx")
    info = build_engine(src, tmp_path / "m.engine", backend="tensorrt")
    assert info["plugin_layers"] >= 1
    sess = TensorRTSession(str(tmp_path / "m.engine"))
    feeds = _feeds()
    out = sess.run(feeds)["output"]
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    ref = reference_attention(
        t["query"].double(), t["key"].double(), t["value"].double(), _layout(),
        t["key_padding_mask"],
    )  # fmt: skip
    assert_close(out, ref, name="tensorrt vs float64 reference", dtype=torch.float32)


def test_gpu_check_without_cuda_exits_1_with_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: gpu_check would really run")
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the repo: the script must find the package itself
    )
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0], res.stderr


def test_gpu_check_self_test_on_cpu(tmp_path):
    """The prepared GPU check's own code paths, on CPU under the interpreter (tiny sizes)."""
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--self-test", "--out",
         str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    runs = report["correctness"]
    assert len(runs) >= 5 and all(r["passed"] for r in runs), [r for r in runs if not r["passed"]]
    grouped = [r for r in runs if r["hkv"] != r["h"]] if all("hkv" in r for r in runs) else []
    assert grouped and any(max(r["d"], r["dv"]) == 256 for r in runs)  # GQA and D = 256 covered
    assert report["timings"][0]["triton_ms"] > 0


def test_onnxruntime_engine_restores_metadata_the_optimiser_lost(tmp_path, monkeypatch):
    src = _model(tmp_path / "m.onnx")
    src_props = [(p.key, p.value) for p in onnx.load_model(str(src)).metadata_props]
    real = ort.InferenceSession

    def lossy(path, sess_options=None, **kwargs):
        sess = real(path, sess_options=sess_options, **kwargs)
        opt = sess_options.optimized_model_filepath
        m = onnx.load_model(opt)
        props = {p.key: p for p in m.metadata_props}
        props[src_props[0][0]].value = "stale"
        m.metadata_props.remove(props[src_props[-1][0]])
        onnx.save_model(m, opt)
        return sess

    monkeypatch.setattr(ort, "InferenceSession", lossy)
    out = tmp_path / "m.opt.onnx"
    info = build_engine(src, out, backend="onnxruntime")
    assert info["metadata_readded"] == sorted([src_props[0][0], src_props[-1][0]])
    got = [(p.key, p.value) for p in onnx.load_model(str(out)).metadata_props]
    assert dict(got) == dict(src_props) and len(got) == len(src_props)
    assert got[-1][0] == src_props[-1][0]  # the lost key is appended
