"""Longformer and BigBird adapters taking a checkpoint directory (their attention bypasses
transformers' registry, so they keep their own forwards)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse_attn.cli import main
from sparse_attn.export import bigbird, longformer

ort = pytest.importorskip("onnxruntime")


def _inputs(s, vocab=512, pad=5):
    g = torch.Generator().manual_seed(s)
    ids = torch.randint(3, vocab, (2, s), generator=g)
    mask = torch.ones(2, s, dtype=torch.int64)
    mask[1, s - pad :] = 0
    return ids, mask


@pytest.fixture(scope="module")
def longformer_dir(tmp_path_factory):
    from transformers import LongformerConfig, LongformerModel

    torch.manual_seed(1)
    cfg = LongformerConfig(**longformer.DEFAULT_CONFIG)
    d = tmp_path_factory.mktemp("lf") / "ckpt"
    LongformerModel(cfg, add_pooling_layer=False).save_pretrained(str(d))
    return d


def test_longformer_checkpoint_matches_hf(longformer_dir):
    from transformers import LongformerModel

    hf = LongformerModel.from_pretrained(str(longformer_dir), add_pooling_layer=False).eval()
    model = longformer.build_model(block_size=16, max_seq_len=128, model_dir=longformer_dir)
    ids, mask = _inputs(77)
    ref = longformer.hf_reference(hf, ids, mask)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)["last_hidden_state"]
    real = mask.bool()
    assert float((out - ref)[real].abs().max()) < 1e-5


def test_longformer_checkpoint_exports_by_path(longformer_dir, tmp_path, capsys):
    from transformers import LongformerModel

    out = tmp_path / "lf.onnx"
    argv = ["export", "--model", str(longformer_dir), "--max-seq-len", "128", "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    hf = LongformerModel.from_pretrained(str(longformer_dir), add_pooling_layer=False).eval()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for s in (77, 45):
        ids, mask = _inputs(s)
        (got,) = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        ref = longformer.hf_reference(hf, ids, mask).numpy()
        real = mask.numpy().astype(bool)
        assert np.abs(got - ref)[real].max() < 1e-4


def test_bigbird_checkpoint_matches_hf(tmp_path):
    from transformers import BigBirdConfig, BigBirdModel

    torch.manual_seed(2)
    d = tmp_path / "bb"
    BigBirdModel(BigBirdConfig(**bigbird.DEFAULT_CONFIG)).save_pretrained(str(d))
    hf = BigBirdModel.from_pretrained(str(d)).eval()
    model = bigbird.build_model(block_size=16, max_seq_len=256, model_dir=d)
    ids, mask = _inputs(256, pad=40)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask)
        out = model(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    assert float((out["last_hidden_state"] - ref.last_hidden_state)[real].abs().max()) < 1e-5
    assert float((out["pooler_output"] - ref.pooler_output).abs().max()) < 1e-5


def test_adapter_refuses_another_architecture(tmp_path):
    from transformers import BertConfig, BertModel

    from sparse_attn.errors import InvalidInputError

    d = tmp_path / "bert"
    BertModel(
        BertConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).save_pretrained(str(d))
    with pytest.raises(InvalidInputError, match="not longformer"):
        longformer.build_model(block_size=16, max_seq_len=64, model_dir=d)
