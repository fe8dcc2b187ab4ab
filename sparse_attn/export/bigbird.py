"""Model family ``bigbird``: Hugging Face ``BigBirdModel`` (block_sparse, eval) on our op.

Source of the pattern: Zaheer et al., "Big Bird: Transformers for Longer Sequences"
(arXiv 2007.14062), Sec. 2 and App. D (ITC variant), and transformers'
``BigBirdBlockSparseAttention.bigbird_block_sparse_attention`` (read for the exact
semantics, transformers 5.24). The model is built from a small config with seeded random
weights. With HF block size ``b``, ``n = S / b`` blocks and ``r = num_random_blocks``:

* query blocks 0 and ``n-1`` (global rows) attend to every key;
* query block 1 attends to key blocks ``0, 1, 2, n-1`` and ``r`` random blocks; query block
  ``n-2`` to ``0, n-3, n-2, n-1`` and ``r`` random blocks; the middle blocks ``2..n-3`` to
  ``i-1, i, i+1`` (sliding), ``0`` and ``n-1`` (global columns) and ``r`` random blocks.
  So without the random part every row but the global ones is
  ``block_band(b=b, w=1) | global(tokens=first and last block)``.
* Random blocks in eval mode: transformers 5.24 draws random blocks only while training
  ("in eval the helpers below return a constant all-zero list"). In eval every random block
  is block 0, *gathered again*: rows ``1..n-2`` see the keys of block 0 ``1 + r`` times in
  their softmax (once as the global column, ``r`` times as "random" blocks). A mask cannot
  express a multiplicity, so this family appends ``r`` copies of key/value block 0 after the
  sequence (and ``r * b`` dummy query rows that see nothing) and lets rows ``1..n-2`` see
  those copies: the op then computes exactly Hugging Face's weights. The layout covers
  ``S + r * b`` tokens; only the first ``S`` output rows are kept.
* Padded query rows are multiplied by the attention mask (zero), as Hugging Face does;
  masked keys get ``-10000`` in Hugging Face and are invisible here: identical in fp32/fp16
  for every row that has a visible key (block 0 is always visible).

The last block depends on the end of the sequence, so the model is exported at a fixed
sequence length ``max_seq_len`` (docs/spec.md, prefix stability; the layout has
``requires_static_seq_len``): inputs must be padded to it. ``max_seq_len`` must be a
multiple of the HF block size and larger than ``(5 + 2 r) * b`` (below that Hugging Face
switches the model to full attention).

ONNX inputs ``input_ids``, ``attention_mask`` (int64 ``[B, max_seq_len]``); outputs
``last_hidden_state`` ``[B, S, hidden]`` and ``pooler_output`` ``[B, hidden]``.
"""

from __future__ import annotations

import functools

import numpy as np

from sparse_attn.errors import InvalidInputError
from sparse_attn.export import hf_common

NAME = "bigbird"
DEFAULT_BLOCK_SIZE = 16
DEFAULT_SEED = 0
#: Small config used when none is given (random weights, seed ``DEFAULT_SEED``).
DEFAULT_CONFIG = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 1024,
    "attention_type": "block_sparse",
    "block_size": 16,
    "num_random_blocks": 2,
}
#: Default fixed sequence length: 16 HF blocks of 16 tokens.
DEFAULT_MAX_SEQ_LEN = 256
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("last_hidden_state", "pooler_output")

CLI_OPTIONS = {
    "seed": hf_common.seed_cli_option(DEFAULT_SEED),
    "hf_block_size": {
        "type": "int",
        "help": "BigBird's own block size (config.block_size)",
        "default": DEFAULT_CONFIG["block_size"],
    },
    "num_random_blocks": {
        "type": "int",
        "help": "BigBird's config.num_random_blocks",
        "default": DEFAULT_CONFIG["num_random_blocks"],
    },
}


def make_config(config: dict | None = None):
    """``transformers.BigBirdConfig`` from ``DEFAULT_CONFIG`` updated with ``config``.

    Raises:
        InvalidInputError: ``attention_type`` other than ``"block_sparse"``.
    """
    from transformers import BigBirdConfig

    d = hf_common.merged_config(DEFAULT_CONFIG, config)
    if d.get("attention_type") != "block_sparse":
        raise InvalidInputError(
            f"bigbird family exports attention_type='block_sparse', got {d.get('attention_type')!r}"
        )
    return BigBirdConfig(**d)


