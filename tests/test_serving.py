"""``sparse-attn serve``: v2 protocol, dynamic batching, back-pressure, limits, shutdown.

Every server listens on 127.0.0.1 only; request loops are bounded in count and time. The
model is a small model of the op (its node and ONNX function body, with a key padding mask
and dynamic S), plus the toy text model of ``test_runtime`` for ``/v1/embeddings``.
"""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serving extra (fastapi, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the serving extra (fastapi, uvicorn) is not installed")

import sparse_attn  # noqa: E402
from sparse_attn.errors import InvalidInputError  # noqa: E402
from sparse_attn.runtime.compare import tolerance_for  # noqa: E402
from sparse_attn.serving import (  # noqa: E402
    BatchPolicy,
    ServerThread,
    create_app,
    protocol,  # noqa: E402
)
from sparse_attn.serving.batching import BatchPlan, run_merged  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
H, D, S_MAX, BLOCK = 2, 8, 64, 16
PATTERN = "band(w=8) | global(n=2)"
TOL = tolerance_for("float32")


# ---------------------------------------------------------------------------- models
def export_attention_model(path: Path) -> Path:
    """A small model of the op: H=2, D=8, S dynamic up to 64, block 16, key padding mask.

    The ``BlockSparseAttention`` node with its ONNX function body and the metadata an export
    writes (built directly: a torch export of the same op takes 5-20 s here).
    """
    import onnx

    from sparse_attn.export.function_body import make_node_model

    layout = sparse_attn.compile_layout(PATTERN, seq_len=S_MAX, block_size=BLOCK, num_heads=H)
    model = make_node_model(layout, head_dim=D)
    meta = {
        "sparse_attn.model": "attention",
        "sparse_attn.pattern": PATTERN,
        "sparse_attn.max_seq_len": str(S_MAX),
        "sparse_attn.static_seq_len": "false",
        "sparse_attn.block_size": str(BLOCK),
        "sparse_attn.num_heads": str(H),
        "sparse_attn.head_dim": str(D),
        "sparse_attn.dtype": "float32",
        "sparse_attn.layout_hash": layout.layout_hash(),
    }
    qkv_shape = ["batch", H, "seq_len", D]
    meta["sparse_attn.inputs"] = json.dumps(
        [{"name": n, "dtype": "float32", "shape": qkv_shape} for n in ("query", "key", "value")]
        + [{"name": "key_padding_mask", "dtype": "bool", "shape": ["batch", "seq_len"]}]
    )
    meta["sparse_attn.outputs"] = json.dumps(
        [{"name": "output", "dtype": "float32", "shape": qkv_shape}]
    )
    onnx.helper.set_model_props(model, meta)
    onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def att_path(tmp_path_factory) -> Path:
    return export_attention_model(tmp_path_factory.mktemp("serve") / "att.onnx")


@pytest.fixture(scope="module")
def rt(att_path):
    return sparse_attn.Runtime(att_path, intra_op_threads=1)


def qkv(seed: int, s: int, b: int = 1, pad_from: int | None = None) -> dict:
    g = np.random.default_rng(seed)
    f = {n: g.standard_normal((b, H, s, D)).astype(np.float32) for n in ("query", "key", "value")}
    if pad_from is not None:
        kpm = np.ones((b, s), dtype=bool)
        kpm[:, pad_from:] = False
        f["key_padding_mask"] = kpm
    return f


def assert_close(got: np.ndarray, exp: np.ndarray, what: str = "") -> None:
    assert got.shape == exp.shape, f"{what}: shape {got.shape} != {exp.shape}"
    err = np.abs(got.astype(np.float64) - exp.astype(np.float64))
    bound = TOL.atol + TOL.rtol * np.abs(exp)
    if not np.all(err <= bound):
        idx = np.unravel_index(int(np.argmax(err - bound)), err.shape)
        raise AssertionError(
            f"{what}: worst element {idx}: got {got[idx]}, expected {exp[idx]} "
            f"(|diff| {err[idx]:.3g} > {bound[idx]:.3g})"
        )


# ---------------------------------------------------------------------------- HTTP helpers
def v2_json(feeds: dict) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": k,
                    "shape": list(v.shape),
                    "datatype": protocol.datatype_of(v.dtype),
                    "data": v.ravel().tolist(),
                }
                for k, v in feeds.items()
            ]
        }
    ).encode()


