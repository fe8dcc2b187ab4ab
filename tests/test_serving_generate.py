"""``sparse-attn serve`` of a generation export: /generate and /generate_stream (SSE).

A tiny random Gemma 3 (the one ``test_generate`` builds) exported with ``--task generate``;
answers must equal ``Runtime.generate`` in the same process (greedy).
"""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serving extra is not installed")
pytest.importorskip("transformers")

from test_serving import get, post  # noqa: E402

import sparse_attn  # noqa: E402
from sparse_attn.serving import ServerThread, create_app  # noqa: E402


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
    from test_generate import _export, tiny_gemma3

    ckpt = tmp_path_factory.mktemp("gemma3_ckpt")
    tiny_gemma3(ckpt)
    _, res = _export(ckpt, tmp_path_factory.mktemp("gemma3_gen"))
    return res.directory


def _sse(url: str, body: dict) -> list[dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


@pytest.mark.slow  # the export takes about 65 s of CPU here
def test_generate_and_stream_equal_runtime_generate(gen_dir):
    rt = sparse_attn.Runtime(gen_dir)
    ids = [[3, 17, 42, 9], [5, 6]]
    expected = rt.generate(ids, max_new_tokens=5, stop_token_ids=[])
    text_tokens = rt.generate("w5 w6 w7", max_new_tokens=4)
    app = create_app(rt, name="gemma")
    with ServerThread(app) as srv:
        base = f"{srv.url}/v2/models/gemma"
        code, body = post(
            f"{base}/generate",
            json.dumps(
                {"input_ids": ids, "parameters": {"max_tokens": 5, "stop_token_ids": []}}
            ).encode(),
        )
        assert code == 200, body
        np.testing.assert_array_equal(np.asarray(body["output_ids"]), expected)
        code, body = post(
            f"{base}/generate",
            json.dumps({"text_input": "w5 w6 w7", "parameters": {"max_new_tokens": 4}}).encode(),
        )
        assert code == 200 and body["output_ids"] == text_tokens.tolist()
        assert isinstance(body["text_output"], str)
        events = _sse(
            f"{base}/generate_stream",
            {"input_ids": ids, "parameters": {"max_new_tokens": 5, "stop_token_ids": []}},
        )
        got = np.stack([np.asarray(e["output_ids"]) for e in events], axis=1)
        np.testing.assert_array_equal(got, expected)
        events = _sse(
            f"{base}/generate_stream",
            {"text_input": "w5 w6 w7", "parameters": {"max_new_tokens": 4}},
        )
        assert "".join(e["text_output"] for e in events) == body["text_output"]
        # refused before any work, with the runtime's message
        for bad, needle in (
            ({"text_input": "w5", "parameters": {"temperature": -1}}, "temperature"),
            ({"text_input": "w5", "parameters": {"beam_width": 2}}, "unknown generation"),
            ({"input_ids": [list(range(3, 70))]}, "max_seq_len 64"),
            ({"nothing": 1}, "text_input"),
        ):
            for route in ("generate", "generate_stream"):
                code, err = post(f"{base}/{route}", json.dumps(bad).encode())
                assert code == 400 and needle in err["error"], (route, bad, err)
        text = get(f"{srv.url}/metrics")[1].decode()
        assert 'sparse_attn_requests_total{code="200",endpoint="generate_stream"} 2.0' in text