def hf_token_mask(seq_len: int, hf_block: int, num_random_blocks: int) -> np.ndarray:
    """Hugging Face BigBird's eval-mode attention as a boolean mask over ``S + r*b`` tokens.

    Args:
        seq_len: S, a multiple of ``hf_block`` with at least 5 blocks.
        hf_block: b, BigBird's ``config.block_size``.
        num_random_blocks: r.

    Returns:
        ``bool [S + r*b, S + r*b]``: rows/keys ``< S`` are the sequence; keys ``S..S+r*b-1``
        are ``r`` copies of key block 0 (seen by query blocks ``1..n-2``); rows ``>= S`` see
        nothing. See the module docstring for the derivation.

    Raises:
        InvalidInputError: S not a multiple of b, or fewer than 5 blocks.
    """
    b, r = int(hf_block), int(num_random_blocks)
    if seq_len % b:
        raise InvalidInputError(
            f"max_seq_len={seq_len} must be a multiple of BigBird's block size {b}"
        )
    n = seq_len // b
    if n < 5:
        raise InvalidInputError(f"BigBird needs at least 5 blocks, got S={seq_len} with block {b}")
    total = seq_len + r * b
    blocks = np.zeros((n, n + r), dtype=bool)
    qb = np.arange(n)
    blocks[:, :n] = np.abs(qb[:, None] - qb[None, :]) <= 1
    blocks[:, 0] = True
    blocks[:, n - 1] = True
    blocks[1 : n - 1, n:] = True
    blocks[0, :n] = True
    blocks[n - 1, :n] = True
    mask = np.zeros((total, total), dtype=bool)
    mask[:seq_len, :] = np.repeat(np.repeat(blocks, b, axis=0), b, axis=1)
    return mask


def build_layout(seq_len: int, hf_block: int, num_random_blocks: int, num_heads: int, block_size):
    """The op's layout for :func:`hf_token_mask` (same for every head, static S).

    Returns:
        BlockLayout over ``S + r*b`` tokens with ``requires_static_seq_len=True``.
    """
    from sparse_attn.layout import BlockLayout

    m = hf_token_mask(seq_len, hf_block, num_random_blocks)
    spec = (
        f"custom:bigbird_hf_eval(b={hf_block}, r={num_random_blocks}, seq_len={seq_len}): "
        f"block_band(b={hf_block}, w=1) | global(first and last block) + {num_random_blocks} "
        f"copies of key block 0"
    )
    return BlockLayout.from_token_mask(
        np.broadcast_to(m, (num_heads, *m.shape)),
        block_size,
        spec=spec,
        requires_static_seq_len=True,
    )


def load_checkpoint_model(model_dir, *, dtype: str = "float32"):
    """Hugging Face ``BigBirdModel`` of a checkpoint directory (``config.json`` +
    ``*.safetensors``; pickle weights and remote code are refused), eval mode.

    Raises:
        InvalidInputError: not a bigbird checkpoint, or weights that do not match its config.
    """
    from transformers import BigBirdModel

    from sparse_attn.models import checkpoint

    path, cfg = checkpoint.load_config_for(model_dir, BigBirdModel, "bigbird")
    if cfg.attention_type != "block_sparse":
        raise InvalidInputError(
            f"{path} has attention_type={cfg.attention_type!r}; the bigbird adapter exports "
            "block_sparse attention (an original_full BigBird has no sparse pattern)"
        )
    model = checkpoint.load_pretrained(BigBirdModel, path, cfg, add_pooling_layer=True)
    return model.to(hf_common.torch_dtype(dtype))


def load_hf_model(
    config: dict | None = None,
    *,
    seed: int = DEFAULT_SEED,
    dtype="float32",
    model_dir: str | None = None,
):
    """Hugging Face ``BigBirdModel`` (block_sparse) with seeded random weights, eval mode."""
    from transformers import BigBirdModel

    if model_dir is not None:
        return load_checkpoint_model(model_dir, dtype=dtype)
    return hf_common.seeded_hf_model(
        BigBirdModel, make_config(config), seed=seed, dtype=dtype, add_pooling_layer=True
    )


