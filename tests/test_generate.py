"""Generation: options, sampling, padding, and a tiny hybrid decoder exported and run in ORT.

The exported generation (prefill + decode with a window-bounded cache, run by ONNX Runtime) is
compared token by token with the unmodified Hugging Face model's ``generate`` (greedy), on
prompts shorter and longer than the window, batch 1 and a left-padded batch of 3.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparse_attn.errors import InvalidInputError
from sparse_attn.runtime.generate import (
    SamplingOptions,
    check_options,
    left_pad,
    select_tokens,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 300
WINDOW = 8


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1, got 0"),
        ({"max_new_tokens": -3}, "max_new_tokens must be >= 1"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be an integer"),
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"temperature": float("nan")}, "temperature must be finite"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_check_options_refuses(kwargs, needle):
    with pytest.raises(InvalidInputError, match=None) as exc:
        check_options(**kwargs)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_left_pad_and_positions():
    from sparse_attn.export.generate import positions_from_mask

    ids, mask = left_pad([[5, 6, 7], [9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    with pytest.raises(InvalidInputError, match="prompt 1 is empty"):
        left_pad([[1], []], pad_id=0)
    with pytest.raises(InvalidInputError, match="no prompt"):
        left_pad([], pad_id=0)


def _opts(**kw):
    base = {"max_new_tokens": 1, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0}
    base.update(kw)
    return SamplingOptions(**base)


def test_select_greedy_topk1_and_tiny_topp_agree():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50)).astype(np.float32)
    greedy = select_tokens(logits, _opts(temperature=0.0), rng)
    assert greedy.tolist() == logits.argmax(-1).tolist()
    assert select_tokens(logits, _opts(top_k=1), rng).tolist() == greedy.tolist()
    assert select_tokens(logits, _opts(top_p=1e-6), rng).tolist() == greedy.tolist()


def test_select_sampling_follows_the_filtered_distribution():
    # 3 tokens with probabilities 0.5, 0.3, 0.2: top_p=0.6 keeps the first two (0.5 < 0.6),
    # top_k=2 keeps the same two; the third is never drawn, the ratio is 5:3.
    logits = np.log(np.array([[0.5, 0.3, 0.2]] * 4000))
    for opts in (_opts(top_p=0.6), _opts(top_k=2)):
        got = select_tokens(logits, opts, np.random.default_rng(1))
        assert not (got == 2).any()
        frac = float((got == 0).mean())
        assert abs(frac - 0.625) < 0.03, frac
    got = select_tokens(logits, _opts(), np.random.default_rng(2))
    assert abs(float((got == 2).mean()) - 0.2) < 0.03
    a = select_tokens(logits, _opts(), np.random.default_rng(5))
    b = select_tokens(logits, _opts(), np.random.default_rng(5))
    assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- tiny model
def _tokenizer(directory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2}
    vocab.update({f"w{i}": i for i in range(3, VOCAB)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )
    fast.save_pretrained(str(directory))


def tiny_gemma3(directory):
    """A tiny random Gemma 3 (3 sliding layers with W=8, then a full layer) saved to a dir."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=WINDOW,
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    model = Gemma3ForCausalLM(cfg).eval()
    model.save_pretrained(str(directory))
    _tokenizer(directory)
    return model


def _export(ckpt, out):
    """Generation export of a checkpoint directory (prefill through the sparse op), and the
    unmodified transformers model of the same directory (eager attention)."""
    from transformers import AutoModelForCausalLM

    from sparse_attn.export.generate import export_checkpoint

    res = export_checkpoint(ckpt, out, block_size=16, max_seq_len=64, verbose=False)
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), attn_implementation="eager").eval()
    return model, res


