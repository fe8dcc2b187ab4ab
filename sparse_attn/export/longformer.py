"""Model family ``longformer``: Hugging Face ``LongformerModel`` with its attention on our op.

Source of the pattern: Beltagy et al., "Longformer: The Long-Document Transformer"
(arXiv 2004.05150), Sec. 3.1, and transformers' ``LongformerSelfAttention`` (read for the
exact semantics below). The model is built from a small config with seeded random weights.

What Hugging Face computes in a layer with ``attention_window = A`` (even) and a set ``P``
of global tokens, and how it maps here:

* A *non-global* query ``i`` sees the keys ``|i - j| <= A/2`` (local window, the query
  included) plus every global key ``j in P``, through the ordinary ``query/key/value``
  projections; padding keys are excluded. That is the pattern
  ``band(w=A/2) | global(n=G)`` on those rows, so the rows run through
  ``sparse_attn::BlockSparseAttention`` with that layout (one layout per distinct window).
* A *global* query ``i in P`` uses its own projections ``query_global``, ``key_global``,
  ``value_global`` and attends to every real key. That is a separate small dense attention
  (``G`` rows by ``S`` keys) computed here with plain matmul/softmax, and its rows replace
  the op's output rows ``P`` (the op's values for them are discarded, as in Hugging Face).
* Hugging Face pads the sequence to a multiple of ``A`` internally with masked tokens; those
  keys are invisible, so no padding is needed here.

Global tokens are the first ``num_global`` positions (e.g. [CLS] for classification, or the
question for QA): fixed at export, so Hugging Face's ``global_attention_mask`` input is not an
ONNX input; the reference call sets it to 1 on positions ``< num_global``.

ONNX inputs ``input_ids``, ``attention_mask`` (int64 ``[B, S]``, right padding); output
``last_hidden_state`` ``[B, S, hidden]``; B and S dynamic (``S <= max_position_embeddings - 2``,
RoBERTa-style positions start at ``pad_token_id + 1``).
"""

from __future__ import annotations

import functools

from sparse_attn.errors import InvalidInputError
from sparse_attn.export import hf_common

NAME = "longformer"
DEFAULT_MAX_SEQ_LEN = 256
DEFAULT_BLOCK_SIZE = 16
DEFAULT_SEED = 0
DEFAULT_NUM_GLOBAL = 1
#: Small config used when none is given (random weights, seed ``DEFAULT_SEED``); two
#: layers with different windows, so a model holds two layouts.
DEFAULT_CONFIG = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "attention_window": [16, 32],
    "max_position_embeddings": 514,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "type_vocab_size": 1,
}
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("last_hidden_state",)

CLI_OPTIONS = {
    "num_global": {
        "type": "int",
        "help": "number of leading tokens with global attention",
        "default": DEFAULT_NUM_GLOBAL,
    },
    "seed": hf_common.seed_cli_option(DEFAULT_SEED),
}


def make_config(config: dict | None = None):
    """``transformers.LongformerConfig`` from ``DEFAULT_CONFIG`` updated with ``config``."""
    from transformers import LongformerConfig

    cfg = LongformerConfig(**hf_common.merged_config(DEFAULT_CONFIG, config))
    windows = layer_windows(cfg)
    bad = [w for w in windows if w < 2 or w % 2]
    if bad:
        raise InvalidInputError(f"attention_window values must be even and >= 2, got {windows}")
    return cfg


def layer_windows(cfg) -> list[int]:
    """Per-layer ``attention_window`` (an int in the config applies to every layer)."""
    aw = cfg.attention_window
    if isinstance(aw, int):
        return [aw] * int(cfg.num_hidden_layers)
    if len(aw) != cfg.num_hidden_layers:
        raise InvalidInputError(
            f"attention_window has {len(aw)} values for {cfg.num_hidden_layers} layers"
        )
    return [int(w) for w in aw]


def layer_pattern(attention_window: int, num_global: int) -> str:
    """The pattern of Longformer's non-global rows: ``band(w=A/2) | global(n=G)``."""
    half = attention_window // 2
    return f"band(w={half}) | global(n={num_global})" if num_global else f"band(w={half})"


def load_checkpoint_model(model_dir, *, dtype: str = "float32"):
    """Hugging Face ``LongformerModel`` of a checkpoint directory (``config.json`` +
    ``*.safetensors``; pickle weights and remote code are refused), eval mode.

    Raises:
        InvalidInputError: not a longformer checkpoint, or weights that do not match its config.
    """
    from transformers import LongformerModel

    from sparse_attn.models import checkpoint

    path, cfg = checkpoint.load_config_for(model_dir, LongformerModel, "longformer")
    windows = layer_windows(cfg)
    if any(w < 2 or w % 2 for w in windows):
        raise InvalidInputError(f"attention_window values must be even and >= 2, got {windows}")
    model = checkpoint.load_pretrained(LongformerModel, path, cfg, add_pooling_layer=False)
    return model.to(hf_common.torch_dtype(dtype))


