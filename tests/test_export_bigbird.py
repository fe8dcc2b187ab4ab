"""BigBird family vs Hugging Face's own ``BigBirdModel`` (block_sparse, eval, seeded weights).

BigBird is exported at a fixed sequence length (its last block depends on the end of the
sequence); "two lengths from one file" are two real lengths padded to that S. Hugging Face's
eval-mode random blocks are all block 0, seen ``1 + r`` times: the family reproduces the
multiplicity with appended key copies, and a test shows that the plain mask would not.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from testing import assert_close

from sparse_attn.errors import InvalidInputError
from sparse_attn.export import bigbird, hf_common

S = 256
BLOCK = 16
HB = bigbird.DEFAULT_CONFIG["block_size"]
R = bigbird.DEFAULT_CONFIG["num_random_blocks"]


@pytest.fixture(scope="module")
def hf():
    return bigbird.load_hf_model(seed=0)


@pytest.fixture(scope="module")
def model():
    return bigbird.build_model(block_size=BLOCK, max_seq_len=S)


def _inputs(real_len, seed, batch=2):
    inp = hf_common.random_token_inputs(batch, S, 512, seed=seed)
    inp["attention_mask"][-1, real_len:] = 0
    return inp


def _hf(hf, inp):
    with torch.no_grad():
        out = hf(**inp)
    assert hf.attention_type == "block_sparse"  # HF did not fall back to full attention
    return out


def test_token_mask_structure():
    m = bigbird.hf_token_mask(S, HB, R)
    n = S // HB
    assert m.shape == (S + R * HB, S + R * HB)
    blk = m[::HB, ::HB]  # block-level view (blocks are uniform)
    assert blk[0, :n].all() and blk[n - 1, :n].all()  # global rows
    assert blk[1, :n].nonzero()[0].tolist() == [0, 1, 2, n - 1]  # second row
    assert blk[n - 2, :n].nonzero()[0].tolist() == [0, n - 3, n - 2, n - 1]
    assert blk[5, :n].nonzero()[0].tolist() == [0, 4, 5, 6, n - 1]  # a middle row
    assert blk[1 : n - 1, n:].all() and not blk[0, n:].any() and not blk[n:].any()
    with pytest.raises(InvalidInputError, match="multiple"):
        bigbird.hf_token_mask(S + 1, HB, R)
    with pytest.raises(InvalidInputError, match="full attention"):
        bigbird.build_model(max_seq_len=(5 + 2 * R) * HB)


@pytest.mark.parametrize("real_len", [150, S])
def test_torch_matches_hf(hf, model, real_len):
    inp = _inputs(real_len, seed=real_len)
    ref = _hf(hf, inp)
    with torch.no_grad():
        out = model(**inp)
    assert_close(
        out["last_hidden_state"],
        ref.last_hidden_state,
        atol=1e-5,
        rtol=1e-5,
        name=f"hidden real_len={real_len}",
    )
    assert_close(out["pooler_output"], ref.pooler_output, atol=1e-5, rtol=1e-5, name="pooler")


def test_block0_multiplicity_matters(hf):
    """Without the appended copies of block 0 the output differs from HF (test can fail)."""
    lay = bigbird.build_layout(S, HB, 0, 4, BLOCK)
    plain = bigbird._module_class()(hf, hf_common.sparse_attention_module(lay), S, 0, 0).eval()
    inp = _inputs(S, seed=3)
    with torch.no_grad():
        out = plain(**inp)["last_hidden_state"]
    ref = _hf(hf, inp).last_hidden_state
    assert float((out - ref).abs().max()) > 1e-3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("bigbird")
    return {
        dt: bigbird.export_onnx(d / f"bb_{dt}.onnx", block_size=BLOCK, max_seq_len=S, dtype=dt)
        for dt in ("float32", "float16")
    }


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_onnx_matches_hf_static_length(exported, hf, dtype):
    """Two real lengths padded to the fixed S; fp16 within 2x HF's own fp16 drift."""
    sess = ort.InferenceSession(str(exported[dtype]), providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape
    assert shape[1] == S and isinstance(shape[0], str), shape
    hf16 = bigbird.load_hf_model(seed=0, dtype="float16") if dtype == "float16" else None
    names = ["last_hidden_state", "pooler_output"]
    for real_len in (100, S):
        inp = _inputs(real_len, seed=300 + real_len, batch=3)
        got = dict(zip(names, sess.run(names, {k: v.numpy() for k, v in inp.items()}), strict=True))
        ref = _hf(hf, inp)
        ref16 = _hf(hf16, inp) if hf16 is not None else ref
        assert got["last_hidden_state"].dtype == np.dtype(dtype)
        for name in names:
            r32, r16 = getattr(ref, name).double(), getattr(ref16, name).double()
            if hf16 is None:
                atol, rtol = 2e-5, 2e-5
            else:
                atol, rtol = 2 * float((r16 - r32).abs().max()) + 1e-4, 0.0
            assert_close(
                got[name].astype(np.float64),
                r32.numpy(),
                atol=atol,
                rtol=rtol,
                name=f"ORT {dtype} {name} real_len={real_len}",
            )


def test_metadata_static_and_rebuild(exported):
    from sparse_attn.export import build_torch_model
    from sparse_attn.export.metadata import read_metadata

    meta = read_metadata(exported["float32"])
    assert meta["sparse_attn.static_seq_len"] == "true"
    assert meta["sparse_attn.max_seq_len"] == str(S)
    # the ops see S plus the appended key copies: that is each node's own length guard
    import onnx

    from sparse_attn import opspec

    nodes = [
        n for n in onnx.load(str(exported["float32"])).graph.node if n.op_type == opspec.OP_TYPE
    ]
    assert nodes
    for n in nodes:
        guard = {p.key: p.value for p in n.metadata_props}[opspec.NODE_LAYOUT_SEQ_LEN_KEY]
        assert guard == str(S + R * HB)
    rebuilt = build_torch_model(meta)
    inp = _inputs(77, seed=12)
    sess = ort.InferenceSession(str(exported["float32"]), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["last_hidden_state"], {k: v.numpy() for k, v in inp.items()})
    with torch.no_grad():
        out = rebuilt(**inp)["last_hidden_state"]
    assert_close(out, got, atol=2e-5, rtol=2e-5, name="rebuilt vs ORT")
