"""Tiny random Hugging Face checkpoints for the checkpoint-export tests.

Each entry is ``model_type -> (config kwargs, window)``: 2-4 layers, hidden 32, vocabulary
128, special ids inside the vocabulary, a sliding window small enough that a 50-90 token
input crosses it. ``save_tiny(name, dir)`` writes ``config.json`` + ``model.safetensors``
with ``save_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

_DECODER = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_ENCODER = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    max_position_embeddings=512,
    pad_token_id=0,
)

#: model_type -> (config kwargs, the model's window in tokens or None)
TINY = {
    "bert": (dict(_ENCODER, num_hidden_layers=2), None),
    "llama": (dict(_DECODER, num_hidden_layers=2), None),
    "mistral": (dict(_DECODER, num_hidden_layers=2, sliding_window=20), 20),
    "qwen2": (
        dict(
            _DECODER,
            num_hidden_layers=3,
            sliding_window=20,
            use_sliding_window=True,
            max_window_layers=1,
        ),
        20,
    ),
    "gemma2": (
        dict(_DECODER, num_hidden_layers=2, sliding_window=20, attn_logit_softcapping=None),
        20,
    ),
    "gemma3_text": (
        dict(_DECODER, num_hidden_layers=3, sliding_window=20, sliding_window_pattern=3),
        20,
    ),
    "modernbert": (
        dict(
            _ENCODER,
            num_hidden_layers=3,
            local_attention=16,
            global_attn_every_n_layers=3,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
        ),
        16,
    ),
    "cohere2": (dict(_DECODER, num_hidden_layers=4, sliding_window=20), 20),
}


def save_tiny(model_type: str, directory: Path, seed: int = 0, **overrides) -> Path:
    """Write a tiny random checkpoint of ``model_type`` to ``directory`` (safetensors)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from sparse_attn.models.layers import is_causal

    kwargs, _ = TINY[model_type]
    cfg = AutoConfig.for_model(model_type, **{**kwargs, **overrides})
    cls = AutoModelForCausalLM if is_causal(cfg) else AutoModel
    torch.manual_seed(seed)
    model = cls.from_config(cfg)
    directory = Path(directory)
    model.save_pretrained(str(directory))
    return directory


def save_tiny_tokenizer(directory: Path, vocab_size: int = 128) -> Path:
    """A word-level ``tokenizer.json`` with ``vocab_size`` ids (0 <pad>, 1 <bos>, 2 <eos>,
    3 <unk>, then common English words), prepending <bos> like Gemma's tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = (
        "the of and a to in is was that for it as with on by at from his her they be this "
        "light ship keeper night sea lamp log family tower storm water wind boat year day "
        "had were their which but one all an or not he she we you so no when there first "
        "new over through every until after before more most only then time work life long "
        "house headland village path winter spring keeper's rocks reef beam glass oil men "
        "who could would what them into out up down these those some than its can will may "
        "old two three four five six seven eight nine ten many much very also just now here"
    ).split()
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for w in words:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 1)]
    )
    out = Path(directory) / "tokenizer.json"
    tok.save(str(out))
    return out
