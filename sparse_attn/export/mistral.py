"""Model family ``mistral``: a small Mistral decoder (sliding-window attention), prefill only.

Hugging Face's ``MistralForCausalLM`` is built from a small config with random weights drawn
from a fixed seed (no hub access) and runs through transformers' attention registry
(:mod:`sparse_attn.models.attention`), so each layer's attention core is
``sparse_attn::BlockSparseAttention``. Embeddings, RMSNorms, Q/K/V/O projections, rotary
embeddings, MLPs and the LM head are Hugging Face's own forward; grouped K/V
(``num_key_value_heads < num_attention_heads``) reach the op unrepeated. A checkpoint
directory of any Mistral goes through ``sparse-attn export --model PATH`` instead.

Sliding window, off by one: transformers' mask (``masking_utils.sliding_window_overlay``)
lets query ``i`` see key ``j`` when ``j <= i`` (causal) and ``j > i - sliding_window``: the
window holds ``sliding_window`` keys *including* the query itself. the contract's ``band(w=W)``
holds ``W`` neighbours on each side plus the query itself, so the Mistral pattern is
``band(w=sliding_window - 1)`` with ``causal``. (``sliding_window = None`` means full causal
attention.) Query ``i = W - 1`` still sees key 0; ``i = W`` no longer does.

ONNX inputs: ``input_ids`` int64 ``[B, S]``, ``attention_mask`` int64 ``[B, S]`` (1 = real
token; right padding; positions are ``0..S-1`` as in Hugging Face's default
``position_ids``). Outputs: ``logits`` ``[B, S, vocab]`` and ``last_hidden_state``
``[B, S, hidden]``. B and S dynamic.

Sources: sliding-window attention, Jiang et al., "Mistral 7B" (arXiv 2310.06825), Sec. 2;
rotary embeddings, Su et al., "RoFormer" (arXiv 2104.09864); grouped-query attention,
Ainslie et al., "GQA" (arXiv 2305.13245).
"""

from __future__ import annotations

import functools

from sparse_attn.errors import InvalidInputError
from sparse_attn.export import hf_common

NAME = "mistral"
DEFAULT_MAX_SEQ_LEN = 256
DEFAULT_BLOCK_SIZE = 16
DEFAULT_SEED = 0
#: Small config used when none is given (random weights, seed ``DEFAULT_SEED``).
DEFAULT_CONFIG = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "sliding_window": 24,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("logits", "last_hidden_state")

CLI_OPTIONS = {
    "sliding_window": {
        "type": "int",
        "help": "Mistral sliding window (keys per query, the query included)",
        "default": DEFAULT_CONFIG["sliding_window"],
    },
    "seed": hf_common.seed_cli_option(DEFAULT_SEED),
}


def sliding_window_pattern(sliding_window: int | None, max_seq_len: int) -> str:
    """The pattern (before the causal modifier) equal to Mistral's sliding window.

    ``sliding_window = W`` -> ``band(w=W-1)``: Hugging Face lets query ``i`` see keys
    ``i-W < j <= i`` (``W`` keys, the query included). ``None`` (no window) -> a band wide
    enough to hold every key, ``band(w=max_seq_len)``.

    Raises:
        InvalidInputError: ``sliding_window < 1``.
    """
    if sliding_window is None:
        return f"band(w={int(max_seq_len)})"
    w = hf_common.check_positive_int("sliding_window", sliding_window)
    return f"band(w={w - 1})"


def _canonical(pattern) -> str:
    """The expanded causal spec of a pattern given as text or object (else its ``str``)."""
    from sparse_attn.patterns import parse_pattern

    try:
        return parse_pattern(pattern).with_causal(True).spec()
    except Exception:  # noqa: BLE001 - a layout or per-head list: compare as given
        return str(pattern)


def _config_dict(config) -> dict:
    """``MistralConfig`` keyword overrides from a dict or a Hugging Face config object.

    Raises:
        InvalidInputError: a config of another architecture (e.g. a ``LlamaConfig``, whose
            missing ``sliding_window`` would silently become Mistral's default) or of a type
            that is neither a mapping nor a config object.
    """
    from collections.abc import Mapping

    from sparse_attn.errors import InvalidInputError

    if config is None:
        return {}
    if isinstance(config, Mapping):
        d = dict(config)
    elif callable(getattr(config, "to_dict", None)):
        d = config.to_dict()
    else:
        raise InvalidInputError(
            f"config must be a dict of MistralConfig fields or a MistralConfig, got "
            f"{type(config).__name__}"
        )
    kind = d.get("model_type")
    if kind not in (None, "mistral"):
        raise InvalidInputError(
            f"config is a {kind!r} config, not a Mistral one; the mistral family takes "
            "MistralConfig fields only (its sliding window would otherwise be made up)"
        )
    d.pop("model_type", None)
    return d


