"""Gemma 3 270M (real pretrained weights) exported at max_seq_len 4096 vs the unmodified model.

Slow (about 5-15 minutes on 2 cores: export of 18 layers, then ONNX Runtime and transformers'
eager attention on a 1,750-token text). Skipped when the built-in checkpoint has not been
converted (``make install`` / ``python -m sparse_attn.models.gemma3``).
"""

from __future__ import annotations

import json

import pytest

from sparse_attn.models import gemma3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    if not gemma3.is_converted():
        pytest.skip("gemma3-270m is not converted; run python -m sparse_attn.models.gemma3")
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("gemma3") / "gemma3-270m.onnx"
    # A separate process, so the export's memory is returned before the comparison.
    cmd = [sys.executable, "-m", "sparse_attn.cli", "export", "--model", "gemma3-270m"]
    cmd += ["--max-seq-len", "4096", "--block-size", "64", "-o", str(out)]
    subprocess.run(cmd, check=True)
    return out


def test_layer_patterns_of_gemma3_270m():
    if not gemma3.is_converted():
        pytest.skip("gemma3-270m is not converted")
    from sparse_attn.models import checkpoint, layers

    cfg = checkpoint.load_config(gemma3.model_dir())
    pats = layers.layer_patterns(cfg, 4096)
    assert len(pats) == 18
    for lp in pats:
        full = (lp.layer + 1) % 6 == 0
        assert lp.pattern == ("dense() | causal" if full else "band(w=511) | causal"), lp


def test_ort_logits_match_unmodified_gemma3_on_a_long_text(exported):
    from sparse_attn.models.family import long_text

    res = gemma3.verify(exported, long_text(), min_tokens=1500)
    print(json.dumps(res))
    assert res["tokens"] >= 1500 and res["tokens"] % 64 != 0
    assert res["argmax_disagree_clear"] == 0, res
    assert res["max_abs_err"] < 5e-2, res
