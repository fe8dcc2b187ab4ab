"""Ray Serve: the same application with 2 replicas answers like the in-process Runtime.

One Ray instance for the module (Ray takes 10-30 s to start here), on 127.0.0.1, its session
files under a temporary folder; shut down at the end.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
import socket
import tempfile

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
pytest.importorskip("fastapi", reason="fastapi is not installed")

from test_serving import (  # noqa: E402
    S_MAX,
    assert_close,
    export_attention_model,
    get,
    output_of,
    post,
    qkv,
    v2_json,
)

import sparse_attn  # noqa: E402
from sparse_attn.errors import InvalidInputError  # noqa: E402
from sparse_attn.serving.batching import BatchPolicy  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    from ray import serve

    from sparse_attn.serving import ray_app

    path = export_attention_model(tmp_path_factory.mktemp("ray") / "att.onnx")
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths have a length limit
    ray_app.start_ray(temp_dir=temp_dir, num_cpus=2)
    port = _free_port()
    try:
        app = ray_app.build_deployment(
            path,
            name="att",
            policy=BatchPolicy(max_batch_size=8, max_delay_ms=5),
            replicas=2,
            replica_cpus=0.5,
        )
        ray_app.deploy(app, "127.0.0.1", port)
        yield path, f"http://127.0.0.1:{port}"
    finally:
        import ray

        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_two_replicas_answer_like_the_runtime(ray_server):
    from ray import serve

    path, url = ray_server
    rt = sparse_attn.Runtime(path)
    status = serve.status().applications["sparse-attn"].deployments["sparse-attn"]
    assert status.replica_states.get("RUNNING") == 2, status
    assert get(f"{url}/v2/health/ready")[0] == 200
    cases = []
    for i in range(40):
        if i % 8 == 5:
            f = qkv(i, S_MAX + 1 + i % 3)
        else:
            f = qkv(i, 1 + (11 * i) % S_MAX, b=1 + i % 2, pad_from=3 if i % 3 == 0 else None)
        try:
            cases.append((f, rt.run(f)["output"], None))
        except InvalidInputError as exc:
            cases.append((f, None, " ".join(str(exc).split())))
    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda c: post(f"{url}/v2/models/att/infer", v2_json(c[0])), cases))
    for i, ((_f, expected, message), (code, body)) in enumerate(zip(cases, answers, strict=True)):
        if message is None:
            assert code == 200, (i, code, body)
            assert_close(output_of(body), expected, f"request {i}")
        else:
            assert (code, body) == (400, {"error": message}), i
    code, meta = get(f"{url}/v2/models/att")
    assert code == 200 and json.loads(meta)["inputs"][0]["shape"] == [-1, 2, -1, 8]
    assert np.isfinite(output_of(answers[0][1])).all()


def test_serve_run_builder_arguments(tmp_path):
    """``serve run sparse_attn.serving.ray_app:app_builder model=... key=value`` (no Ray start)."""
    from sparse_attn.serving import ray_app

    path = export_attention_model(tmp_path / "att.onnx")
    app = ray_app.app_builder({"model": str(path), "replicas": "1", "max_replicas": "3"})
    assert type(app).__name__ == "Application"
    for args, msg in (
        ({}, "model=PATH"),
        ({"model": str(path), "replica": "2"}, "unknown argument"),
        ({"model": str(path), "replicas": "two"}, "malformed"),
        ({"model": str(path), "replicas": "3", "max_replicas": "2"}, "below replicas"),
        ({"model": str(tmp_path / "nope.onnx")}, "does not exist"),
    ):
        with pytest.raises(InvalidInputError, match=msg):
            ray_app.app_builder(args)


@pytest.mark.slow
def test_cli_serve_ray_answers_and_stops_on_sigterm(tmp_path):
    """``sparse-attn serve --ray --replicas 2`` in the foreground (its own Ray instance)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    path = export_attention_model(tmp_path / "att.onnx")
    port = _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env["OMP_NUM_THREADS"] = "1"
    env["TMPDIR"] = tempfile.mkdtemp(prefix="rt-")  # Ray's session folder: short paths
    cmd = [sys.executable, "-m", "sparse_attn.cli", "serve", str(path), "--ray"]
    cmd += ["--replicas", "2", "--port", str(port), "--name", "att"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while True:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the server exited"
            if "Ray Serve, 2 replica(s)" in line:
                break
            assert time.monotonic() < deadline, "Ray Serve did not start"
        rt = sparse_attn.Runtime(path)
        f = qkv(3, 21, b=2)
        code, body = post(f"http://127.0.0.1:{port}/v2/models/att/infer", v2_json(f))
        assert code == 200
        assert_close(output_of(body), rt.run(f)["output"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        shutil.rmtree(env["TMPDIR"], ignore_errors=True)
