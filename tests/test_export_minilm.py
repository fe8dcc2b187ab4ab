"""MiniLM family: the real all-MiniLM-L6-v2 with sparse attention vs Hugging Face's BertModel.

References: Hugging Face ``BertModel`` with the pretrained weights, given (a) the plain
padding mask for a dense-equivalent pattern, (b) the pattern's token mask as a 4D boolean
mask ``[B, 1, S, S]`` (sdpa attention) for a sparse pattern. Outputs are compared on real
tokens (padded positions are don't-care: a padded row may have no visible key, where the op
outputs 0 and Hugging Face averages everything). Sentence embeddings are compared with the
mean pooling + L2 normalisation computed from the reference hidden states.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from testing import assert_close

from sparse_attn.errors import InvalidInputError
from sparse_attn.export import minilm

#: Sparse pattern whose effect shows already at a few dozen tokens.
SPARSE = "band(w=6) | global(n=1)"
MAX_S = 128
BLOCK = 16

SHORT_TEXTS = [
    "A man is eating food.",
    "The weather is lovely today, and the children are playing in the park.",
]
LONG_TEXTS = [
    "The history of the printing press begins in the fifteenth century, when movable type "
    "made it possible to produce books far more cheaply than by hand. Within a few decades "
    "presses had spread across Europe, literacy rose, and ideas travelled faster than ever "
    "before, changing religion, science and politics in ways nobody had predicted.",
    "Sparse attention keeps only some query-key pairs.",
    "Glaciers form where snow accumulates faster than it melts; over many years the snow "
    "compacts into ice, which slowly flows downhill under its own weight.",
]


def _inputs(texts):
    enc = minilm.tokenize(texts, MAX_S)
    return {k: torch.from_numpy(v) for k, v in enc.items()}


@pytest.fixture(scope="module")
def hf_sdpa():
    return minilm.load_hf_model("float32", attn_implementation="sdpa")


@pytest.fixture(scope="module")
def sparse_model():
    return minilm.build_model(SPARSE, block_size=BLOCK, max_seq_len=MAX_S)


def _hf_reference(hf, inputs, layout):
    """HF BertModel given the pattern's token mask & padding as a 4D bool mask."""
    ids, am = inputs["input_ids"], inputs["attention_mask"]
    s = ids.shape[1]
    tm = torch.from_numpy(layout.token_mask(s)[0])  # same pattern on every head
    mask4d = tm[None, None] & am.bool()[:, None, None, :]
    with torch.no_grad():
        h = hf(input_ids=ids, attention_mask=mask4d).last_hidden_state
    return h, minilm.mean_pool_normalize(h, am)


def _check(out, ref_h, ref_e, am, atol, name):
    real = am.bool().numpy()
    got_h = np.asarray(out["last_hidden_state"], dtype=np.float64)
    assert_close(got_h[real], ref_h.double().numpy()[real], atol=atol, rtol=atol, name=name + " h")
    assert_close(
        np.asarray(out["sentence_embedding"], dtype=np.float64),
        ref_e.double().numpy(),
        atol=atol,
        rtol=atol,
        name=name + " emb",
    )


def test_files_and_tokenizer():
    root = minilm.minilm_files()
    assert (root / "model.safetensors").is_file()
    enc = minilm.tokenize(["Hello world"], 16)
    # [CLS] hello world [SEP] with the model's vocabulary.
    assert enc["input_ids"].tolist() == [[101, 7592, 2088, 102]]
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1]]


def test_weights_checked_against_config():
    """A checkpoint with a wrong shape or a missing tensor is refused, naming the tensor."""
    from sparse_attn.export import hf_common

    lin = torch.nn.Linear(4, 3)
    with pytest.raises(InvalidInputError, match=r"wrong shapes.*weight"):
        hf_common.check_state_dict({"weight": [3, 5], "bias": [3]}, lin, source="w.safetensors")
    with pytest.raises(InvalidInputError, match=r"missing \['bias'\]"):
        hf_common.check_state_dict({"weight": [3, 4]}, lin, source="w.safetensors")
    hf_common.check_state_dict({"weight": [3, 4], "bias": [3]}, lin, source="w.safetensors")


def test_dense_pattern_reproduces_original_minilm():
    """A truly dense pattern gives Hugging Face's MiniLM (2D padding mask), fp32."""
    model = minilm.build_model(minilm.DENSE_PATTERN, block_size=32, max_seq_len=MAX_S)
    assert model.layout.stats()["density_tokens"] == 1.0
    hf = minilm.load_hf_model("float32", attn_implementation="eager")
    for texts in (SHORT_TEXTS, LONG_TEXTS):
        inp = _inputs(texts)
        with torch.no_grad():
            out = model(**inp)
            ref = hf(**inp).last_hidden_state
        _check(
            out,
            ref,
            minilm.mean_pool_normalize(ref, inp["attention_mask"]),
            inp["attention_mask"],
            1e-5,
            "dense",
        )


def test_sparse_pattern_matches_hf_4d_mask(sparse_model, hf_sdpa):
    lay = sparse_model.layout
    assert lay.stats()["density_tokens"] < 0.2
    for texts in (SHORT_TEXTS, LONG_TEXTS):
        inp = _inputs(texts)
        with torch.no_grad():
            out = sparse_model(**inp)
        ref_h, ref_e = _hf_reference(hf_sdpa, inp, lay)
        _check(
            out, ref_h, ref_e, inp["attention_mask"], 1e-5, f"sparse S={inp['input_ids'].shape[1]}"
        )
    # The pattern matters: the dense model differs on the long texts.
    inp = _inputs(LONG_TEXTS)
    with torch.no_grad():
        dense = hf_sdpa(**inp).last_hidden_state
        out = sparse_model(**inp)["last_hidden_state"]
    assert float((out - dense).abs().max()) > 1e-2