def make_config(config: dict | None = None, *, sliding_window: int | None = None):
    """``transformers.MistralConfig`` from ``DEFAULT_CONFIG`` updated with ``config``.

    ``attn_implementation`` is ``"eager"`` (the reference Hugging Face implementation).
    """
    from transformers import MistralConfig

    d = hf_common.merged_config(DEFAULT_CONFIG, _config_dict(config))
    if sliding_window is not None:
        d["sliding_window"] = sliding_window
    cfg = MistralConfig(**d)
    cfg._attn_implementation = "eager"
    return cfg


def load_hf_model(config: dict | None = None, *, seed: int = DEFAULT_SEED, dtype="float32"):
    """Hugging Face ``MistralForCausalLM`` with seeded random weights, eval mode, eager attention.

    Args:
        config: overrides of ``DEFAULT_CONFIG`` (``MistralConfig`` keyword arguments).
        seed: weights are drawn with ``torch.manual_seed(seed)`` in a forked RNG.
        dtype: ``"float32"`` or ``"float16"``.
    """
    from transformers import MistralForCausalLM

    return hf_common.seeded_hf_model(
        MistralForCausalLM, make_config(config), seed=seed, dtype=dtype
    )


@functools.cache
def _module_class():
    """The ``SparseMistral`` module class (defined lazily: importing this module stays cheap)."""
    import torch
    from torch import nn

    class SparseMistral(nn.Module):
        """``MistralForCausalLM`` (prefill) with ``sparse_attn::BlockSparseAttention`` inside.

        The unmodified Hugging Face model runs through transformers' attention registry
        (:func:`sparse_attn.models.attention.install`): its own embeddings, RMSNorms,
        projections, rotary embeddings and grouped K/V (passed to the op unrepeated), with
        ``layout`` in every layer.

        Args:
            hf: Hugging Face ``MistralForCausalLM`` (weights used as they are).
            layout: the ``BlockLayout`` of every layer.

        ``forward(input_ids, attention_mask)`` (int64 ``[B, S]``) returns
        ``{"logits": [B, S, vocab], "last_hidden_state": [B, S, hidden]}``.
        """

        def __init__(self, hf, layout) -> None:
            super().__init__()
            from sparse_attn.models.attention import install

            self.hf = hf
            cfg = hf.config
            self.num_heads = int(cfg.num_attention_heads)
            self.num_kv_heads = int(cfg.num_key_value_heads)
            self.head_dim = int(
                getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            )
            self.cores, _ = install(hf, [layout] * int(cfg.num_hidden_layers))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
            out = self.hf.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            hidden = out.last_hidden_state
            return {"logits": self.hf.lm_head(hidden), "last_hidden_state": hidden}

    return SparseMistral


def build_model(
    pattern=None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    dtype: str = "float32",
    config: dict | None = None,
    seed: int = DEFAULT_SEED,
):
    """The small Mistral with sparse attention, as an eval-mode ``torch.nn.Module``.

    Args:
        pattern: ``None`` (default: the model's own sliding window,
            :func:`sliding_window_pattern`), or any pattern / BlockLayout (num_heads heads);
            the causal modifier is always applied (Mistral is a decoder).
        block_size: tokens per block.
        max_seq_len: largest S, at most the config's ``max_position_embeddings``.
        dtype: ``"float32"`` or ``"float16"``.
        config: overrides of ``DEFAULT_CONFIG``.
        seed: seed of the random weights.

    Raises:
        InvalidInputError: bad sizes, dtype, config or pattern.
    """
    block_size = hf_common.check_positive_int("block_size", block_size)
    cfg = make_config(config)
    max_seq_len = hf_common.check_positive_int(
        "max_seq_len", max_seq_len, maximum=int(cfg.max_position_embeddings)
    )
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise InvalidInputError(
            f"num_attention_heads={cfg.num_attention_heads} must be a multiple of "
            f"num_key_value_heads={cfg.num_key_value_heads}"
        )
    if pattern is None:
        pattern = sliding_window_pattern(cfg.sliding_window, max_seq_len)
    layout = hf_common.resolve_layout(
        pattern,
        max_seq_len=max_seq_len,
        block_size=block_size,
        num_heads=int(cfg.num_attention_heads),
        causal=True,
    )
    hf = load_hf_model(config, seed=seed)
    model = _module_class()(hf, layout).eval()
    model.layout = layout
    return model.to(hf_common.torch_dtype(dtype))


