"""``sparse-attn triton-repo``: config.pbtxt parsed into Triton's ModelConfig; PyTriton smoke.

ONNX models, a TensorRT engine (a synthetic engine file with the sidecar the engines part
writes: no engine can be built here) and the python-backend variant. The python-backend
variant is served by the Triton server that PyTriton bundles, when its separate environment
(``.venv-pytriton``, made by ``make install``; PyTriton pins numpy < 2) exists.
"""

from __future__ import annotations

import json
import os
import py_compile
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed")

from test_serving import (  # noqa: E402
    S_MAX,
    D,
    H,
    assert_close,
    export_attention_model,
    qkv,
)

import sparse_attn  # noqa: E402
from sparse_attn import opspec  # noqa: E402
from sparse_attn.errors import InvalidInputError  # noqa: E402
from sparse_attn.runtime.runtime import detect_kind  # noqa: E402
from sparse_attn.serving.triton_repo import (  # noqa: E402
    ModelDescription,
    model_config_dict,
    parse_pbtxt,
    to_pbtxt,
    write_repository,
)

REPO = Path(__file__).resolve().parents[1]
TYPE = {"TYPE_FP32": 11, "TYPE_BOOL": 1, "TYPE_INT64": 9}


@pytest.fixture(scope="module")
def att_path(tmp_path_factory) -> Path:
    return export_attention_model(tmp_path_factory.mktemp("triton") / "att.onnx")


def _inputs(cfg) -> dict:
    return {i.name: (i.data_type, list(i.dims)) for i in cfg.input}


def test_onnx_repository_parses_with_dims_dtypes_batching(att_path, tmp_path):
    repo = tmp_path / "repo"
    (written,) = write_repository(
        att_path, repo, max_batch_size=16, max_delay_ms=2.5, max_queue=7, instances=2
    )
    assert written == repo / "att" / "config.pbtxt"
    cfg = parse_pbtxt(written.read_text())
    assert cfg.name == "att" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 16
    assert _inputs(cfg) == {
        "query": (TYPE["TYPE_FP32"], [H, -1, D]),
        "key": (TYPE["TYPE_FP32"], [H, -1, D]),
        "value": (TYPE["TYPE_FP32"], [H, -1, D]),
        "key_padding_mask": (TYPE["TYPE_BOOL"], [-1]),
    }
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
        ("output", TYPE["TYPE_FP32"], [H, -1, D])
    ]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2500
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size == 7
    assert cfg.instance_group[0].count == 2 and cfg.instance_group[0].kind == 2  # KIND_CPU
    assert cfg.parameters["sparse_attn.max_seq_len"].string_value == str(S_MAX)
    assert (repo / "att" / "1" / "model.onnx").read_bytes() == att_path.read_bytes()
    # an existing model folder is kept unless --force
    with pytest.raises(InvalidInputError, match="already exists"):
        write_repository(att_path, repo)
    write_repository(att_path, repo, force=True, name="att")
    # the model file is never overwritten, even when it sits in the target folder
    inside = repo / "att" / "1" / "model.onnx"
    with pytest.raises(InvalidInputError, match="would be replaced"):
        write_repository(inside, repo, name="att", force=True)


