"""Mistral family: sliding-window causal decoder (prefill) vs Hugging Face's eager Mistral.

The window's off-by-one is checked against the attention weights Hugging Face itself
computes (``output_attentions``): query ``i`` sees keys ``i-W+1..i``, i.e. ``band(w=W-1)``
with ``causal``; rows ``W-1``, ``W``, ``W+1`` are the boundary.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from testing import assert_close

from sparse_attn.errors import InvalidInputError
from sparse_attn.export import hf_common, mistral

W = 12
MAX_S = 96
BLOCK = 16
CONFIG = {"sliding_window": W}


@pytest.fixture(scope="module")
def hf():
    return mistral.load_hf_model(CONFIG, seed=0)


@pytest.fixture(scope="module")
def model():
    return mistral.build_model(block_size=BLOCK, max_seq_len=MAX_S, config=CONFIG, seed=0)


def _inputs(s, seed, pad=0):
    return hf_common.random_token_inputs(2, s, 512, seed=seed, pad_last=pad)


def _hf_out(hf, inp, **kw):
    with torch.no_grad():
        return hf(**inp, output_hidden_states=True, **kw)


def test_pattern_is_band_w_minus_1_causal():
    assert mistral.sliding_window_pattern(W, MAX_S) == f"band(w={W - 1})"
    assert mistral.sliding_window_pattern(None, 64) == "band(w=64)"
    with pytest.raises(InvalidInputError):
        mistral.sliding_window_pattern(0, 64)


def test_boundary_rows_match_hf_attention_weights(hf, model):
    """The op's visible keys equal the keys with non-zero HF attention weight, row by row."""
    s = 40
    inp = _inputs(s, seed=3)
    out = _hf_out(hf, inp, output_attentions=True)
    hf_visible = (out.attentions[0][0, 0] > 0).numpy()  # [S, S], layer 0, head 0
    ours = model.layout.token_mask(s)
    for h in range(ours.shape[0]):
        np.testing.assert_array_equal(ours[h], hf_visible)
    for i in (W - 1, W, W + 1):
        keys = np.nonzero(ours[0, i])[0]
        assert keys.tolist() == list(range(max(0, i - W + 1), i + 1)), (i, keys.tolist())
    # Row W-1 still sees key 0, row W no longer does.
    assert ours[0, W - 1, 0] and not ours[0, W, 0]


@pytest.mark.parametrize("s", [40, 96])
def test_torch_matches_hf_eager(hf, model, s):
    inp = _inputs(s, seed=s, pad=5)
    ref = _hf_out(hf, inp)
    with torch.no_grad():
        out = model(**inp)
    real = inp["attention_mask"].bool()
    assert_close(out["logits"][real], ref.logits[real], atol=1e-5, rtol=1e-5, name="logits")
    assert_close(
        out["last_hidden_state"][real],
        ref.hidden_states[-1][real],
        atol=1e-5,
        rtol=1e-5,
        name="hidden",
    )


def test_wrong_window_is_detected(hf):
    """A window one key too wide gives a different result (the test above can fail)."""
    wrong = mistral.build_model(
        f"band(w={W})", block_size=BLOCK, max_seq_len=MAX_S, config=CONFIG, seed=0
    )
    inp = _inputs(40, seed=7)
    ref = _hf_out(hf, inp)
    with torch.no_grad():
        out = wrong(**inp)
    assert float((out["logits"] - ref.logits).abs().max()) > 1e-3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("mistral")
    return {
        dt: mistral.export_onnx(
            d / f"mistral_{dt}.onnx",
            block_size=BLOCK,
            max_seq_len=MAX_S,
            dtype=dt,
            config=CONFIG,
            seed=0,
        )
        for dt in ("float32", "float16")
    }


def _tol(got_ref32, ref16, real, dtype):
    """fp32: 2e-5. fp16: twice Hugging Face's own fp16 drift (HF fp16 vs fp32), atol only."""
    if dtype == "float32":
        return 2e-5, 2e-5
    drift = float(np.abs(ref16.double().numpy() - got_ref32.double().numpy())[real].max())
    return 2 * drift + 1e-4, 0.0


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_onnx_matches_hf_two_lengths(exported, hf, dtype):
    """One file, two lengths; fp16 vs the fp32 reference within 2x HF's own fp16 drift."""
    sess = ort.InferenceSession(str(exported[dtype]), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert names == ["logits", "last_hidden_state"]
    hf16 = mistral.load_hf_model(CONFIG, seed=0, dtype="float16") if dtype == "float16" else None
    for s in (W + 2, 77):  # W + 2 < one block: rows W-1, W, W+1 in a single-block request
        inp = _inputs(s, seed=100 + s, pad=4)
        got = dict(zip(names, sess.run(names, {k: v.numpy() for k, v in inp.items()}), strict=True))
        ref = _hf_out(hf, inp)
        ref16 = _hf_out(hf16, inp) if hf16 is not None else ref
        real = inp["attention_mask"].bool().numpy()
        assert got["logits"].dtype == np.dtype(dtype)
        for name, r32, r16 in (
            ("logits", ref.logits, ref16.logits),
            ("last_hidden_state", ref.hidden_states[-1], ref16.hidden_states[-1]),
        ):
            atol, rtol = _tol(r32, r16, real, dtype)
            assert_close(
                got[name][real].astype(np.float64),
                r32.numpy()[real],
                atol=atol,
                rtol=rtol,
                name=f"{name} {dtype} S={s}",
            )


def test_rebuild_from_metadata(exported):
    from sparse_attn.export import build_torch_model
    from sparse_attn.export.metadata import read_metadata

    meta = read_metadata(exported["float32"])
    assert meta["sparse_attn.model"] == "mistral" and meta["sparse_attn.causal"] == "true"
    assert meta["sparse_attn.pattern"].startswith(f"band(w={W - 1})")
    rebuilt = build_torch_model(meta)
    sess = ort.InferenceSession(str(exported["float32"]), providers=["CPUExecutionProvider"])
    inp = _inputs(33, seed=9)
    (logits,) = sess.run(["logits"], {k: v.numpy() for k, v in inp.items()})
    with torch.no_grad():
        out = rebuilt(**inp)
    assert_close(out["logits"], logits, atol=2e-5, rtol=2e-5, name="rebuilt logits")