def post(url: str, body: bytes, timeout: float = 60.0) -> tuple[int, dict]:
    """POST JSON; returns (status, decoded JSON body) for any status."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def output_of(body: dict, name: str = "output") -> np.ndarray:
    t = next(o for o in body["outputs"] if o["name"] == name)
    return np.asarray(t["data"], dtype=protocol.DATATYPES[t["datatype"]]).reshape(t["shape"])


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---------------------------------------------------------------------------- protocol (pure)
def test_protocol_decodes_json_and_binary_and_refuses_malformed():
    a = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    m = np.array([[True, False, True]])
    head = {
        "inputs": [
            {"name": "a", "shape": [1, 2, 3], "datatype": "FP32", "data": a.tolist()},
            {
                "name": "m",
                "shape": [1, 3],
                "datatype": "BOOL",
                "parameters": {"binary_data_size": 3},
            },
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    js = json.dumps(head).encode()
    req, feeds = protocol.parse_infer_request(js + m.tobytes(), str(len(js)))
    np.testing.assert_array_equal(feeds["a"], a)
    np.testing.assert_array_equal(feeds["m"], m)
    assert protocol.requested_outputs(req, ["y", "z"]) == [("y", True)]
    body, headers = protocol.encode_infer_response("n", {"y": a}, [("y", True)], "7")
    n = int(headers["Inference-Header-Content-Length"])
    meta = json.loads(body[:n])
    assert meta["id"] == "7" and meta["outputs"][0]["parameters"]["binary_data_size"] == a.nbytes
    np.testing.assert_array_equal(np.frombuffer(body[n:], np.float32).reshape(1, 2, 3), a)

    bad = [
        (b"{", None, "not valid JSON"),
        (b'{"inputs": 3}', None, '"inputs" list'),
        (
            json.dumps(
                {"inputs": [{"name": "a", "shape": [2], "datatype": "FP8", "data": [1, 2]}]}
            ),
            None,
            "datatype 'FP8'",
        ),
        (
            json.dumps({"inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "data": [1]}]}),
            None,
            "holds 1 values but shape [3] needs 3",
        ),
        (
            json.dumps({"inputs": [{"name": "a", "shape": [-1], "datatype": "FP32", "data": []}]}),
            None,
            "non-negative integers",
        ),
        (js + b"\x00", str(len(js)), "binary_data_size"),
        (js + m.tobytes(), "999999", "Inference-Header-Content-Length"),
    ]
    for body, hl, msg in bad:
        body = body.encode() if isinstance(body, str) else body
        with pytest.raises(InvalidInputError, match=re.escape(msg)):
            protocol.parse_infer_request(body, hl)
    with pytest.raises(InvalidInputError, match="unknown output"):
        protocol.requested_outputs({"outputs": [{"name": "q"}]}, ["y"])
    with pytest.raises(InvalidInputError, match="Content-Encoding"):
        protocol.decode_body(b"x", "br")


# ---------------------------------------------------------------------------- batching (pure)
def test_merged_requests_equal_each_request_alone(rt):
    """Different S and batch sizes, padded in one call, cut back: each equals its own run."""
    reqs = [qkv(1, 5), qkv(2, 33, b=2), qkv(3, 64, pad_from=40), qkv(4, 1), qkv(5, 17, b=3)]
    plan = BatchPlan(rt.inputs, rt.outputs)
    assert plan.can_pad and plan.mask_input == "key_padding_mask"
    validated = [rt.validate(r).feeds for r in reqs]
    # one merge key for all of them: they share one call
    assert len({plan.key_of(f) for f in validated}) == 1
    outs = run_merged(rt, validated)
    for i, (r, out) in enumerate(zip(reqs, outs, strict=True)):
        assert_close(out["output"], rt.run(r)["output"], f"request {i}")


def test_batches_group_similar_lengths(rt):
    """A merged call carries at most ``max_padding`` padding: short requests wait for peers."""
    from sparse_attn.serving.batching import DynamicBatcher, _Item

    b = DynamicBatcher(rt, BatchPolicy(max_batch_size=8, max_padding=0.25))
    for i, s in enumerate((64, 4, 60, 5, 56, 3)):
        f = rt.validate(qkv(i, s)).feeds
        b._queue.append(_Item(f, 1, b.plan.seq_of(f), b.plan.key_of(f), None, 0.0))
    assert [it.length for it in b._take_batch()] == [64, 60, 56]
    assert [it.length for it in b._take_batch()] == [4, 5, 3]
    assert not b._queue


def test_serve_bench_report_and_plot(tmp_path):
    from sparse_attn.bench import serve as serve_bench

    cells = [
        {"path": p, "batching": bt, "concurrency": c, "rps": 10.0 * c, "p50_ms": 5.0,
         "p99_ms": 9.0, "errors": 0, "max_abs_err": 0.0, "mean_batch_rows": 2.0 if bt else None}
        for p, bt in (("in-process", None), ("http", True)) for c in (1, 8)
    ]  # fmt: skip
    table = serve_bench.markdown_table({"cells": cells})
    assert table.count("\n") == 5 and "| http | on | 8 | 80.0 |" in table
    png = serve_bench.plot({"cells": cells}, tmp_path / "p.png")
    assert png is not None and png.stat().st_size > 1000
    assert serve_bench.markdown_table({"cells": []}) == ""


def test_default_name_is_the_file_stem():
    from sparse_attn.serving.app import default_model_name

    assert default_model_name("artifacts/minilm.onnx") == "minilm"
    assert default_model_name("artifacts/minilm.ort.onnx") == "minilm.ort"
    assert default_model_name("m.engine") == "m"


def test_batch_policy_refuses_bad_values():
    for kw in (
        {"max_batch_size": 0},
        {"max_queue": -1},
        {"workers": 0},
        {"max_delay_ms": -1},
        {"max_padding": -0.1},
    ):
        with pytest.raises(InvalidInputError, match=next(iter(kw))):
            BatchPolicy(**kw)


# ---------------------------------------------------------------------------- server
def test_tritonclient_speaks_v2_with_the_server(rt):
    th = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed")
    from tritonclient.utils import InferenceServerException

    app = create_app(rt, name="att", policy=BatchPolicy(max_batch_size=4, max_delay_ms=2))
    with ServerThread(app) as srv:
        client = th.InferenceServerClient(f"127.0.0.1:{srv.port}")
        try:
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready("att")
            meta = client.get_model_metadata("att")
            assert meta["inputs"][0] == {
                "name": "query",
                "datatype": "FP32",
                "shape": [-1, H, -1, D],
            }
            assert meta["outputs"] == [
                {"name": "output", "datatype": "FP32", "shape": [-1, H, -1, D]}
            ]
            cfg = client.get_model_config("att")
            assert cfg["max_batch_size"] == 4 and cfg["input"][3]["dims"] == [-1]
            for binary in (True, False):
                f = qkv(7, 29, b=2, pad_from=20)
                inputs = []
                for k, v in f.items():
                    t = th.InferInput(k, list(v.shape), protocol.datatype_of(v.dtype))
                    t.set_data_from_numpy(v, binary_data=binary)
                    inputs.append(t)
                res = client.infer(
                    "att",
                    inputs,
                    outputs=[th.InferRequestedOutput("output", binary_data=binary)],
                    request_id="r1",
                )
                assert res.get_response()["id"] == "r1"
                assert_close(res.as_numpy("output"), rt.run(f)["output"], f"binary={binary}")
            # a request the runtime refuses: HTTP 400 with the runtime's own message
            bad = qkv(8, S_MAX + 1)
            with pytest.raises(InvalidInputError) as expected:
                rt.run(bad)
            inputs = []
            for k, v in bad.items():
                t = th.InferInput(k, list(v.shape), "FP32")
                t.set_data_from_numpy(v)
                inputs.append(t)
            with pytest.raises(InferenceServerException) as err:
                client.infer("att", inputs)
            assert err.value.status() == "400"
            assert err.value.message() == " ".join(str(expected.value).split())
            with pytest.raises(InferenceServerException) as err:
                client.get_model_metadata("nope")
            assert err.value.status() == "404"
        finally:
            client.close()


def test_200_concurrent_mixed_requests(rt):
    """Valid ones equal the in-process result; invalid ones are 400 with the runtime's message."""
    app = create_app(
        rt, name="att", policy=BatchPolicy(max_batch_size=8, max_delay_ms=10, max_padding=1.0)
    )
    rng = np.random.default_rng(0)
    cases = []
    for i in range(200):
        s = int(rng.integers(1, S_MAX + 1))
        kind = i % 10
        if kind == 3:
            f = qkv(i, S_MAX + 1 + (i % 5))  # too long
        elif kind == 7:
            f = qkv(i, s)
            f["key"] = f["key"].astype(np.float64)  # wrong dtype
        elif kind == 9:
            f = qkv(i, s)
            f["query"] = f["query"][:, :1]  # wrong number of heads
        else:
            f = qkv(i, s, b=1 + i % 3, pad_from=max(1, s - 3) if i % 4 == 0 else None)
        try:
            cases.append((f, rt.run(f)["output"], None))
        except InvalidInputError as exc:
            cases.append((f, None, " ".join(str(exc).split())))
    assert sum(c[2] is not None for c in cases) == 60

    with ServerThread(app) as srv:
        url = f"{srv.url}/v2/models/att/infer"
        with cf.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda c: post(url, v2_json(c[0])), cases))
        status, text = get(f"{srv.url}/metrics")
    for i, ((_f, expected, message), (code, body)) in enumerate(zip(cases, answers, strict=True)):
        if message is None:
            assert code == 200, f"request {i}: {code} {body}"
            assert_close(output_of(body), expected, f"request {i}")
        else:
            assert code == 400, f"request {i}: {code} {body}"
            assert body == {"error": message}, f"request {i}"
    text = text.decode()
    assert metric(text, 'sparse_attn_requests_total{code="200",endpoint="infer"}') == 140
    assert metric(text, 'sparse_attn_requests_total{code="400",endpoint="infer"}') == 60
    calls = metric(text, "sparse_attn_batch_requests_count")
    merged = metric(text, "sparse_attn_batch_requests_sum")
    assert merged == 140 and calls < 140, f"no request was merged ({calls} calls)"
    assert "sparse_attn_queue_depth 0.0" in text
    assert metric(text, "sparse_attn_request_latency_seconds_count") == 200