@functools.cache
def _module_class():
    """The ``SparseBigBird`` module class (defined lazily: importing stays cheap)."""
    import torch
    from torch import nn

    class SparseBigBird(nn.Module):
        """``BigBirdModel`` (eval, block_sparse) with the attention core on the sparse op.

        Args:
            hf: Hugging Face ``BigBirdModel``.
            attention: attention module whose layout covers ``S + extra`` tokens.
            seq_len: the fixed S.
            dup_tokens: tokens of key block 0 appended ``dup_copies`` times (0 = none).
            dup_copies: r.

        ``forward(input_ids, attention_mask)`` (int64 ``[B, S]``) returns
        ``{"last_hidden_state": [B, S, hidden], "pooler_output": [B, hidden]}``.
        """

        def __init__(self, hf, attention, seq_len: int, dup_tokens: int, dup_copies: int):
            super().__init__()
            self.hf = hf
            self.attention = attention
            self.seq_len = int(seq_len)
            self.dup_tokens = int(dup_tokens)
            self.dup_copies = int(dup_copies)
            self.num_heads, self.head_dim = hf_common.encoder_head_sizes(hf.config)

        def _extend(self, x):
            if not self.dup_copies:
                return x
            blk = x[:, :, : self.dup_tokens]
            return torch.cat([x] + [blk] * self.dup_copies, dim=2)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
            b, s = input_ids.shape
            hidden = self.hf.embeddings(input_ids=input_ids)
            kpm = attention_mask != 0
            extra = self.dup_tokens * self.dup_copies
            if extra:
                kpm_ext = torch.cat([kpm] + [kpm[:, : self.dup_tokens]] * self.dup_copies, dim=1)
            else:
                kpm_ext = kpm
            row_keep = kpm[:, None, :, None].to(hidden.dtype)
            sizes = (b, s, self.num_heads, self.head_dim)
            for layer in self.hf.encoder.layer:
                q, k, v = hf_common.encoder_qkv(layer, hidden, *sizes)
                if extra:
                    q = torch.cat([q, q.new_zeros(b, self.num_heads, extra, self.head_dim)], 2)
                ctx = self.attention(q, self._extend(k), self._extend(v), kpm_ext)[:, :, :s]
                ctx = ctx * row_keep
                hidden = hf_common.encoder_layer_output(layer, ctx, hidden, *sizes)
            pooled = self.hf.activation(self.hf.pooler(hidden[:, 0, :]))
            return {"last_hidden_state": hidden, "pooler_output": pooled}

    return SparseBigBird


def build_model(
    pattern=None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    dtype: str = "float32",
    config: dict | None = None,
    seed: int = DEFAULT_SEED,
    causal: bool = False,
    model_dir: str | None = None,
):
    """The small BigBird with sparse attention, as an eval-mode ``torch.nn.Module``.

    Args:
        pattern: ``None`` (default: Hugging Face's own eval-mode attention,
            :func:`hf_token_mask`), or any pattern / BlockLayout over ``max_seq_len`` tokens
            (then no block-0 copies are appended and the model is no longer Hugging Face's).
        block_size: tokens per block of the op's layout (independent of BigBird's own).
        max_seq_len: the fixed S (inputs are padded to it).
        dtype: ``"float32"`` or ``"float16"``.
        config: overrides of ``DEFAULT_CONFIG`` (``BigBirdConfig`` keyword arguments).
        seed: seed of the random weights.
        causal: only with an explicit ``pattern`` (BigBird itself is bidirectional).

    Raises:
        InvalidInputError: bad sizes (see module docstring), dtype, config or pattern.
    """
    block_size = hf_common.check_positive_int("block_size", block_size)
    hf = load_hf_model(config, seed=seed, model_dir=model_dir) if model_dir is not None else None
    cfg = hf.config if hf is not None else make_config(config)
    max_seq_len = hf_common.check_positive_int(
        "max_seq_len", max_seq_len, maximum=int(cfg.max_position_embeddings)
    )
    hb, r = int(cfg.block_size), int(cfg.num_random_blocks)
    h = int(cfg.num_attention_heads)
    if pattern is None:
        if causal:
            raise InvalidInputError(
                "BigBird's own attention is bidirectional; --causal needs an explicit --pattern"
            )
        limit = (5 + 2 * r) * hb
        if max_seq_len <= limit:
            raise InvalidInputError(
                f"max_seq_len={max_seq_len} must exceed (5 + 2*num_random_blocks) * block_size "
                f"= {limit}, else Hugging Face runs BigBird with full attention; use a larger "
                f"--max-seq-len (a multiple of {hb})"
            )
        layout = build_layout(max_seq_len, hb, r, h, block_size)
        dup_tokens, dup_copies = hb, r
    else:
        layout = hf_common.resolve_layout(
            pattern, max_seq_len=max_seq_len, block_size=block_size, num_heads=h, causal=causal
        )
        dup_tokens, dup_copies = 0, 0
    if hf is None:
        hf = load_hf_model(config, seed=seed)
    attention = hf_common.sparse_attention_module(layout)
    model = _module_class()(hf, attention, max_seq_len, dup_tokens, dup_copies).eval()
    model.layout = layout
    return model.to(hf_common.torch_dtype(dtype))


