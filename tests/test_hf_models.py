"""Checkpoint export through transformers' attention registry vs the unmodified model.

For each architecture a tiny random checkpoint is written with ``save_pretrained``, then
exported by path; ONNX Runtime's outputs are compared with the *unmodified* Hugging Face model
(``attn_implementation="eager"``, its own sliding-window masks) loaded from the same directory,
at two lengths from one file, longer than the window and not a multiple of the block, on
real-token positions (a padded row may see no key: the op gives 0 there, transformers a
uniform average).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from hf_tiny import TINY, save_tiny

from sparse_attn.cli import main
from sparse_attn.models import family
from sparse_attn.models.layers import layer_patterns

ort = pytest.importorskip("onnxruntime")

BLOCK = 16
MAX_S = 128
#: Two lengths from one file: both longer than every window (20) and not multiples of 16.
LENGTHS = (77, 45)
#: Architectures exported in the default (fast) run; the others are marked slow.
FAST_EXPORTS = ("gemma3_text", "modernbert")


def _inputs(s: int, seed: int, vocab: int = 128, pad: int = 6):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2, s), generator=g)
    mask = torch.ones(2, s, dtype=torch.int64)
    mask[1, s - pad :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _unmodified(directory):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from sparse_attn.models.layers import is_causal

    cfg = AutoConfig.from_pretrained(str(directory))
    cls = AutoModelForCausalLM if is_causal(cfg) else AutoModel
    return cls.from_pretrained(str(directory), attn_implementation="eager").eval()


def _hf_outputs(hf, inputs, attention_mask=None) -> dict:
    with torch.no_grad():
        out = hf(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"] if attention_mask is None else attention_mask,
        )
    if getattr(out, "logits", None) is not None:
        return {"logits": out.logits}
    return {"last_hidden_state": out.last_hidden_state}


def _assert_real_close(got: np.ndarray, exp: np.ndarray, mask, name, atol=1e-4, rtol=1e-4):
    real = mask.numpy().astype(bool)
    g, e = got[real].astype(np.float64), exp[real].astype(np.float64)
    err = np.abs(g - e)
    bad = err > atol + rtol * np.abs(e)
    if bad.any():
        idx = np.unravel_index(int(np.argmax(err)), err.shape)
        pytest.fail(
            f"{name}: {bad.mean():.3%} of real-token elements out of tolerance; worst at {idx}: "
            f"onnxruntime {g[idx]!r}, transformers {e[idx]!r}"
        )


@pytest.fixture(scope="module")
def ckpt_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {name: save_tiny(name, root / name) for name in TINY}


# ----------------------------------------------------------------------------- patterns
EXPECTED = {
    "bert": ["dense()"] * 2,
    "llama": ["dense() | causal"] * 2,
    "mistral": ["band(w=19) | causal"] * 2,
    "qwen2": ["dense() | causal", "band(w=19) | causal", "band(w=19) | causal"],
    "gemma2": ["band(w=19) | causal", "dense() | causal"],
    "gemma3_text": ["band(w=19) | causal", "band(w=19) | causal", "dense() | causal"],
    "modernbert": ["dense()", "band(w=8)", "band(w=8)"],
    "cohere2": ["band(w=19) | causal"] * 3 + ["dense() | causal"],
}


@pytest.mark.parametrize("name", list(TINY))
def test_layer_patterns_from_config(name):
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(name, **TINY[name][0])
    assert [lp.pattern for lp in layer_patterns(cfg, MAX_S)] == EXPECTED[name]


@pytest.mark.parametrize("name", list(TINY))
def test_sparse_torch_matches_unmodified(ckpt_dirs, name):
    """The registry path (PyTorch, the op) equals transformers eager at S > window."""
    model = family.build_model(ckpt_dirs[name], block_size=BLOCK, max_seq_len=MAX_S)
    ref = _unmodified(ckpt_dirs[name])
    for s in LENGTHS:
        inp = _inputs(s, seed=s)
        with torch.no_grad():
            got = model(**inp)
        exp = _hf_outputs(ref, inp)
        for k, e in exp.items():
            _assert_real_close(got[k].numpy(), e.numpy(), inp["attention_mask"], k, 1e-5, 1e-5)


# ----------------------------------------------------------------------------- export
def _export(directory, out, *extra):
    code = main(
        [
            "export",
            "--model",
            str(directory),
            "--block-size",
            str(BLOCK),
            "--max-seq-len",
            str(MAX_S),
            *extra,
            "-o",
            str(out),
        ]
    )
    assert code == 0
    return out


@pytest.mark.parametrize(
    "name",
    [n if n in FAST_EXPORTS else pytest.param(n, marks=pytest.mark.slow) for n in TINY],
)
def test_export_by_path_matches_unmodified(ckpt_dirs, tmp_path, capsys, name):
    out = _export(ckpt_dirs[name], tmp_path / f"{name}.onnx")
    printed = capsys.readouterr().out
    assert "unmodified-model check" in printed and "PASS" in printed
    model = onnx.load(str(out), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    table = json.loads(meta[family.LAYER_PATTERNS_KEY])
    assert [r["pattern"] for r in table] == EXPECTED[name]
    n_nodes = sum(n.op_type == "BlockSparseAttention" for n in model.graph.node)
    assert n_nodes == len(EXPECTED[name])
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ref = _unmodified(ckpt_dirs[name])
    for s in LENGTHS:
        inp = _inputs(s, seed=100 + s)
        got = dict(
            zip(
                [o.name for o in sess.get_outputs()],
                sess.run(None, {k: v.numpy() for k, v in inp.items()}),
                strict=True,
            )
        )
        for k, e in _hf_outputs(ref, inp).items():
            assert got[k].shape == tuple(e.shape)
            _assert_real_close(got[k], e.numpy(), inp["attention_mask"], f"{name} {k} S={s}")


def test_llama_with_user_window_matches_hf_with_the_same_mask(ckpt_dirs, tmp_path, capsys):
    """A user window on Llama (no window of its own) equals transformers eager given the
    window as a 4D additive mask; the CLI warns nothing (no model window is replaced)."""
    out = _export(ckpt_dirs["llama"], tmp_path / "llama.onnx", "--pattern", "band(w=15)")
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert "band(w=15) | causal" in captured.out
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ref = _unmodified(ckpt_dirs["llama"])
    for s in LENGTHS:
        inp = _inputs(s, seed=s)
        i = torch.arange(s)
        allowed = ((i[:, None] - i[None, :]).abs() <= 15) & (i[None, :] <= i[:, None])
        allowed = allowed[None, None] & inp["attention_mask"].bool()[:, None, None, :]
        add = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        exp = _hf_outputs(ref, inp, attention_mask=add)["logits"]
        (got,) = sess.run(None, {k: v.numpy() for k, v in inp.items()})
        _assert_real_close(got, exp.numpy(), inp["attention_mask"], f"llama logits S={s}")


def test_user_pattern_over_a_model_window_warns_and_records_both(ckpt_dirs, tmp_path, capsys):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(ckpt_dirs["gemma3_text"]))
    with pytest.warns(UserWarning, match="replaces the model's own sliding window"):
        pats = layer_patterns(cfg, MAX_S, "band(w=7)", "sliding")
    assert [p.pattern for p in pats] == ["band(w=7) | causal"] * 2 + ["dense() | causal"]
    assert pats[0].model_pattern == "band(w=19) | causal" and pats[0].source == "user"
    assert pats[2].source == "config"


@pytest.mark.parametrize(
    "layers, expected",
    [("all", [0, 1, 2, 3]), ("sliding", [0, 1, 2]), ("full", [3]), ("0-1,3", [0, 1, 3])],
)
def test_layers_selection(layers, expected):
    from sparse_attn.models.layers import parse_layers

    kinds = ["sliding", "sliding", "sliding", "full"]
    assert parse_layers(layers, kinds) == expected


# ----------------------------------------------------------------------------- errors
def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_directory_without_weights(tmp_path, capsys, ckpt_dirs):
    d = tmp_path / "noweights"
    d.mkdir()
    (d / "config.json").write_text((ckpt_dirs["llama"] / "config.json").read_text())
    code, err = _err(capsys, ["export", "--model", str(d), "-o", str(tmp_path / "x.onnx")])
    assert code == 2 and len(err.splitlines()) == 1 and "holds no weights" in err


def test_bin_only_checkpoint_is_refused(tmp_path, capsys, ckpt_dirs):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((ckpt_dirs["llama"] / "config.json").read_text())
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    code, err = _err(capsys, ["export", "--model", str(d), "-o", str(tmp_path / "x.onnx")])
    assert code == 2 and len(err.splitlines()) == 1 and "pickle" in err


def test_remote_code_is_refused(tmp_path, capsys, ckpt_dirs):
    d = tmp_path / "remote"
    d.mkdir()
    cfg = json.loads((ckpt_dirs["llama"] / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.Model"}
    (d / "config.json").write_text(json.dumps(cfg))
    code, err = _err(capsys, ["export", "--model", str(d), "-o", str(tmp_path / "x.onnx")])
    assert code == 2 and len(err.splitlines()) == 1 and "auto_map" in err


def test_unsupported_architecture_lists_supported(tmp_path, capsys, ckpt_dirs):
    d = tmp_path / "unknown"
    d.mkdir()
    cfg = json.loads((ckpt_dirs["llama"] / "config.json").read_text())
    cfg["model_type"] = "no_such_architecture"
    (d / "config.json").write_text(json.dumps(cfg))
    code, err = _err(capsys, ["export", "--model", str(d), "-o", str(tmp_path / "x.onnx")])
    assert code == 2 and len(err.splitlines()) == 1
    assert "unsupported architecture" in err and "gemma3_text" in err and "modernbert" in err


def test_window_larger_than_max_seq_len(tmp_path, capsys, ckpt_dirs):
    argv = ["export", "--model", str(ckpt_dirs["mistral"]), "--max-seq-len", "16"]
    code, err = _err(capsys, [*argv, "-o", str(tmp_path / "x.onnx")])
    assert code == 2 and len(err.splitlines()) == 1 and "exceeds max_seq_len=16" in err


def test_layout_model_prints_the_per_layer_table(ckpt_dirs, capsys):
    assert main(["layout", "--model", str(ckpt_dirs["qwen2"]), "--max-seq-len", "100"]) == 0
    out = capsys.readouterr().out
    assert "band(w=19) | causal" in out and "dense() | causal" in out
    assert main(["layout", "--model", str(ckpt_dirs["qwen2"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["kind"] for r in data["layers"]] == ["full", "sliding", "sliding"]
    assert data["layers"][1]["window"] == 20


# ----------------------------------------------------------------------------- more archs
_DEC = {k: v for k, v in TINY["llama"][0].items() if k != "num_hidden_layers"}
_ENC = {k: v for k, v in TINY["bert"][0].items() if k != "num_hidden_layers"}
MORE = {
    "qwen3": dict(
        _DEC, num_hidden_layers=2, use_sliding_window=True, sliding_window=20, max_window_layers=1
    ),
    "phi3": dict(_DEC, num_hidden_layers=2, sliding_window=20),
    "starcoder2": dict(_DEC, num_hidden_layers=2, sliding_window=20),
    "gpt2": dict(
        vocab_size=128,
        n_embd=32,
        n_head=4,
        n_layer=2,
        n_positions=256,
        architectures=["GPT2LMHeadModel"],
    ),
    "roberta": dict(
        _ENC,
        num_hidden_layers=2,
        max_position_embeddings=258,
        pad_token_id=1,
        architectures=["RobertaModel"],
    ),
    "distilbert": dict(
        vocab_size=128,
        dim=32,
        hidden_dim=64,
        n_heads=4,
        n_layers=2,
        architectures=["DistilBertModel"],
    ),
}


@pytest.mark.parametrize("name", list(MORE))
def test_more_architectures_torch_path_matches_unmodified(tmp_path, name):
    """Architectures beyond the verified list: the registry path equals transformers eager
    (the export-time check that vouches for unseen architectures)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from sparse_attn.models.layers import is_causal

    cfg = AutoConfig.for_model(name, **MORE[name])
    torch.manual_seed(0)
    (AutoModelForCausalLM if is_causal(cfg) else AutoModel).from_config(cfg).save_pretrained(
        str(tmp_path)
    )
    model = family.build_model(tmp_path, block_size=BLOCK, max_seq_len=MAX_S)
    errs = family.hf_check(model, _inputs(77, seed=5))
    assert all(v < 1e-5 for v in errs.values()), errs


