"""``check`` and the text front end of a checkpoint export: the model's own tokenizer, the
unmodified Hugging Face model as the reference, inputs longer than the window."""

from __future__ import annotations

import json

import pytest
import torch
from hf_tiny import save_tiny, save_tiny_tokenizer

from sparse_attn.cli import main
from sparse_attn.models import family, layers

pytest.importorskip("onnxruntime")

BLOCK = 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfcheck")
    ckpt = save_tiny("gemma3_text", root / "ckpt")
    save_tiny_tokenizer(ckpt)
    out = root / "g3.onnx"
    family.export_onnx(out, model_dir=ckpt, block_size=BLOCK, max_seq_len=128, verbose=False)
    return ckpt, out


def test_check_compares_with_the_unmodified_model_beyond_the_window(exported, capsys):
    _, out = exported
    assert main(["check", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["reference"].startswith("transformers eager") and rep["passed"]
    s = rep["inputs"]["input_ids"][1]
    assert s > 20 and s % BLOCK != 0, s  # longer than the window (20), not a block multiple
    assert rep["outputs"]["logits"]["max_abs_err"] < 1e-4


def test_check_takes_texts_and_input_files(exported, tmp_path, capsys):
    _, out = exported
    text = "the keeper of the light kept the lamp burning through the storm " * 3
    assert main(["check", str(out), "--json", "--text", text]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["passed"] and rep["num_texts"] == 1
    f = tmp_path / "texts.txt"
    f.write_text("the sea\nthe ship was in the storm all night\n")
    assert main(["check", str(out), "--json", "--input-file", str(f)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["passed"] and rep["num_texts"] == 2


def test_runtime_uses_the_checkpoints_own_tokenizer(exported):
    from sparse_attn.runtime import Runtime

    ckpt, out = exported
    rt = Runtime(out)
    from tokenizers import Tokenizer

    own = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    texts = ["the keeper of the light", "the sea"]
    feeds = rt.encode(texts)
    first, second = (own.encode(t).ids for t in texts)
    assert first[0] == 1 and len(first) == 6  # <bos> prepended by the tokenizer itself
    assert feeds["input_ids"][0].tolist() == first
    assert feeds["input_ids"][1, : len(second)].tolist() == second
    assert feeds["attention_mask"][1].tolist() == [1] * len(second) + [0] * (6 - len(second))
    logits = rt.run(feeds)["logits"]
    assert logits.shape[:2] == (2, 6)


def test_a_wrong_window_fails_the_unmodified_model_check(exported, monkeypatch):
    """The export-time comparison catches an off-by-one window (a test that can fail)."""
    ckpt, _ = exported
    real = layers.window_pattern
    monkeypatch.setattr(
        layers,
        "window_pattern",
        lambda cfg, causal: real(cfg, causal).replace("w=19", "w=20"),
    )
    model = family.build_model(ckpt, block_size=BLOCK, max_seq_len=128)
    assert model.patterns[0].pattern == "band(w=20) | causal"
    inp = {"input_ids": torch.randint(3, 128, (1, 60)), "attention_mask": torch.ones(1, 60)}
    inp["attention_mask"] = inp["attention_mask"].long()
    with pytest.raises(RuntimeError, match="differs from the unmodified Hugging Face model"):
        family.hf_check(model, inp)


def test_run_a_causal_lm_shows_next_token_predictions(exported, capsys):
    from tokenizers import Tokenizer

    ckpt, out = exported
    assert main(["run", str(out), "--json", "--text", "the keeper of the", "--text", "sea"]) == 0
    rep = json.loads(capsys.readouterr().out)
    own = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    assert [r["tokens"] for r in rep["texts"]] == [5, 2]
    first = rep["texts"][0]
    assert len(first["next_token_ids"]) == 5
    assert first["next_tokens"][0] == own.decode([first["next_token_ids"][0]], False)
    assert first["next_logits"] == sorted(first["next_logits"], reverse=True)


def test_last_logits_export_runs_and_checks_like_the_full_one(exported, tmp_path, capsys):
    """``run`` and ``check`` on an export with ``logits="last"``: the same next-token
    predictions as the full-logits export, for texts of different lengths in one batch."""
    ckpt, out = exported
    last = tmp_path / "g3_last.onnx"
    family.export_onnx(
        last, model_dir=ckpt, block_size=BLOCK, max_seq_len=128, verbose=False, logits="last"
    )
    texts = ["--text", "the keeper of the light kept the lamp burning", "--text", "sea"]
    reps = []
    for path in (out, last):
        assert main(["run", str(path), "--json", *texts]) == 0
        reps.append(json.loads(capsys.readouterr().out)["texts"])
    for full_row, last_row in zip(*reps, strict=True):
        assert last_row["tokens"] == full_row["tokens"]
        assert last_row["next_token_ids"] == full_row["next_token_ids"]
        assert last_row["next_logits"] == pytest.approx(full_row["next_logits"], abs=1e-5)
    assert main(["check", str(last), "--json", *texts]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["passed"] and rep["outputs"]["logits"]["max_abs_err"] < 1e-4
