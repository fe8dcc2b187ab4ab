"""Load: one Runtime hammered from 8 threads with hundreds of mixed-length requests (some bad)
returns exactly the single-threaded results and keeps serving."""

from __future__ import annotations

import concurrent.futures as cf
import warnings

import numpy as np
import pytest
from test_runtime import (  # noqa: F401  (toy_family is an autouse fixture)
    VOCAB,
    build_toy_text_model,
    toy_family,
)

from sparse_attn.errors import InvalidInputError
from sparse_attn.runtime import Runtime

THREADS = 8


def _requests(n: int, max_len: int, vocab: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    reqs = []
    for i in range(n):
        b = int(rng.integers(1, 4))
        s = int(rng.integers(1, max_len + 1))
        ids = rng.integers(0, vocab, size=(b, s)).astype(np.int64)
        mask = np.ones((b, s), dtype=np.int64)
        if b > 1 and s > 2:
            mask[-1, s // 2 :] = 0
        req = {"input_ids": ids, "attention_mask": mask}
        if i % 17 == 5:  # a bad request every so often: must be refused, never break others
            req = {"input_ids": ids.astype(np.int32), "attention_mask": mask}
        reqs.append(req)
    return reqs


def _hammer(rt: Runtime, reqs: list[dict]) -> None:
    expected = []
    for r in reqs:  # single-threaded truth
        try:
            expected.append(rt.run(r))
        except InvalidInputError as exc:
            expected.append(exc)

    def one(i: int):
        try:
            return i, rt.run(reqs[i])
        except InvalidInputError as exc:
            return i, exc

    order = list(range(len(reqs))) * 2
    np.random.default_rng(1).shuffle(order)
    with cf.ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(one, order))
    bad = 0
    for i, got in results:
        exp = expected[i]
        if isinstance(exp, Exception):
            assert isinstance(got, InvalidInputError) and str(got) == str(exp)
            bad += 1
            continue
        assert not isinstance(got, Exception), f"request {i}: {got}"
        assert list(got) == list(exp)
        for k in exp:
            if not np.array_equal(got[k], exp[k]):
                d = np.abs(got[k].astype(np.float64) - exp[k].astype(np.float64))
                w = np.unravel_index(int(np.argmax(d)), d.shape)
                raise AssertionError(
                    f"request {i} output {k} differs under threads; worst at {w}: "
                    f"got {got[k][w]} expected {exp[k][w]}"
                )
    assert bad > 0  # the bad requests really were in the mix


def test_eight_threads_toy_model(tmp_path):
    rt = Runtime(build_toy_text_model(tmp_path / "toy.onnx", max_len=64))
    _hammer(rt, _requests(300, 64, VOCAB))


def test_eight_threads_torch_backend(tmp_path):
    rt = Runtime(build_toy_text_model(tmp_path / "toy.onnx", max_len=32), backend="torch")
    _hammer(rt, _requests(120, 32, VOCAB, seed=3))


@pytest.fixture(scope="module")
def minilm_onnx(tmp_path_factory):
    minilm = pytest.importorskip("sparse_attn.export.minilm")
    if not hasattr(minilm, "export_onnx"):
        pytest.skip("sparse_attn.export.minilm.export_onnx is not available yet")
    path = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    return minilm.export_onnx(
        path,
        pattern=minilm.DEFAULT_PATTERN,
        block_size=16,
        max_seq_len=64,
        dtype="float32",
        causal=False,
    )


@pytest.mark.slow
def test_eight_threads_real_minilm(minilm_onnx):
    rt = Runtime(minilm_onnx)
    assert rt.max_seq_len == 64
    _hammer(rt, _requests(100, 64, 30522, seed=5))


def test_eight_threads_text_front_end(tmp_path):
    """Tokenizer + run from 8 threads: embeddings identical to the single-threaded ones."""
    rt = Runtime(build_toy_text_model(tmp_path / "toy.onnx", max_len=48))
    words = "the quick brown fox jumps over a lazy dog while rain falls on quiet hills".split()
    rng = np.random.default_rng(7)
    batches = [
        [
            " ".join(rng.choice(words, size=int(rng.integers(1, 60))))
            for _ in range(int(rng.integers(1, 4)))
        ]
        for _ in range(120)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some texts are cut at 48 tokens on purpose
        expected = [rt.embed(b) for b in batches]
        with cf.ThreadPoolExecutor(max_workers=THREADS) as pool:
            got = list(pool.map(rt.embed, batches))
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert np.array_equal(g, e), f"batch {i}: max diff {np.abs(g - e).max()}"