def test_text_model_and_static_dims(tmp_path):
    from test_runtime import build_toy_text_model

    path = tmp_path / "toy.onnx"
    build_toy_text_model(path, max_len=40)
    (written,) = write_repository(path, tmp_path / "r", name="toy-text")
    cfg = parse_pbtxt(written.read_text())
    assert _inputs(cfg) == {
        "input_ids": (TYPE["TYPE_INT64"], [-1]),
        "attention_mask": (TYPE["TYPE_INT64"], [-1]),
    }
    assert {o.name: list(o.dims) for o in cfg.output} == {
        "last_hidden_state": [-1, 8],
        "sentence_embedding": [8],
    }
    # a static sequence length is a fixed dim; a model without a batch dim gets max_batch_size 0
    from sparse_attn.runtime.validation import TensorSpec

    class Static:
        inputs = [TensorSpec("input_ids", np.dtype(np.int64), ("batch", 128))]
        outputs = [TensorSpec("y", np.dtype(np.float32), ("batch", 128, 4))]
        metadata = {"sparse_attn.static_seq_len": "true"}

    class Unbatched:
        inputs = [TensorSpec("x", np.dtype(np.float16), (3, "seq_len"))]
        outputs = [TensorSpec("y", np.dtype(np.float16), (3, "seq_len"))]
        metadata = {}

    s = parse_pbtxt(to_pbtxt(model_config_dict(Static(), "s")))
    assert list(s.input[0].dims) == [128] and list(s.output[0].dims) == [128, 4]
    u = parse_pbtxt(to_pbtxt(model_config_dict(Unbatched(), "u")))
    assert u.max_batch_size == 0 and list(u.input[0].dims) == [3, -1]
    assert not u.HasField("dynamic_batching")
    with pytest.raises(InvalidInputError, match="kind"):
        model_config_dict(Static(), "s", kind="tflite")


def _synthetic_engine(att_path: Path, out: Path, implementation: str = "aot") -> Path:
    """An engine-like file + the sidecar ``sparse_attn.engines.build_engine`` writes."""
    from sparse_attn.engines import SIDECAR_FORMAT, sidecar_path
    from sparse_attn.plugins import tensorrt_plugin

    meta = sparse_attn.runtime.read_metadata(att_path)
    out.write_bytes(b"\x00" * 8 + b"ftrt" + bytes(range(200)))  # not a real engine
    sidecar = {
        "format": SIDECAR_FORMAT,
        "backend": "tensorrt",
        "engine": str(out),
        "source_model": str(att_path),
        "tensorrt_version": "10.13.0",
        "gpu": "NVIDIA H200",
        "compute_capability": "9.0",
        "plugin": {**tensorrt_plugin.describe(), "implementation": implementation},
        "plugin_layers": 1,
        "profiles": [
            {"query": {"min": [1, H, 1, D], "opt": [1, H, 32, D], "max": [8, H, S_MAX, D]}}
        ],
        "metadata": meta,
    }
    sidecar_path(out).write_text(json.dumps(sidecar))
    return out


@pytest.mark.parametrize("implementation", ["aot", "jit"])
def test_tensorrt_engine_gives_a_tensorrt_plan_with_plugin_requirements(
    att_path, tmp_path, implementation
):
    engine = _synthetic_engine(att_path, tmp_path / "att.engine", implementation)
    assert detect_kind(engine) == "tensorrt"
    (written,) = write_repository(engine, tmp_path / "repo", name="att_trt")
    text = written.read_text()
    cfg = parse_pbtxt(text)
    assert cfg.platform == "tensorrt_plan" and cfg.backend == "tensorrt"
    assert cfg.default_model_filename == "model.plan"
    assert cfg.instance_group[0].kind == 1  # KIND_GPU
    assert _inputs(cfg)["query"] == (TYPE["TYPE_FP32"], [H, -1, D])
    p = {k: v.string_value for k, v in cfg.parameters.items()}
    assert p["sparse_attn.plugin"] == f"{opspec.PLUGIN_NAMESPACE}::{opspec.OP_TYPE}"
    assert p["sparse_attn.plugin_version"] == opspec.PLUGIN_VERSION
    assert p["sparse_attn.plugin_implementation"] == implementation
    assert p["sparse_attn.tensorrt_version"] == "10.13.0"
    assert p["sparse_attn.compute_capability"] == "9.0"
    assert f"{opspec.PLUGIN_NAMESPACE}::{opspec.OP_TYPE} version 1" in text  # the comment
    assert ("embedded in the engine" in text) == (implementation == "aot")
    plan = tmp_path / "repo" / "att_trt" / "1" / "model.plan"
    assert plan.read_bytes() == engine.read_bytes()
    with pytest.raises(InvalidInputError, match="python-backend variant wraps an .onnx"):
        write_repository(engine, tmp_path / "repo2", python_backend=True)