class GatedRuntime:
    """A Runtime whose ``run`` waits for ``gate`` (to fill the queue deterministically)."""

    def __init__(self, rt) -> None:
        self._rt = rt
        self.gate = threading.Event()
        self.running = threading.Event()

    def __getattr__(self, name):
        return getattr(self._rt, name)

    def run(self, feeds):
        self.running.set()
        assert self.gate.wait(60), "gate never opened"
        return self._rt.run(feeds)


def test_full_queue_answers_503_and_the_server_stays_up(rt):
    gated = GatedRuntime(rt)
    app = create_app(gated, name="att", policy=BatchPolicy(max_batch_size=1, max_queue=2))
    f = qkv(1, 9)
    expected = rt.run(f)["output"]
    with ServerThread(app) as srv:
        url = f"{srv.url}/v2/models/att/infer"
        pool = cf.ThreadPoolExecutor(3)
        try:
            first = pool.submit(post, url, v2_json(f))
            assert gated.running.wait(30)  # the first request holds the only worker
            queued = [pool.submit(post, url, v2_json(f)) for _ in range(2)]
            deadline = time.monotonic() + 30
            while app.state.serving.batcher.queue_depth < 2:
                assert time.monotonic() < deadline, "the two requests never queued"
                time.sleep(0.01)
            code, body = post(url, v2_json(f))
            assert code == 503 and "queue is full" in body["error"]
            gated.gate.set()
            for fut in [first, *queued]:
                code, body = fut.result(60)
                assert code == 200
                assert_close(output_of(body), expected, "queued request")
        finally:
            gated.gate.set()
            pool.shutdown()
        assert get(f"{srv.url}/v2/health/ready")[0] == 200
        code, body = post(url, v2_json(f))
        assert code == 200
        status, text = get(f"{srv.url}/metrics")
        assert metric(text.decode(), 'sparse_attn_requests_total{code="503",endpoint="infer"}') == 1