def load_hf_model(
    config: dict | None = None,
    *,
    seed: int = DEFAULT_SEED,
    dtype="float32",
    model_dir: str | None = None,
):
    """Hugging Face ``LongformerModel`` (no pooler) with seeded random weights, eval mode."""
    from transformers import LongformerModel

    if model_dir is not None:
        return load_checkpoint_model(model_dir, dtype=dtype)
    return hf_common.seeded_hf_model(
        LongformerModel, make_config(config), seed=seed, dtype=dtype, add_pooling_layer=False
    )


@functools.cache
def _module_class():
    """The ``SparseLongformer`` module class (defined lazily: importing stays cheap)."""
    import torch
    from torch import nn

    class SparseLongformer(nn.Module):
        """``LongformerModel`` with local + global-column attention on the sparse op.

        Args:
            hf: Hugging Face ``LongformerModel``.
            attentions: one attention module per layer (modules may be shared).
            num_global: the first ``num_global`` tokens have global attention.

        ``forward(input_ids, attention_mask)`` (int64 ``[B, S]``) returns
        ``{"last_hidden_state": [B, S, hidden]}``.
        """

        def __init__(self, hf, attentions, num_global: int) -> None:
            super().__init__()
            self.hf = hf
            self.attentions = nn.ModuleList(attentions)
            self.num_global = int(num_global)
            self.num_heads, self.head_dim = hf_common.encoder_head_sizes(hf.config)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
            b, s = input_ids.shape
            hidden = self.hf.embeddings(input_ids=input_ids)
            kpm = attention_mask != 0
            g = self.num_global
            scale = self.head_dim**-0.5
            h, d = self.num_heads, self.head_dim
            for layer, attention in zip(self.hf.encoder.layer, self.attentions, strict=True):
                q, k, v = hf_common.encoder_qkv(layer, hidden, b, s, h, d)
                ctx = attention(q, k, v, kpm)
                if g:
                    sa = layer.attention.self
                    hg = hidden[:, :g]
                    gs = hg.shape[1]
                    qg = hf_common.split_heads(sa.query_global(hg), b, gs, h, d)
                    kg = hf_common.split_heads(sa.key_global(hidden), b, s, h, d)
                    vg = hf_common.split_heads(sa.value_global(hidden), b, s, h, d)
                    scores = torch.matmul(qg.float(), kg.float().transpose(-1, -2)) * scale
                    scores = scores.masked_fill(
                        ~kpm[:, None, None, :], torch.finfo(torch.float32).min
                    )
                    probs = torch.softmax(scores, dim=-1)
                    out_g = torch.matmul(probs, vg.float()).to(ctx.dtype)
                    ctx = torch.cat([out_g, ctx[:, :, g:]], dim=2)
                hidden = hf_common.encoder_layer_output(layer, ctx, hidden, b, s, h, d)
            return {"last_hidden_state": hidden}

    return SparseLongformer


def build_model(
    pattern=None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    dtype: str = "float32",
    config: dict | None = None,
    seed: int = DEFAULT_SEED,
    num_global: int = DEFAULT_NUM_GLOBAL,
    causal: bool = False,
    model_dir: str | None = None,
):
    """The small Longformer with sparse attention, as an eval-mode ``torch.nn.Module``.

    Args:
        pattern: ``None`` (default: Hugging Face's own pattern per layer, :func:`layer_pattern`),
            or one pattern / BlockLayout used for the non-global rows of every layer.
        block_size: tokens per block.
        max_seq_len: largest S, at most ``max_position_embeddings - pad_token_id - 1``.
        dtype: ``"float32"`` or ``"float16"``.
        config: overrides of ``DEFAULT_CONFIG`` (``LongformerConfig`` keyword arguments).
        seed: seed of the random weights.
        num_global: leading tokens with global attention (0 = none), ``<= max_seq_len``.
        causal: intersect the local pattern with ``j <= i`` (not Longformer's own behaviour;
            only with ``num_global = 0``, global rows see every key).

    Raises:
        InvalidInputError: bad sizes, dtype, config or pattern; causal with global tokens.
    """
    block_size = hf_common.check_positive_int("block_size", block_size)
    hf = load_hf_model(config, seed=seed, model_dir=model_dir) if model_dir is not None else None
    cfg = hf.config if hf is not None else make_config(config)
    limit = int(cfg.max_position_embeddings) - int(cfg.pad_token_id) - 1
    max_seq_len = hf_common.check_positive_int("max_seq_len", max_seq_len, maximum=limit)
    num_global = hf_common.check_positive_int(
        "num_global", num_global, minimum=0, maximum=max_seq_len
    )
    if causal and num_global:
        raise InvalidInputError(
            "Longformer's global rows attend to every key, which --causal cannot restrict; "
            "use --num-global 0 with --causal"
        )
    h = int(cfg.num_attention_heads)
    layouts: dict[str, object] = {}
    attentions = []
    layer_keys: list[str] = []
    for w in layer_windows(cfg):
        pat = layer_pattern(w, num_global) if pattern is None else pattern
        key = str(pat) if not hasattr(pat, "layout_hash") else pat.layout_hash()
        if key not in layouts:
            lay = hf_common.resolve_layout(
                pat, max_seq_len=max_seq_len, block_size=block_size, num_heads=h, causal=causal
            )
            layouts[key] = (lay, hf_common.sparse_attention_module(lay))
        attentions.append(layouts[key][1])
        layer_keys.append(key)
    if hf is None:
        hf = load_hf_model(config, seed=seed)
    model = _module_class()(hf, attentions, num_global).eval()
    model.layouts = [v[0] for v in layouts.values()]
    model.layer_layouts = [layouts[k][0] for k in layer_keys]
    return model.to(hf_common.torch_dtype(dtype))