@pytest.fixture(scope="module")
def gemma3_export(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("gemma3_ckpt")
    tiny_gemma3(ckpt)
    return _export(ckpt, tmp_path_factory.mktemp("gemma3_gen"))


def _prompts(lengths, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _hf_greedy(model, ids, mask, n):
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    return out[:, ids.shape[1] :].numpy()


def test_export_writes_the_documented_files(gemma3_export):
    import onnx

    _, res = gemma3_export
    info = json.loads((res.directory / "generation.json").read_text())
    assert info["padding_side"] == "left"
    assert [lay["kind"] for lay in info["layers"]] == ["sliding"] * 3 + ["full"]
    assert [lay["window"] for lay in info["layers"]] == [WINDOW] * 3 + [None]
    assert (res.directory / "tokenizer.json").is_file()
    dec = onnx.load(str(res.decode), load_external_data=False)
    names = [i.name for i in dec.graph.input]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert [o.name for o in dec.graph.output][:2] == ["logits", "present.0.key"]
    # decode: standard ONNX ops only
    assert {n.domain for n in dec.graph.node} <= {"", "ai.onnx"}
    assert not dec.functions
    assert res.checks["prefill"] < 1e-3 and res.checks["decode"] < 1e-3


@pytest.mark.parametrize("length", [5, 30])
def test_greedy_batch1_matches_hf_generate(gemma3_export, length):
    import sparse_attn

    model, res = gemma3_export
    rt = sparse_attn.Runtime(res.directory)
    (prompt,) = _prompts([length])
    got = rt.generate([prompt], max_new_tokens=20, stop_token_ids=[])
    ids, mask = left_pad([prompt], 0)
    ref = _hf_greedy(model, ids, mask, 20)
    assert got.shape == (1, 20)
    assert np.array_equal(got, ref), (got, ref)


def test_greedy_batch3_left_padded_matches_hf_and_cache_is_bounded(gemma3_export):
    import sparse_attn

    model, res = gemma3_export
    rt = sparse_attn.Runtime(res.directory)
    prompts = _prompts([5, 13, 30], seed=4)
    got = rt.generate(prompts, max_new_tokens=24, stop_token_ids=[])
    ids, mask = left_pad(prompts, 0)
    ref = _hf_greedy(model, ids, mask, 24)
    assert np.array_equal(got, ref), (got, ref)
    # the sliding layers' cache never holds more than W - 1 positions; the full layer holds all
    shapes = rt._generator.last_cache_shapes
    total = ids.shape[1] + 24 - 1
    for i in range(3):
        assert shapes[f"present.{i}.key"][2] == WINDOW - 1
        assert shapes[f"present.{i}.value"][2] == WINDOW - 1
    assert shapes["present.3.key"][2] == total


def test_cache_bounded_at_every_step(gemma3_export):
    from sparse_attn.runtime.generate import Generator

    _, res = gemma3_export
    gen = Generator(res.directory)
    seen = []
    for _ in gen.stream(_prompts([3]), max_new_tokens=15, stop_token_ids=[]):
        if gen.last_cache_shapes:
            seen.append(gen.last_cache_shapes["present.0.key"][2])
    assert max(seen) == WINDOW - 1
    assert seen[0] == 4  # 3 prompt tokens + 1: below the window, nothing dropped yet


def test_sampling_is_reproducible_and_stops(gemma3_export):
    from sparse_attn.runtime.generate import Generator

    _, res = gemma3_export
    gen = Generator(res.directory)
    prompts = _prompts([6, 11])
    kw = {"max_new_tokens": 12, "temperature": 0.9, "top_k": 40, "top_p": 0.9, "seed": 11}
    a = gen.generate(prompts, **kw)
    b = gen.generate(prompts, **kw)
    assert np.array_equal(a, b)
    # a stop token ends a row: what follows is the pad token
    first = int(a[0, 0])
    c = gen.generate(prompts, stop_token_ids=[first], **kw)
    assert c[0, 0] == first and (c[0, 1:] == 0).all()


def test_text_prompts_and_bad_input(gemma3_export):
    import sparse_attn

    _, res = gemma3_export
    rt = sparse_attn.Runtime(res.directory)
    out = rt.generate("w5 w6 w7", max_new_tokens=3)
    assert out.shape[0] == 1 and 1 <= out.shape[1] <= 3
    with pytest.raises(InvalidInputError, match="empty"):
        rt.generate("   ", max_new_tokens=3)
    with pytest.raises(InvalidInputError, match="max_seq_len 64"):
        rt.generate([list(range(3, 70))], max_new_tokens=3)
    with pytest.raises(InvalidInputError, match="temperature"):
        rt.generate([[3, 4]], temperature=-1)
    it = rt.generate([[3, 4, 5]], max_new_tokens=4, stream=True, stop_token_ids=[])
    assert [t.shape for t in it] == [(1,)] * 4


def test_cli_generate(gemma3_export, capsys):
    from sparse_attn.cli import main

    _, res = gemma3_export
    d = str(res.directory)
    assert main(["generate", d, "--prompt", "w5 w6", "--max-new-tokens", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["tokens"]) == 1 and 1 <= len(data["tokens"][0]) <= 3
    long_prompt = " ".join(f"w{3 + i % 200}" for i in range(80))
    for args, needle in [
        (["--prompt", "", "--max-new-tokens", "3"], "empty"),
        (["--prompt", "w5", "--max-new-tokens", "0"], "max_new_tokens"),
        (["--prompt", "w5", "--temperature", "-1"], "temperature"),
        (["--prompt", long_prompt], "longer than"),
    ]:
        assert main(["generate", d, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err


def test_prefill_runs_the_sparse_op(gemma3_export):
    import onnx

    from sparse_attn import opspec

    _, res = gemma3_export
    pre = onnx.load(str(res.prefill), load_external_data=False)
    nodes = [n for n in pre.graph.node if n.op_type == opspec.OP_TYPE]
    assert len(nodes) == 4 and all(n.domain == opspec.DOMAIN for n in nodes)
    meta = {p.key: p.value for p in pre.metadata_props}
    assert "sparse_attn.generation" in meta and meta["sparse_attn.max_seq_len"] == "64"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mistral", "gemma2", "qwen2"])
def test_other_architectures_match_hf_generate(arch, tmp_path):
    """Tiny random Mistral / Gemma 2 / Qwen2 (sliding window) checkpoints: greedy tokens equal
    transformers' generate, batch 1 (shorter and longer than the window) and batch 3."""
    from hf_tiny import TINY, save_tiny

    import sparse_attn

    ckpt = save_tiny(arch, tmp_path / "ckpt")
    model, res = _export(ckpt, tmp_path / "gen")
    window = TINY[arch][1]
    rt = sparse_attn.Runtime(res.directory)
    g = torch.Generator().manual_seed(5)
    vocab = TINY[arch][0]["vocab_size"]
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (7, 33, 60)]
    for batch in ([prompts[0]], [prompts[2]], prompts):
        ids, mask = left_pad(batch, 0)
        got = rt.generate(ids, attention_mask=mask, max_new_tokens=30, stop_token_ids=[])
        assert np.array_equal(got, _hf_greedy(model, ids, mask, 30)), (arch, len(batch))
    sliding = [lay["index"] for lay in res.info["layers"] if lay["kind"] == "sliding"]
    assert sliding
    for i in sliding:
        assert rt._generator.last_cache_shapes[f"present.{i}.key"][2] == window - 1


def test_cli_export_task_generate_refuses_before_work(tmp_path, capsys):
    from sparse_attn.cli import main

    out = str(tmp_path / "gen")
    cases = [
        (["--model", "attention"], "--task generate takes a causal LM checkpoint"),
        (["--model", "some_dir", "--pattern", "band(w=3)"], "do not apply to --task generate"),
        (["--model", "some_dir", "--causal"], "do not apply to --task generate"),
    ]
    for args, needle in cases:
        assert main(["export", *args, "--task", "generate", "-o", out]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "gen").exists()
