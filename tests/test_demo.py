"""``python -m sparse_attn.demo``: helpers (fast) and the whole main job end to end (slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sparse_attn.demo import DEMO_TEXTS, latency_stats, main
from sparse_attn.errors import InvalidInputError


def test_latency_stats_against_numpy():
    t = [0.010, 0.020, 0.030, 0.040, 0.100]
    s = latency_stats(t)
    assert s["p50"] == pytest.approx(30.0) and s["n"] == 5
    assert s["p90"] == pytest.approx(float(np.percentile(np.array(t) * 1e3, 90)))
    assert s["p90"] == pytest.approx(76.0)  # 40 + 0.6 * (100 - 40), linear interpolation
    with pytest.raises(InvalidInputError):
        latency_stats([])


def test_demo_texts_are_multi_sentence_and_varied():
    from sparse_attn.runtime.text import TextEncoder, default_minilm_dir

    enc = TextEncoder(default_minilm_dir() / "tokenizer.json", 512)
    _, lengths, cut = enc.encode_detailed(list(DEMO_TEXTS))
    assert not any(cut)
    assert min(lengths) < 64 and max(lengths) > 300  # short and long texts
    assert sum(t.count(". ") >= 1 for t in DEMO_TEXTS) >= 4


def test_demo_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--repeats", "0"]) == 2
    assert "repeats must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "sparse_attn.demo", "--out", str(out), "--repeats", "2"],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["passed"] is True and rep["accuracy"]["passed"] is True
    for key in ("model", "pattern", "density", "backend", "latency_ms", "dense_similarity"):
        assert key in rep
    assert rep["latency_ms"]["p50"] > 0 and rep["latency_ms"]["p90"] >= rep["latency_ms"]["p50"]
    cos = rep["dense_similarity"]["cosine_per_text"]
    assert len(cos) == len(DEMO_TEXTS) and all(-1.0 <= c <= 1.0 + 1e-6 for c in cos)
    # short texts fit in the pattern's window: sparse == dense up to rounding
    toks = rep["dense_similarity"]["tokens_per_text"]
    assert all(c > 0.9999 for c, n in zip(cos, toks, strict=True) if n <= 64)