def test_attention_sinks_are_refused(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from sparse_attn.errors import InvalidInputError

    kw = dict(
        _DEC, num_hidden_layers=2, sliding_window=20, num_local_experts=2, num_experts_per_tok=1
    )
    AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt_oss", **kw)).save_pretrained(
        str(tmp_path)
    )
    with pytest.raises(InvalidInputError, match="attention sinks"):
        family.build_model(tmp_path, block_size=BLOCK, max_seq_len=MAX_S)


@pytest.mark.slow
def test_float16_export_stays_within_twice_hf_own_fp16_drift(ckpt_dirs, tmp_path):
    """fp16 ONNX (ONNX Runtime) vs the fp32 unmodified model, against HF fp16's own drift."""
    out = _export(ckpt_dirs["gemma3_text"], tmp_path / "g16.onnx", "--dtype", "float16")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ref = _unmodified(ckpt_dirs["gemma3_text"])
    inp = _inputs(77, seed=9)
    exp = _hf_outputs(ref, inp)["logits"].numpy()
    drift = np.abs(_hf_outputs(ref.half(), inp)["logits"].float().numpy() - exp)
    (got,) = sess.run(None, {k: v.numpy() for k, v in inp.items()})
    real = inp["attention_mask"].numpy().astype(bool)
    err = np.abs(got.astype(np.float32) - exp)[real].max()
    assert err <= 2 * drift[real].max() + 1e-3, (err, drift[real].max())