def hf_reference(hf, input_ids, attention_mask, num_global: int = DEFAULT_NUM_GLOBAL):
    """Hugging Face's own output for the same inputs: ``last_hidden_state`` ``[B, S, hidden]``.

    Sets ``global_attention_mask`` to 1 on the first ``num_global`` positions.
    """
    import torch

    gam = torch.zeros_like(attention_mask)
    gam[:, :num_global] = 1
    with torch.no_grad():
        out = hf(input_ids=input_ids, attention_mask=attention_mask, global_attention_mask=gam)
    return out.last_hidden_state


def model_config_for(
    pattern, *, block_size, max_seq_len, dtype, config, seed, num_global, causal, model_dir=None
):
    """The JSON ``sparse_attn.model_config`` of a Longformer export."""
    return hf_common.family_model_config(
        NAME,
        pattern,
        block_size=block_size,
        max_seq_len=max_seq_len,
        dtype=dtype,
        config=config,
        seed=seed,
        model_dir=None if model_dir is None else str(model_dir),
        num_global=num_global,
        causal=causal,
    )


def build_torch_model(model_config: dict):
    """Rebuild the eager model (same seeded weights) from ``sparse_attn.model_config``.

    Raises:
        InvalidInputError: missing keys, or layouts that differ from the exported ones.
    """
    return hf_common.rebuild_family_model(
        NAME,
        build_model,
        model_config,
        config=None,
        seed=DEFAULT_SEED,
        model_dir=None,
        num_global=DEFAULT_NUM_GLOBAL,
        causal=False,
    )


def export_onnx(
    output_path,
    *,
    pattern=None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_seq_len: int | None = DEFAULT_MAX_SEQ_LEN,
    dtype: str = "float32",
    causal: bool = False,
    num_global: int = DEFAULT_NUM_GLOBAL,
    seed: int = DEFAULT_SEED,
    config: dict | None = None,
    model_dir: str | None = None,
):
    """Export the small Longformer with its attention on the sparse op.

    Args:
        output_path: ``.onnx`` path.
        pattern: ``None`` = Hugging Face's own pattern per layer (:func:`layer_pattern`).
        block_size: tokens per block.
        max_seq_len: largest S (``None`` = ``DEFAULT_MAX_SEQ_LEN``).
        dtype: ``"float32"`` or ``"float16"``.
        causal: intersect the local pattern with ``j <= i`` (not Longformer's behaviour).
        num_global: leading tokens with global attention (``CLI_OPTIONS``).
        seed: seed of the random weights.
        model_dir: a checkpoint directory (``config.json``, ``*.safetensors``) instead of
            the seeded random weights; ``config`` and ``seed`` are then ignored.
        config: ``LongformerConfig`` overrides.

    Returns:
        The written path: inputs ``input_ids``/``attention_mask`` int64 ``[batch, seq_len]``,
        output ``last_hidden_state``. One op layout per distinct layer window.

    Raises:
        InvalidInputError: bad arguments (before any work). RuntimeError: a failed check.
    """
    max_seq_len = DEFAULT_MAX_SEQ_LEN if max_seq_len is None else max_seq_len
    hf_common.torch_dtype(dtype)
    path = hf_common.as_path(output_path)
    build_args = dict(
        block_size=block_size,
        max_seq_len=max_seq_len,
        dtype=dtype,
        config=config,
        seed=seed,
        model_dir=model_dir,
        num_global=num_global,
        causal=causal,
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
        model_config=model_config_for(pattern, **build_args),
        causal=causal,
        max_seq_len=max_seq_len,
        dtype=dtype,
    )