def test_python_backend_variant_and_cli(att_path, tmp_path, capsys):
    from sparse_attn.cli import main

    repo = tmp_path / "repo"
    assert main(["triton-repo", str(att_path), "-o", str(repo), "--python-backend"]) == 0
    out = capsys.readouterr().out
    assert "att/config.pbtxt" in out and "att_python/1/model.py" in out
    cfg = parse_pbtxt((repo / "att_python" / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.max_batch_size == 8
    optional = {i.name: i.optional for i in cfg.input}
    assert optional == {"query": False, "key": False, "value": False, "key_padding_mask": True}
    py_compile.compile(str(repo / "att_python" / "1" / "model.py"), doraise=True)
    # bad input: exit 2, nothing overwritten
    assert main(["triton-repo", str(att_path), "-o", str(repo)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["triton-repo", str(tmp_path / "nope.onnx"), "-o", str(repo)]) == 2
    assert main(["triton-repo", str(att_path), "-o", str(repo), "--name", "a b"]) == 2
    desc = ModelDescription(att_path)
    assert desc.kind == "onnx" and [s.name for s in desc.outputs] == ["output"]


# ---------------------------------------------------------------------------- PyTriton
def _pytriton_python() -> Path | None:
    env = os.environ.get("SPARSE_ATTN_PYTRITON_PYTHON")
    cand = Path(env) if env else REPO / ".venv-pytriton" / "bin" / "python"
    return cand if cand.exists() else None


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@pytest.mark.skipif(
    _pytriton_python() is None,
    reason="no PyTriton environment (.venv-pytriton, built by `make install`; or set "
    "SPARSE_ATTN_PYTRITON_PYTHON): PyTriton pins numpy<2, so it lives in its own venv",
)
def test_python_backend_runs_under_pytriton_triton(att_path, tmp_path):
    th = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    repo = tmp_path / "repo"
    write_repository(att_path, repo, python_backend=True, max_delay_ms=20)
    http_port, grpc_port = _free_ports(2)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env["OMP_NUM_THREADS"] = "1"
    log = tmp_path / "triton.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                str(_pytriton_python()),
                "-m",
                "sparse_attn.serving.pytriton_app",
                str(repo),
                "--model",
                "att_python",
                "--http-port",
                str(http_port),
                "--grpc-port",
                str(grpc_port),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    client = th.InferenceServerClient(f"127.0.0.1:{http_port}")
    rt = sparse_attn.Runtime(att_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.is_model_ready("att_python"):
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        for seed, s, b in ((1, 23, 2), (2, 1, 1), (3, S_MAX, 3)):
            f = qkv(seed, s, b=b, pad_from=max(1, s - 2))
            inputs = []
            for k, v in f.items():
                t = th.InferInput(k, list(v.shape), "FP32" if v.dtype == np.float32 else "BOOL")
                t.set_data_from_numpy(v)
                inputs.append(t)
            got = client.infer("att_python", inputs).as_numpy("output")
            assert_close(got, rt.run(f)["output"], f"pytriton S={s}")
        # the key padding mask is optional, as in the Runtime
        f = qkv(4, 9)
        inputs = []
        for k, v in f.items():
            t = th.InferInput(k, list(v.shape), "FP32")
            t.set_data_from_numpy(v)
            inputs.append(t)
        assert_close(client.infer("att_python", inputs).as_numpy("output"), rt.run(f)["output"])
        # the runtime's refusal reaches the client
        bad = qkv(5, S_MAX + 3)
        inputs = []
        for k, v in bad.items():
            t = th.InferInput(k, list(v.shape), "FP32")
            t.set_data_from_numpy(v)
            inputs.append(t)
        with pytest.raises(InferenceServerException, match="exceeds the model's max_seq_len"):
            client.infer("att_python", inputs)
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert sys.executable  # the main environment stays numpy >= 2