def test_bad_arguments_refused_before_work():
    with pytest.raises(InvalidInputError, match="512 position"):
        minilm.build_model(SPARSE, block_size=16, max_seq_len=513)
    with pytest.raises(InvalidInputError, match="dtype"):
        minilm.build_model(SPARSE, block_size=16, max_seq_len=64, dtype="bfloat17")
    with pytest.raises(InvalidInputError, match=".onnx"):
        minilm.export_onnx("out.txt", pattern=SPARSE, block_size=16, max_seq_len=64)


# ---------------------------------------------------------------------- ONNX (ORT)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("minilm")
    paths = {}
    for dtype in ("float32", "float16"):
        paths[dtype] = minilm.export_onnx(
            d / f"minilm_{dtype}.onnx",
            pattern=SPARSE,
            block_size=BLOCK,
            max_seq_len=MAX_S,
            dtype=dtype,
        )
    return paths


def _ort_run(path, inp):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    res = sess.run(names, {k: v.numpy() for k, v in inp.items()})
    return dict(zip(names, res, strict=True))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_onnx_matches_hf_at_two_lengths(exported, hf_sdpa, sparse_model, dtype):
    """One file, two sequence lengths. fp16 is compared with the fp32 reference and must stay
    within twice Hugging Face's own fp16 drift (HF fp16 vs HF fp32 on the same inputs)."""
    import onnx

    path = exported[dtype]
    model = onnx.load(str(path), load_external_data=False)
    ins = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }
    assert list(ins) == ["input_ids", "attention_mask"]
    assert isinstance(ins["input_ids"][0], str) and isinstance(ins["input_ids"][1], str), ins
    ops = [n for n in model.graph.node if n.op_type == "BlockSparseAttention"]
    assert len(ops) == 6 and all(n.domain == "sparse_attn" for n in ops)
    hf16 = (
        minilm.load_hf_model("float16", attn_implementation="sdpa") if dtype == "float16" else None
    )
    lengths = set()
    for texts in (SHORT_TEXTS, LONG_TEXTS):
        inp = _inputs(texts)
        lengths.add(inp["input_ids"].shape[1])
        out = _ort_run(path, inp)
        assert out["last_hidden_state"].dtype == np.dtype(dtype)
        ref_h, ref_e = _hf_reference(hf_sdpa, inp, sparse_model.layout)
        if hf16 is None:
            _check(out, ref_h, ref_e, inp["attention_mask"], 2e-5, "ORT float32")
            continue
        real = inp["attention_mask"].bool()
        h16, e16 = _hf_reference(hf16, inp, sparse_model.layout)
        drift_h = float((h16.double() - ref_h.double())[real].abs().max())
        drift_e = float((e16.double() - ref_e.double()).abs().max())
        got_h = out["last_hidden_state"].astype(np.float64)[real.numpy()]
        assert_close(
            got_h,
            ref_h.double().numpy()[real.numpy()],
            atol=2 * drift_h,
            rtol=0,
            name=f"ORT float16 h (HF fp16 drift {drift_h:.2e})",
        )
        assert_close(
            out["sentence_embedding"].astype(np.float64),
            ref_e.double().numpy(),
            atol=2 * drift_e,
            rtol=0,
            name=f"ORT float16 emb (drift {drift_e:.2e})",
        )
    assert len(lengths) == 2


def test_metadata_rebuilds_torch_model(exported):
    import onnx

    from sparse_attn.export import build_torch_model

    model = onnx.load(str(exported["float32"]), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["sparse_attn.model"] == "minilm"
    assert meta["sparse_attn.max_seq_len"] == str(MAX_S)
    cfg = json.loads(meta["sparse_attn.model_config"])
    assert cfg["pattern"] == SPARSE and cfg["block_size"] == BLOCK
    rebuilt = build_torch_model(meta)
    inp = _inputs(LONG_TEXTS)
    ort_out = _ort_run(exported["float32"], inp)
    with torch.no_grad():
        out = rebuilt(**inp)
    real = inp["attention_mask"].bool().numpy()
    assert_close(
        out["last_hidden_state"].numpy()[real],
        ort_out["last_hidden_state"][real],
        atol=2e-5,
        rtol=2e-5,
        name="rebuilt vs ORT",
    )


@pytest.mark.slow
def test_default_model_at_512_tokens(tmp_path, hf_sdpa):
    """The `make export` default (512 tokens, DEFAULT_PATTERN) vs HF with the 4D mask."""
    path = minilm.export_onnx(tmp_path / "minilm.onnx", block_size=32)
    model = minilm.build_model(block_size=32)
    texts = [" ".join(LONG_TEXTS) * 6, SHORT_TEXTS[1]]
    enc = minilm.tokenize(texts, 512)
    inp = {k: torch.from_numpy(v) for k, v in enc.items()}
    assert inp["input_ids"].shape[1] == 512
    out = _ort_run(path, inp)
    ref_h, ref_e = _hf_reference(hf_sdpa, inp, model.layout)
    _check(out, ref_h, ref_e, inp["attention_mask"], 1e-4, "ORT default S=512")