def test_request_size_limits_answer_413(rt):
    app = create_app(rt, name="att", max_request_bytes=4096, max_texts=2)
    with ServerThread(app) as srv:
        code, body = post(f"{srv.url}/v2/models/att/infer", v2_json(qkv(1, 64)))
        assert code == 413 and "4096 bytes" in body["error"]
        code, body = post(f"{srv.url}/v2/models/att/infer", v2_json(qkv(1, 2)))
        assert code == 200
        # a non-text model refuses /v1/embeddings with the runtime's message
        code, body = post(f"{srv.url}/v1/embeddings", json.dumps({"input": ["a"]}).encode())
        assert code == 400 and "not a text model" in body["error"]
        code, body = post(f"{srv.url}/v1/embeddings", json.dumps({"input": ["a"] * 3}).encode())
        assert code == 413 and "limit of 2" in body["error"]
        assert get(f"{srv.url}/v2/models/att/versions/2")[0] == 404


def test_embeddings_endpoint_equals_runtime_embed(tmp_path):
    from test_runtime import build_toy_text_model

    path = tmp_path / "toy.onnx"
    build_toy_text_model(path, max_len=40)
    trt = sparse_attn.Runtime(path)
    texts = [
        "short",
        "a somewhat longer sentence with more tokens in it",
        "mid length text here",
        "word " * 60,  # longer than max_seq_len: truncated
    ]
    app = create_app(trt, name="toy", policy=BatchPolicy(max_batch_size=16, max_delay_ms=20))
    with ServerThread(app) as srv:
        url = f"{srv.url}/v1/embeddings"
        with cf.ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(
                    lambda t: post(url, json.dumps({"input": t, "model": "toy"}).encode()), texts
                )
            )
        code, body = post(url, json.dumps({"input": texts[:2]}).encode())
        assert code == 200 and [d["index"] for d in body["data"]] == [0, 1]
        code, wrong = post(url, json.dumps({"input": "x", "model": "other"}).encode())
        assert code == 404
    with pytest.warns(UserWarning, match="was cut"):
        expected = trt.embed(texts)
    for i, (code, body) in enumerate(answers):
        assert code == 200, body
        got = np.asarray(body["data"][0]["embedding"], np.float32)
        assert_close(got, expected[i], f"text {i}")
    assert answers[3][1]["truncated"] == [0]
    assert answers[0][1]["usage"]["prompt_tokens"] == 3  # [CLS] short [SEP]