# ----------------------------------------------------------------------------- --logits last
@pytest.mark.parametrize("name", ["gemma3_text", "gemma2"])
def test_last_token_logits_export_matches_unmodified_head(ckpt_dirs, tmp_path, capsys, name):
    """``--logits last``: ``[B, 1, vocab]`` at each row's last real token equals the unmodified
    model's full logits gathered there (right padding, a one-token row, and Gemma 2's final
    logit soft-capping, which the gathered head must apply too)."""
    overrides = {"final_logit_softcapping": 0.05} if name == "gemma2" else {}
    ck = save_tiny(name, tmp_path / name, **overrides) if overrides else ckpt_dirs[name]
    out = _export(ck, tmp_path / f"{name}_last.onnx", "--logits", "last")
    assert "PASS" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert json.loads(meta["sparse_attn.model_config"])["logits"] == "last"
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ref = _unmodified(ck)
    for s in (*LENGTHS, 1):
        inp = _inputs(s, seed=200 + s, pad=min(6, s - 1))
        if s > 10:
            inp["attention_mask"][0, 1:] = 0  # a row with one real token
        got = sess.run(None, {k: v.numpy() for k, v in inp.items()})[0]
        full = _hf_outputs(ref, inp)["logits"]
        last = inp["attention_mask"].sum(-1) - 1
        exp = full[torch.arange(2), last].unsqueeze(1).numpy()
        assert got.shape == exp.shape == (2, 1, 128)
        np.testing.assert_allclose(got, exp, atol=1e-4, rtol=1e-4, err_msg=f"{name} S={s}")


def test_last_token_logits_refused_for_encoders(ckpt_dirs, tmp_path, capsys):
    argv = ["export", "--model", str(ckpt_dirs["bert"]), "--logits", "last"]
    code, err = _err(capsys, [*argv, "-o", str(tmp_path / "x.onnx")])
    assert code == 2 and len(err.splitlines()) == 1 and "causal LM" in err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow  # Inductor compiles the whole model (about 10 s)
def test_sparse_model_under_torch_compile_matches_unmodified(ckpt_dirs):
    """The registry path compiled by Inductor (what ``ours_torch_compiled`` of the bench
    runs) equals transformers eager at S > window, with padding."""
    model = family.build_model(ckpt_dirs["gemma3_text"], block_size=BLOCK, max_seq_len=MAX_S)
    compiled = torch.compile(model, dynamic=False)
    ref = _unmodified(ckpt_dirs["gemma3_text"])
    inp = _inputs(77, seed=5)
    with torch.no_grad():
        got = compiled(**inp)["logits"]
    exp = _hf_outputs(ref, inp)["logits"]
    _assert_real_close(got.numpy(), exp.numpy(), inp["attention_mask"], "compiled", 1e-5, 1e-5)