def model_config_for(pattern, *, block_size, max_seq_len, dtype, config, seed) -> dict:
    """The JSON ``sparse_attn.model_config`` of a Mistral export (see :func:`build_torch_model`)."""
    return hf_common.family_model_config(
        NAME,
        pattern,
        block_size=block_size,
        max_seq_len=max_seq_len,
        dtype=dtype,
        config=config,
        seed=seed,
    )


def build_torch_model(model_config: dict):
    """Rebuild the eager model (same seeded weights) from ``sparse_attn.model_config``.

    Raises:
        InvalidInputError: missing keys, or a layout that differs from the exported one.
    """
    return hf_common.rebuild_family_model(
        NAME, build_model, model_config, config=None, seed=DEFAULT_SEED
    )


def export_onnx(
    output_path,
    *,
    pattern=None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_seq_len: int | None = DEFAULT_MAX_SEQ_LEN,
    dtype: str = "float32",
    causal: bool = True,
    sliding_window: int | None = None,
    seed: int = DEFAULT_SEED,
    config: dict | None = None,
):
    """Export the small Mistral (prefill) with sliding-window attention on the sparse op.

    Args:
        output_path: ``.onnx`` path.
        pattern: ``None`` = the model's own sliding window (``band(w=W-1)``, causal); any other
            pattern is intersected with causal.
        block_size: tokens per block.
        max_seq_len: largest S (``None`` = ``DEFAULT_MAX_SEQ_LEN``).
        dtype: ``"float32"`` or ``"float16"``.
        causal: ignored (always causal: Mistral is a decoder); accepted for the common
            signature.
        sliding_window: overrides the config's ``sliding_window`` (``CLI_OPTIONS``).
        seed: seed of the random weights.
        config: further ``MistralConfig`` overrides.

    Returns:
        The written path: inputs ``input_ids``/``attention_mask`` int64 ``[batch, seq_len]``,
        outputs ``logits`` ``[batch, seq_len, vocab]``, ``last_hidden_state``.

    Raises:
        InvalidInputError: bad arguments (before any work). RuntimeError: a failed check.
    """
    max_seq_len = DEFAULT_MAX_SEQ_LEN if max_seq_len is None else max_seq_len
    config = _config_dict(config)
    if sliding_window is not None:
        config["sliding_window"] = hf_common.check_positive_int("sliding_window", sliding_window)
    hf_common.torch_dtype(dtype)
    window = config.get("sliding_window", DEFAULT_CONFIG["sliding_window"])
    own = f"{sliding_window_pattern(window, max_seq_len)} | causal"
    if pattern is not None and _canonical(pattern) != _canonical(own):
        import warnings

        from sparse_attn.errors import SparseAttnWarning

        warnings.warn(
            f"--pattern {str(pattern)[:200]!r} replaces the model's own attention pattern "
            f"{own!r} (sliding_window={window}); both are recorded in the metadata",
            SparseAttnWarning,
            stacklevel=2,
        )
    path = hf_common.as_path(output_path)
    build_args = dict(
        block_size=block_size,
        max_seq_len=max_seq_len,
        dtype=dtype,
        config=config,
        seed=seed,
    )
    model = build_model(pattern, **build_args)
    example, check = hf_common.dynamic_length_inputs(max_seq_len, model.hf.config.vocab_size)
    return hf_common.export_family(
        model,
        path,
        family=NAME,
        example_inputs=example,
        check_inputs=[example, check],
        output_names=OUTPUT_NAMES,
        model_config={**model_config_for(pattern, **build_args), "config_pattern": own},
        causal=True,
        max_seq_len=max_seq_len,
        dtype=dtype,
    )
