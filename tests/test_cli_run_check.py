"""``sparse-attn run`` and ``sparse-attn check`` on toy ONNX models (in-process CLI calls),
plus a Polygraphy round trip of ``check --save-outputs``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_runtime import (  # noqa: F401  (toy_family is an autouse fixture)
    _ToyTorch,
    build_toy_float_model,
    build_toy_text_model,
    toy_family,
)

from sparse_attn.cli import main
from sparse_attn.errors import InvalidInputError

POLYGRAPHY = Path(sys.executable).with_name("polygraphy")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    return build_toy_text_model(d / "text.onnx"), build_toy_float_model(d / "float.onnx")


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_texts_table_and_json(models, capsys):
    text, _ = models
    code, out, err = _run(capsys, "run", text, "--text", "The cat sat.", "--text", "A dog ran.")
    assert code == 0, err
    assert "cosine similarity" in out and "embeddings" in out
    code, out, err = _run(
        capsys, "run", text, "--text", "The cat sat.", "--text", "A dog ran.", "--json"
    )
    assert code == 0, err
    rep = json.loads(out)
    emb = np.array(rep["embeddings"])
    assert emb.shape == (2, 8) and rep["num_texts"] == 2
    # cosine table equals an independent computation from the printed embeddings
    n = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(np.array(rep["cosine"]), n @ n.T, atol=1e-5)
    assert rep["tokens"][0] == 6  # [CLS] the cat sat . [SEP]


def test_run_input_file_lines_jsonl_and_truncation_warning(models, capsys, tmp_path):
    text, _ = models
    f = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": f"Sentence number {i}."}) for i in range(20)]
    lines.append("a plain line " + "word " * 60)
    f.write_text("\n".join(lines) + "\n")
    code, out, err = _run(capsys, "run", text, "--input-file", f, "--batch-size", "8", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["num_texts"] == 21 and rep["truncated"][-1] and not rep["truncated"][0]
    assert rep["tokens"][-1] == 40
    assert "warning: text 20 has more than 40 tokens" in err


def test_run_refusals_exit_2(models, capsys, tmp_path):
    text, flt = models
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    for argv in (
        ("run", bad, "--text", "x"),
        ("run", tmp_path / "missing.onnx", "--text", "x"),
        ("run", text),
        ("run", flt, "--text", "x"),
        ("run", text, "--backend", "nope", "--text", "x"),
        ("check", bad),
    ):
        code, out, err = _run(capsys, *argv)
        assert code == 2, (argv, out, err)
        assert err.startswith("sparse-attn: error:") and len(err.strip().splitlines()) == 1, err


def test_run_npz_for_array_models(models, capsys, tmp_path):
    _, flt = models
    f = tmp_path / "in.npz"
    x = np.ones((2, 3, 4), np.float32)
    np.savez(f, x=x, key_padding_mask=np.array([[1, 1, 0], [1, 1, 1]], bool))
    code, out, err = _run(capsys, "run", flt, "--input-file", f, "--json")
    assert code == 0, err
    rep = json.loads(out)["outputs"]["output"]
    assert rep["shape"] == [2, 3, 4] and rep["mean"] == pytest.approx(2.0 * 20 / 24)
    np.savez(f, x=x.astype(np.float64))
    code, out, err = _run(capsys, "run", flt, "--input-file", f)
    assert code == 2 and "expected dtype float32, received float64" in err


def test_check_json_keys_and_exit_codes(models, capsys, monkeypatch):
    text, flt = models
    code, out, err = _run(capsys, "check", text, "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["backend"] == "onnxruntime" and rep["reference"] == "torch" and rep["passed"]
    for m in rep["outputs"].values():
        assert {"max_abs_err", "max_rel_err", "mismatch_fraction", "tolerance", "passed"} <= set(m)
    code, out, err = _run(capsys, "check", flt)
    assert code == 0 and "passed" in out
    orig = _ToyTorch.__init__

    def biased(self, cfg):
        orig(self, cfg)
        self.bias = 1e-3

    monkeypatch.setattr(_ToyTorch, "__init__", biased)
    code, out, err = _run(capsys, "check", flt, "--json")
    assert code == 1
    rep = json.loads(out)
    assert not rep["passed"] and rep["outputs"]["output"]["max_abs_err"] == pytest.approx(
        1e-3, rel=1e-3
    )


@pytest.mark.skipif(not POLYGRAPHY.exists(), reason="polygraphy CLI not installed in this venv")
def test_save_outputs_polygraphy_round_trip(models, capsys, tmp_path):
    _, flt = models
    golden = tmp_path / "ref.json"
    code, out, err = _run(capsys, "check", flt, "--save-outputs", golden, "--json")
    assert code == 0, err
    rep = json.loads(out)
    inputs = Path(rep["saved_inputs"])
    assert golden.exists() and inputs.exists()
    cmd = [str(POLYGRAPHY), "run", str(flt), "--onnxrt", "--load-inputs", str(inputs)]
    ok = subprocess.run([*cmd, "--load-outputs", str(golden)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "PASSED" in ok.stdout + ok.stderr
    # the comparison can fail: perturb the saved reference and expect polygraphy to say so
    from polygraphy.comparator import RunResults

    results = RunResults.load(str(golden))
    for _, iters in results.items():
        for it in iters:
            it["output"] = np.asarray(it["output"]) + 1.0
    bad = tmp_path / "bad.json"
    results.save(str(bad))
    fail = subprocess.run([*cmd, "--load-outputs", str(bad)], capture_output=True, text=True)
    assert fail.returncode != 0, fail.stdout[-2000:]


def test_help_lists_options(capsys):
    code, out, _ = _run(capsys, "check", "--help")
    assert code == 0 and "--save-outputs" in out and "--json" in out
    code, out, _ = _run(capsys, "run", "--help")
    assert code == 0 and "--input-file" in out


@pytest.fixture(scope="module")
def attention_model(tmp_path_factory):
    attention = pytest.importorskip("sparse_attn.export.attention")
    path = tmp_path_factory.mktemp("att") / "att.onnx"
    attention.export_onnx(
        path,
        pattern="band(w=5) | global(n=2)",
        block_size=16,
        max_seq_len=40,
        num_heads=2,
        head_dim=8,
    )
    return path


def test_check_attention_model_against_dense_oracle(attention_model, capsys, tmp_path):
    """``check --json`` on an exported attention model: its numbers equal an independent
    measurement, and the backend output matches the dense masked oracle (the contract's formulas)."""
    import torch

    from sparse_attn.kernels import block_sparse_attention
    from sparse_attn.layout import compile_layout
    from sparse_attn.runtime import Runtime
    from sparse_attn.runtime.compare import check_model

    code, out, err = _run(capsys, "check", attention_model, "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["family"] == "attention" and rep["passed"]
    assert rep["inputs"]["query"] == [2, 2, 37, 8]  # ragged S = max_seq_len - 3
    _, feeds, got, exp = check_model(attention_model, "onnxruntime")
    d = np.abs(got["output"].astype(np.float64) - exp["output"].astype(np.float64))
    assert rep["outputs"]["output"]["max_abs_err"] == pytest.approx(float(d.max()), abs=1e-12)
    layout = compile_layout("band(w=5) | global(n=2)", seq_len=40, block_size=16, num_heads=2)
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    oracle = block_sparse_attention(
        t["query"].double(),
        t["key"].double(),
        t["value"].double(),
        layout,
        key_padding_mask=t["key_padding_mask"].bool(),
        backend="reference",
    ).numpy()
    err_o = np.abs(got["output"] - oracle)
    i = np.unravel_index(int(np.argmax(err_o)), err_o.shape)
    assert err_o.max() < 1e-5, f"worst at {i}: got {got['output'][i]} expected {oracle[i]}"
    # the same arrays through `run --input-file F.npz`
    f = tmp_path / "in.npz"
    np.savez(f, **feeds)
    code, out, err = _run(capsys, "run", attention_model, "--input-file", f, "--json")
    assert code == 0, err
    summary = json.loads(out)["outputs"]["output"]
    assert summary["shape"] == [2, 2, 37, 8]
    assert summary["absmax"] == pytest.approx(float(np.abs(oracle).max()), rel=1e-5)
    rt = Runtime(attention_model)
    with pytest.raises(InvalidInputError, match="exceeds the model's max_seq_len 40"):
        rt.run(
            {
                k: np.concatenate([v, v], axis=-1 if k == "key_padding_mask" else 2)
                for k, v in feeds.items()
            }
        )


def test_check_text_family_without_tokenizer_uses_seeded_ids(tmp_path):
    """Random-weight text families (no tokenizer) are checked on seeded random token ids."""
    import json as _json
    import subprocess as _sp
    import sys as _sys

    out = tmp_path / "mistral.onnx"
    cmd = [_sys.executable, "-m", "sparse_attn.cli"]
    exp = _sp.run(
        [
            *cmd,
            "export",
            "--model",
            "mistral",
            "--block-size",
            "16",
            "--max-seq-len",
            "32",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert exp.returncode == 0, exp.stderr
    chk = _sp.run([*cmd, "check", str(out), "--json"], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stderr
    report = _json.loads(chk.stdout)
    assert report["passed"] is True and report["seed"] == 0 and report["num_texts"] is None
    assert report["inputs"]["input_ids"] == [2, 29]
