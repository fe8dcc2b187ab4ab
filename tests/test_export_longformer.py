"""Longformer family vs Hugging Face's own ``LongformerModel`` (random weights, seeded).

Hugging Face is called with ``global_attention_mask`` = 1 on the first ``num_global``
tokens (the family's fixed global tokens); it pads internally to a multiple of the
attention window. Compared on real tokens (HF zeroes the attention of padded rows).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from testing import assert_close

from sparse_attn.errors import InvalidInputError
from sparse_attn.export import hf_common, longformer

MAX_S = 128
BLOCK = 16
NUM_GLOBAL = 2


@pytest.fixture(scope="module")
def hf():
    return longformer.load_hf_model(seed=0)


@pytest.fixture(scope="module")
def model():
    return longformer.build_model(block_size=BLOCK, max_seq_len=MAX_S, num_global=NUM_GLOBAL)


def _inputs(s, seed, pad=0):
    return hf_common.random_token_inputs(2, s, 512, seed=seed, pad_last=pad)


def test_layer_patterns():
    cfg = longformer.make_config()
    assert longformer.layer_windows(cfg) == [16, 32]
    assert longformer.layer_pattern(16, 1) == "band(w=8) | global(n=1)"
    with pytest.raises(InvalidInputError, match="even"):
        longformer.make_config({"attention_window": [15, 32]})
    with pytest.raises(InvalidInputError, match="num_global"):
        longformer.build_model(max_seq_len=32, num_global=33)
    with pytest.raises(InvalidInputError, match="causal"):
        longformer.build_model(max_seq_len=32, num_global=1, causal=True)


@pytest.mark.parametrize("s", [37, 128])
def test_torch_matches_hf(hf, model, s):
    inp = _inputs(s, seed=s, pad=6)
    ref = longformer.hf_reference(hf, inp["input_ids"], inp["attention_mask"], NUM_GLOBAL)
    with torch.no_grad():
        out = model(**inp)["last_hidden_state"]
    real = inp["attention_mask"].bool()
    assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5, name=f"S={s}")


def test_global_rows_use_their_own_projections(hf, model):
    """Dropping the separate global attention changes the global rows (test can fail)."""
    inp = _inputs(60, seed=5)
    ref = longformer.hf_reference(hf, inp["input_ids"], inp["attention_mask"], NUM_GLOBAL)
    plain = longformer._module_class()(hf, list(model.attentions), 0).eval()
    with torch.no_grad():
        out = plain(**inp)["last_hidden_state"]
    assert float((out[:, :NUM_GLOBAL] - ref[:, :NUM_GLOBAL]).abs().max()) > 1e-3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("longformer")
    return {
        dt: longformer.export_onnx(
            d / f"lf_{dt}.onnx",
            block_size=BLOCK,
            max_seq_len=MAX_S,
            dtype=dt,
            num_global=NUM_GLOBAL,
        )
        for dt in ("float32", "float16")
    }


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_onnx_matches_hf_two_lengths(exported, hf, dtype):
    """One file, two lengths; fp16 vs the fp32 reference within 2x HF's own fp16 drift."""
    sess = ort.InferenceSession(str(exported[dtype]), providers=["CPUExecutionProvider"])
    hf16 = longformer.load_hf_model(seed=0, dtype="float16") if dtype == "float16" else None
    for s in (45, 128):
        inp = _inputs(s, seed=200 + s, pad=7)
        (got,) = sess.run(["last_hidden_state"], {k: v.numpy() for k, v in inp.items()})
        assert got.dtype == np.dtype(dtype)
        ref = longformer.hf_reference(hf, inp["input_ids"], inp["attention_mask"], NUM_GLOBAL)
        real = inp["attention_mask"].bool().numpy()
        if hf16 is None:
            atol, rtol = 2e-5, 2e-5
        else:
            r16 = longformer.hf_reference(hf16, inp["input_ids"], inp["attention_mask"], NUM_GLOBAL)
            atol, rtol = (
                2 * float((r16.double() - ref.double()).abs().numpy()[real].max()) + 1e-4,
                0.0,
            )
        assert_close(
            got[real].astype(np.float64),
            ref.numpy()[real],
            atol=atol,
            rtol=rtol,
            name=f"ORT {dtype} S={s}",
        )


def test_metadata_and_rebuild(exported):
    import onnx

    from sparse_attn.export import build_torch_model
    from sparse_attn.export.metadata import read_metadata

    path = exported["float32"]
    m = onnx.load(str(path), load_external_data=False)
    nodes = [n for n in m.graph.node if n.op_type == "BlockSparseAttention"]
    assert len(nodes) == 2 and nodes[0].overload != nodes[1].overload  # two windows
    meta = read_metadata(path)
    assert "layer 1: band(w=16)" in meta["sparse_attn.pattern"]
    rebuilt = build_torch_model(meta)
    inp = _inputs(50, seed=11, pad=3)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["last_hidden_state"], {k: v.numpy() for k, v in inp.items()})
    with torch.no_grad():
        out = rebuilt(**inp)["last_hidden_state"]
    assert_close(out, got, atol=2e-5, rtol=2e-5, name="rebuilt vs ORT")
