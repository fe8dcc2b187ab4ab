"""Family-side checks: a --pattern that replaces Mistral's window says so and is recorded;
configs of other architectures are refused; text models record their vocabulary size."""

from __future__ import annotations

import pytest

from sparse_attn.errors import InvalidInputError, SparseAttnWarning
from sparse_attn.export import hf_common, mistral


@pytest.fixture
def captured(monkeypatch):
    seen = {}

    def fake_export_family(model, path, **kw):
        seen.update(kw, vocab=hf_common._vocab_size(model))
        return path

    monkeypatch.setattr(hf_common, "export_family", fake_export_family)
    return seen


def test_pattern_replacing_the_window_warns_and_is_recorded(captured, tmp_path):
    cfg = {"sliding_window": 24}
    with pytest.warns(SparseAttnWarning, match="replaces the model's own attention pattern"):
        mistral.export_onnx(
            tmp_path / "m.onnx", pattern="band(w=10)", block_size=16, max_seq_len=64, config=cfg
        )
    mc = captured["model_config"]
    assert mc["config_pattern"] == "band(w=23) | causal" and "band(w=10)" in str(mc["pattern"])
    assert captured["vocab"] == mistral.make_config(cfg).vocab_size


def test_own_window_given_as_pattern_does_not_warn(captured, tmp_path, recwarn):
    mistral.export_onnx(
        tmp_path / "m.onnx", pattern="band(w=23)", block_size=16, max_seq_len=64,
        config={"sliding_window": 24},
    )  # fmt: skip
    assert not [w for w in recwarn if issubclass(w.category, SparseAttnWarning)]


def test_foreign_or_malformed_configs_are_refused():
    from transformers import LlamaConfig, MistralConfig

    with pytest.raises(InvalidInputError, match="'llama' config"):
        mistral.make_config(LlamaConfig())
    with pytest.raises(InvalidInputError, match="dict of MistralConfig"):
        mistral.make_config(42)
    assert mistral.make_config(MistralConfig(sliding_window=8)).sliding_window == 8


def test_refusing_backend_message_says_cannot():
    import torch

    import sparse_attn
    from sparse_attn.errors import BackendNotSupportedError

    lay = sparse_attn.compile_layout("band(w=2)", 16, 16)
    q = torch.randn(1, 1, 16, 8)
    try:
        sparse_attn.block_sparse_attention(q, q, q, lay, backend="triton")
    except BackendNotSupportedError as exc:
        assert "backend 'triton' cannot take query" in str(exc), str(exc)
    else:  # pragma: no cover - only where Triton takes CPU tensors (TRITON_INTERPRET=1)
        pytest.skip("triton took the CPU inputs here")