def model_config_for(
    pattern, *, block_size, max_seq_len, dtype, config, seed, causal, model_dir=None
) -> dict:
    """The JSON ``sparse_attn.model_config`` of a BigBird export."""
    return hf_common.family_model_config(
        NAME,
        pattern,
        block_size=block_size,
        max_seq_len=max_seq_len,
        dtype=dtype,
        config=config,
        seed=seed,
        model_dir=None if model_dir is None else str(model_dir),
        causal=causal,
    )


def build_torch_model(model_config: dict):
    """Rebuild the eager model (same seeded weights) from ``sparse_attn.model_config``.

    Raises:
        InvalidInputError: missing keys, or a layout that differs from the exported one.
    """
    return hf_common.rebuild_family_model(
        NAME,
        build_model,
        model_config,
        config=None,
        seed=DEFAULT_SEED,
        model_dir=None,
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
    seed: int = DEFAULT_SEED,
    hf_block_size: int | None = None,
    num_random_blocks: int | None = None,
    config: dict | None = None,
    model_dir: str | None = None,
):
    """Export the small BigBird at a fixed sequence length with its attention on the sparse op.

    Args:
        output_path: ``.onnx`` path.
        pattern: ``None`` = Hugging Face's own eval-mode attention (module docstring).
        block_size: tokens per block of the op's layout.
        max_seq_len: the fixed S (``None`` = ``DEFAULT_MAX_SEQ_LEN``); inputs are padded to it.
        dtype: ``"float32"`` or ``"float16"``.
        causal: only with an explicit ``pattern``.
        seed: seed of the random weights.
        hf_block_size, num_random_blocks: BigBird's ``block_size`` / ``num_random_blocks``.
        model_dir: a checkpoint directory (``config.json``, ``*.safetensors``) instead of
            the seeded random weights; ``config`` and ``seed`` are then ignored.
        config: further ``BigBirdConfig`` overrides.

    Returns:
        The written path: inputs ``input_ids``/``attention_mask`` int64 ``[batch, S]`` (S
        fixed, metadata ``sparse_attn.static_seq_len = "true"``), outputs
        ``last_hidden_state`` ``[batch, S, hidden]`` and ``pooler_output`` ``[batch, hidden]``.

    Raises:
        InvalidInputError: bad arguments (before any work). RuntimeError: a failed check.
    """
    max_seq_len = DEFAULT_MAX_SEQ_LEN if max_seq_len is None else max_seq_len
    config = dict(config or {})
    if hf_block_size is not None:
        config["block_size"] = hf_common.check_positive_int("hf_block_size", hf_block_size)
    if num_random_blocks is not None:
        config["num_random_blocks"] = hf_common.check_positive_int(
            "num_random_blocks", num_random_blocks, minimum=0
        )
    hf_common.torch_dtype(dtype)
    path = hf_common.as_path(output_path)
    build_args = dict(
        block_size=block_size,
        max_seq_len=max_seq_len,
        dtype=dtype,
        config=config,
        seed=seed,
        model_dir=model_dir,
        causal=causal,
    )
    model = build_model(pattern, **build_args)
    cfg = model.hf.config
    example = hf_common.random_token_inputs(2, max_seq_len, cfg.vocab_size, seed=1, pad_last=40)
    check = hf_common.random_token_inputs(3, max_seq_len, cfg.vocab_size, seed=2, pad_last=90)
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
        static_seq_len=True,
    )