# ---------------------------------------------------------------------------- the command
def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _one_request(port: int, body: bytes) -> tuple[str, int | None, dict | None]:
    """('ok'|'refused'|'reset', status, body) over a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v2/models/att/infer", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        return "ok", r.status, json.loads(r.read() or b"{}")
    except ConnectionRefusedError:
        return "refused", None, None
    except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
        return "reset", None, None
    finally:
        conn.close()


def test_cli_serve_sigterm_during_load_loses_no_accepted_request(att_path, rt):
    """SIGTERM while requests are queued: every accepted one is answered, then exit 0."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sparse_attn.cli",
            "serve",
            str(att_path),
            "--port",
            "0",
            "--name",
            "att",
            "--max-batch-size",
            "64",
            "--max-delay-ms",
            "2000",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        line = proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert m, f"no address in {line!r}"
        port = int(m.group(1))
        cases = [qkv(i, 1 + (7 * i) % S_MAX) for i in range(48)]
        bodies = [v2_json(f) for f in cases]
        with cf.ThreadPoolExecutor(12) as pool:
            futs = [pool.submit(_one_request, port, b) for b in bodies[:12]]
            # the batch waits up to 2 s for more rows: SIGTERM once all 12 are queued
            deadline = time.monotonic() + 60
            while True:
                text = get(f"http://127.0.0.1:{port}/metrics")[1].decode()
                if metric(text, "sparse_attn_queue_depth") >= 12:
                    break
                assert time.monotonic() < deadline, "the requests never queued"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            futs += [pool.submit(_one_request, port, b) for b in bodies[12:]]
            results = [f.result(120) for f in futs]
        err = proc.stderr.read()
        assert proc.wait(60) == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    ok = 0
    for i, (how, code, body) in enumerate(results):
        if how == "ok" and code == 200:
            assert_close(output_of(body), rt.run(cases[i])["output"], f"request {i}")
            ok += 1
        else:
            assert how in ("refused", "reset") or code == 503, (i, how, code, body)
    assert ok >= 12, f"only {ok} requests answered; the 12 queued ones must be"
    stats = re.search(r"accepted (\d+) model requests, completed (\d+); answered (\d+)", err)
    assert stats, err
    accepted, completed, answered = (int(x) for x in stats.groups())
    assert accepted == completed == answered == ok, (accepted, completed, answered, ok)


