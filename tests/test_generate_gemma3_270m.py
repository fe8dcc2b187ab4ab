"""Gemma 3 270M (real weights): greedy generation from the export equals transformers' generate.

Slow (an export of a 268M-parameter model and transformers' generate on prompts of ~100, 700
and 2,000 tokens, the last two beyond the 512-token window). Skipped when the converted
checkpoint is not installed (``make install`` converts it).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")

LENGTHS = (100, 700, 2000)
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def gemma3_270m(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from sparse_attn.errors import SparseAttnError
    from sparse_attn.export.generate import export_checkpoint
    from sparse_attn.models import checkpoint as ckpt

    try:
        path = ckpt.resolve("gemma3-270m")
    except SparseAttnError as exc:
        pytest.skip(f"gemma3-270m is not installed: {exc}")
    out = tmp_path_factory.mktemp("gemma3_270m_gen")
    res = export_checkpoint(path, out, max_seq_len=2048, block_size=64, verbose=False)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), attn_implementation="eager", dtype=torch.float32
    ).eval()
    return model, res


def _prompts(gen):
    from importlib.resources import files

    text = files("sparse_attn.models").joinpath("data/long_text.txt").read_text()
    ids = gen.encode([text * 4])[0]
    assert len(ids) >= max(LENGTHS)
    return [ids[:n] for n in LENGTHS]


def test_greedy_tokens_equal_hf_generate(gemma3_270m):
    from sparse_attn.runtime.generate import Generator, left_pad

    model, res = gemma3_270m
    gen = Generator(res.directory)
    prompts = _prompts(gen)
    for batch in ([prompts[0]], [prompts[1]], [prompts[2]], prompts):
        ids, mask = left_pad(batch, 0)
        got = gen.generate(ids, mask, max_new_tokens=NEW_TOKENS, stop_token_ids=[])
        with torch.no_grad():
            ref = model.generate(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )[:, ids.shape[1] :].numpy()
        assert np.array_equal(got, ref), ([len(p) for p in batch], got, ref)
        for name, shape in gen.last_cache_shapes.items():
            layer = int(name.split(".")[1])
            if res.info["layers"][layer]["kind"] == "sliding":
                assert shape[2] == 511