def test_cli_serve_refuses_bad_options(att_path, capsys):
    from sparse_attn.cli import main

    assert main(["serve", str(att_path.parent / "missing.onnx"), "--port", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", str(att_path), "--replicas", "2"]) == 2
    assert "need --ray" in capsys.readouterr().err
    assert main(["serve", str(att_path), "--name", "bad name!", "--port", "0"]) == 2
    assert main(["serve", str(att_path), "--max-batch-size", "0"]) == 2


@pytest.mark.slow
def test_minilm_embeddings_over_http_equal_runtime_embed(tmp_path):
    """The real MiniLM export: /v1/embeddings of concurrent mixed-length texts, merged and
    padded by the batcher, equal ``Runtime.embed`` of each text alone."""
    from sparse_attn.export import minilm

    path = minilm.export_onnx(tmp_path / "minilm.onnx", max_seq_len=128, block_size=32)
    mrt = sparse_attn.Runtime(path)
    words = "sparse attention reads long documents with a few global tokens".split()
    texts = [" ".join(words[: 1 + i % len(words)] * (1 + i // 3)) for i in range(24)]
    app = create_app(mrt, policy=BatchPolicy(max_batch_size=8, max_delay_ms=20, max_padding=1.0))
    with ServerThread(app) as srv:
        url = f"{srv.url}/v1/embeddings"
        with cf.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda t: post(url, json.dumps({"input": t}).encode()), texts))
        text = get(f"{srv.url}/metrics")[1].decode()
    assert metric(text, "sparse_attn_batch_requests_count") < len(texts)  # some were merged
    for i, (code, body) in enumerate(answers):
        assert code == 200, body
        got = np.asarray(body["data"][0]["embedding"], np.float32)
        assert_close(got, mrt.embed([texts[i]])[0], f"text {i}")
