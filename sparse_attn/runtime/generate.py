"""Token generation on a generation export (``prefill.onnx`` + ``decode.onnx``) in ONNX Runtime.

::

    gen = Generator("artifacts/gemma3-gen")                      # the export directory
    new = gen.generate([[2, 651, 6037]], max_new_tokens=32)      # int64 [B, N], greedy
    for step in gen.stream(ids, max_new_tokens=32): ...          # int64 [B] per step
    texts = gen.generate_text(["The capital of France is"], max_new_tokens=16)

The prompt runs once through the prefill graph (the block-sparse op); each new token then
runs through the decode graph with the cache the previous step returned. Sliding-window
layers hold at most ``W - 1`` positions, so their memory stops growing once the text is
longer than the window; full-attention layers hold every position.

Batches of prompts of different lengths are left-padded (``attention_mask`` 0 on padding,
``position_ids = cumsum(mask) - 1``), as transformers' ``generate`` does for decoders. A row
that produced a stop token gets the pad token (or the first stop token when the model has no
pad token) from then on; generation ends when every row has stopped or after
``max_new_tokens`` steps, so the result has ``N <= max_new_tokens`` columns.

Selection: greedy (``temperature == 0``, the default) or sampling (``temperature > 0``) from
``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens and then to
the smallest set whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al.,
"The Curious Case of Neural Text Degeneration", arXiv 1904.09751); the order of the filters
is that of transformers. Sampling draws from ``numpy.random.default_rng(seed)``: the same
seed gives the same tokens.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparse_attn.errors import InvalidInputError, SparseAttnError

#: Default number of new tokens.
DEFAULT_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class SamplingOptions:
    """Validated selection options (see :func:`check_options`)."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int | None


def check_options(
    max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
    temperature: Any = 0.0,
    top_k: Any = 0,
    top_p: Any = 1.0,
    seed: Any = None,
) -> SamplingOptions:
    """Check generation options before any work.

    Args:
        max_new_tokens: int >= 1.
        temperature: float >= 0; 0 selects greedily.
        top_k: int >= 0; 0 keeps every token.
        top_p: float in (0, 1]; 1 keeps every token.
        seed: int >= 0 or ``None`` (a fresh random seed).

    Raises:
        InvalidInputError: naming the option, the allowed range and the value received.
    """

    def _int(name, v, lo):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InvalidInputError(f"{name} must be an integer, got {v!r}")
        if int(v) < lo:
            raise InvalidInputError(f"{name} must be >= {lo}, got {int(v)}")
        return int(v)

    def _float(name, v):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise InvalidInputError(f"{name} must be a number, got {v!r}")
        v = float(v)
        if not np.isfinite(v):
            raise InvalidInputError(f"{name} must be finite, got {v}")
        return v

    n = _int("max_new_tokens", max_new_tokens, 1)
    t = _float("temperature", temperature)
    if t < 0:
        raise InvalidInputError(f"temperature must be >= 0 (0 = greedy), got {t}")
    k = _int("top_k", top_k, 0)
    p = _float("top_p", top_p)
    if not 0 < p <= 1:
        raise InvalidInputError(f"top_p must be in (0, 1], got {p}")
    s = None if seed is None else _int("seed", seed, 0)
    return SamplingOptions(n, t, k, p, s)


def select_tokens(logits: np.ndarray, opts: SamplingOptions, rng: np.random.Generator):
    """Next token per row from ``logits [B, V]`` (greedy or sampled; see the module docs).

    Returns:
        int64 ``[B]``.
    """
    if opts.temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    x = logits.astype(np.float64) / opts.temperature
    if opts.top_k and opts.top_k < x.shape[-1]:
        kth = np.partition(x, -opts.top_k, axis=-1)[:, -opts.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    if opts.top_p < 1.0:
        order = np.argsort(-x, axis=-1, kind="stable")
        sorted_x = np.take_along_axis(x, order, axis=-1)
        p = np.exp(sorted_x - sorted_x[:, :1])
        p /= p.sum(axis=-1, keepdims=True)
        before = np.cumsum(p, axis=-1) - p  # mass of the tokens ranked above each one
        drop_sorted = before >= opts.top_p
        drop_sorted[:, 0] = False
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        x = np.where(drop, -np.inf, x)
    x = x - x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    u = rng.random(x.shape[0])
    idx = (np.cumsum(p, axis=-1) < u[:, None]).sum(axis=-1)
    return np.minimum(idx, x.shape[-1] - 1).astype(np.int64)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists into ``input_ids`` and ``attention_mask`` int64 ``[B, S]``.

    Raises:
        InvalidInputError: no sequences, or an empty one.
    """
    seqs = [list(map(int, s)) for s in sequences]
    if not seqs:
        raise InvalidInputError("no prompt given; pass at least one prompt")
    for i, s in enumerate(seqs):
        if not s:
            raise InvalidInputError(f"prompt {i} is empty; give at least one token")
    s_max = max(len(s) for s in seqs)
    ids = np.full((len(seqs), s_max), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), s_max), dtype=np.int64)
    for b, s in enumerate(seqs):
        ids[b, s_max - len(s) :] = s
        mask[b, s_max - len(s) :] = 1
    return ids, mask


class Generator:
    """Generate tokens with a generation export (see the module docstring).

    Args:
        path: the export directory, or its ``prefill.onnx`` / ``decode.onnx``.
        providers: ONNX Runtime execution providers (default CPU).
        intra_op_threads, allow_spinning: ONNX Runtime session options.
        prefill_session: an open ``onnxruntime.InferenceSession`` of ``prefill.onnx`` to reuse
            (``Runtime`` passes its own).

    Attributes:
        directory, info (the ``generation.json`` object), max_seq_len (longest prompt),
        max_positions (longest prompt + new tokens, or ``None``), eos_token_ids, pad_token_id.

    Thread safety: one generation at a time per instance (a lock serialises them).

    Raises:
        InvalidInputError: the path is not a generation export, or a graph is missing.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
        allow_spinning: bool | None = None,
        prefill_session=None,
    ) -> None:
        from sparse_attn.export.generate import generation_dir, read_generation_info

        self.info = read_generation_info(path)
        self.directory = generation_dir(path)
        self.max_seq_len = int(self.info["max_seq_len"])
        mp = self.info.get("max_position_embeddings")
        self.max_positions = int(mp) if mp else None
        ids = self.info.get("token_ids", {})
        gen_cfg = self._generation_config()
        eos = gen_cfg.get("eos_token_id", ids.get("eos_token_id"))
        self.eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        pad = gen_cfg.get("pad_token_id", ids.get("pad_token_id"))
        self.pad_token_id = pad if pad is not None else (self.eos_token_ids or [0])[0]
        paths = {k: self.directory / self.info[k] for k in ("prefill", "decode")}
        for k, p in paths.items():
            if not p.is_file():
                raise InvalidInputError(
                    f"the {k} graph {p} is missing; re-export the model with --task generate"
                )
        self._paths = paths
        self._session_args = (
            providers or ["CPUExecutionProvider"],
            intra_op_threads,
            allow_spinning,
        )
        self._sessions = {"prefill": prefill_session} if prefill_session is not None else {}
        self._present = list(self.info["present_names"])
        self._past = list(self.info["past_names"])
        self._outputs = ["logits", *self._present]
        self._tokenizer = None
        self._lock = threading.Lock()
        #: cache lengths of the last decode step, per present name (for tests and benches)
        self.last_cache_shapes: dict[str, tuple[int, ...]] = {}

    def session(self, which: str):
        """The ONNX Runtime session of ``"prefill"`` or ``"decode"`` (opened on first use)."""
        if which not in self._sessions:
            import onnxruntime as ort

            from sparse_attn.runtime.onnxruntime_backend import session_options

            providers, threads, spinning = self._session_args
            opts = session_options(threads, spinning)
            try:
                self._sessions[which] = ort.InferenceSession(
                    str(self._paths[which]), opts, providers=providers
                )
            except Exception as exc:
                raise InvalidInputError(
                    f"ONNX Runtime cannot load {self._paths[which]}: "
                    f"{' '.join(str(exc).split())[:300]}; re-export the model"
                ) from exc
        return self._sessions[which]

    def _generation_config(self) -> dict:
        f = self.directory / "generation_config.json"
        if not f.is_file():
            return {}
        try:
            data = json.loads(f.read_text())
        except ValueError:
            return {}
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else {}

    # ------------------------------------------------------------------ text
    @property
    def tokenizer(self):
        """The checkpoint's tokenizer (transformers ``AutoTokenizer`` from the export directory).

        Raises:
            InvalidInputError: the export has no tokenizer files.
        """
        if self._tokenizer is None:
            if (
                not (self.directory / "tokenizer.json").is_file()
                and not (self.directory / "tokenizer.model").is_file()
            ):
                raise InvalidInputError(
                    f"{self.directory} has no tokenizer; export from a checkpoint with "
                    "tokenizer files or pass token ids"
                )
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(
                str(self.directory), trust_remote_code=False
            )
        return self._tokenizer

    def encode(self, prompts: str | Sequence[str], *, chat: bool = False) -> list[list[int]]:
        """Token ids of each prompt (with the tokenizer's special tokens, e.g. BOS).

        Args:
            prompts: a text or a list of texts.
            chat: wrap each text as one user turn of the checkpoint's chat template (with the
                generation prompt).

        Raises:
            InvalidInputError: an empty prompt, or ``chat`` without a chat template.
        """
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not texts:
            raise InvalidInputError("no prompt given; pass at least one prompt")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InvalidInputError(f"prompt {i} is empty; give some text")
        tok = self.tokenizer
        if chat:
            if not getattr(tok, "chat_template", None):
                raise InvalidInputError(
                    "the checkpoint has no chat template; generate without --chat"
                )
            return [
                list(
                    tok.apply_chat_template(
                        [{"role": "user", "content": t}],
                        add_generation_prompt=True,
                        tokenize=True,
                        return_dict=False,
                    )
                )
                for t in texts
            ]
        return [list(tok(t)["input_ids"]) for t in texts]

    def decode_text(self, tokens: Sequence[int]) -> str:
        """Text of generated tokens (special tokens dropped)."""
        return self.tokenizer.decode(list(map(int, tokens)), skip_special_tokens=True)

    # ------------------------------------------------------------------ tokens
    def prepare(self, input_ids, attention_mask=None) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded ``input_ids`` and ``attention_mask`` int64 ``[B, S]`` from a request.

        Args:
            input_ids: ``[B, S]`` array (with ``attention_mask`` when rows are padded; right
                padding is moved to the left), or a list of token lists of any lengths.
            attention_mask: ``[B, S]`` 0/1, or ``None`` (all real tokens).

        Raises:
            InvalidInputError: an empty prompt, a bad shape, ids outside the vocabulary, a
                prompt longer than the export's ``max_seq_len``.
        """
        if isinstance(input_ids, np.ndarray) or hasattr(input_ids, "numpy"):
            arr = np.asarray(input_ids.numpy() if hasattr(input_ids, "numpy") else input_ids)
            if arr.ndim == 1:
                arr = arr[None]
            if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
                raise InvalidInputError(
                    f"input_ids must be [B, S] with B, S >= 1, got shape {list(arr.shape)}"
                )
            if not np.issubdtype(arr.dtype, np.integer):
                raise InvalidInputError(f"input_ids must be integers, got {arr.dtype}")
            if attention_mask is None:
                rows = [list(r) for r in arr]
            else:
                m = np.asarray(attention_mask)
                if m.shape != arr.shape:
                    raise InvalidInputError(
                        f"attention_mask shape {list(m.shape)} differs from input_ids "
                        f"{list(arr.shape)}"
                    )
                rows = [list(r[mr != 0]) for r, mr in zip(arr, m, strict=True)]
        else:
            seqs = list(input_ids)
            if seqs and all(isinstance(x, (int, np.integer)) for x in seqs):
                seqs = [seqs]
            rows = seqs
        ids, mask = left_pad(rows, int(self.pad_token_id))
        vocab = int(self.info["vocab_size"])
        real = ids[mask != 0]
        if real.size and (real.min() < 0 or real.max() >= vocab):
            raise InvalidInputError(
                f"token ids must be in 0..{vocab - 1}, got {int(real.min())}..{int(real.max())}"
            )
        if ids.shape[1] > self.max_seq_len:
            raise InvalidInputError(
                f"prompt of {ids.shape[1]} tokens is longer than the export's max_seq_len "
                f"{self.max_seq_len}; shorten it or re-export with a larger --max-seq-len"
            )
        return ids, mask

    def _check_length(self, prompt_len: int, opts: SamplingOptions) -> None:
        if self.max_positions and prompt_len + opts.max_new_tokens > self.max_positions:
            raise InvalidInputError(
                f"prompt of {prompt_len} tokens + max_new_tokens {opts.max_new_tokens} exceeds "
                f"the model's {self.max_positions} positions; lower max_new_tokens"
            )

    def stream(
        self,
        input_ids,
        attention_mask=None,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
    ) -> Iterator[np.ndarray]:
        """Generate token by token: yields int64 ``[B]`` (the next token of every row).

        Everything is validated before the first token is computed (the iterator is
        created eagerly). See :meth:`generate` for the arguments.

        Raises:
            InvalidInputError: bad options or prompt (before any work).
        """
        opts = check_options(max_new_tokens, temperature, top_k, top_p, seed)
        ids, mask = self.prepare(input_ids, attention_mask)
        self._check_length(ids.shape[1], opts)
        stops = list(self.eos_token_ids if stop_token_ids is None else stop_token_ids)
        return self._run(ids, mask, opts, np.asarray(stops, dtype=np.int64))

    def _run(self, ids, mask, opts, stops) -> Iterator[np.ndarray]:
        from sparse_attn.export.generate import positions_from_mask

        with self._lock:
            rng = np.random.default_rng(opts.seed)
            pos = positions_from_mask(mask)
            feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
            out = self._call(self.session("prefill"), feeds, "prefill")
            finished = np.zeros(ids.shape[0], dtype=bool)
            last_pos = pos[:, -1:]
            for step in range(opts.max_new_tokens):
                tok = select_tokens(out[0][:, -1, :], opts, rng)
                tok = np.where(finished, np.int64(self.pad_token_id), tok)
                yield tok
                finished |= np.isin(tok, stops)
                if finished.all() or step == opts.max_new_tokens - 1:
                    break
                mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)
                last_pos = last_pos + 1
                feeds = {
                    "input_ids": tok[:, None],
                    "attention_mask": mask,
                    "position_ids": last_pos,
                }
                feeds.update(zip(self._past, out[1:], strict=True))
                out = self._call(self.session("decode"), feeds, "decode")
                self.last_cache_shapes = {
                    n: tuple(a.shape) for n, a in zip(self._present, out[1:], strict=True)
                }

    def _call(self, session, feeds, what):
        try:
            return session.run(self._outputs, feeds)
        except Exception as exc:
            raise SparseAttnError(
                f"onnxruntime failed in the {what} graph: {type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:300]}"
            ) from exc

    def generate(
        self,
        input_ids,
        attention_mask=None,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
    ) -> np.ndarray:
        """New tokens int64 ``[B, N]`` (``N <= max_new_tokens``; see the module docstring).

        Args:
            input_ids: ``[B, S]`` ids (+ ``attention_mask``) or a list of token lists.
            attention_mask: ``[B, S]`` 0/1 or ``None``.
            max_new_tokens: most tokens to add (>= 1).
            temperature: 0 = greedy (default); > 0 samples.
            top_k: sample among the k most likely tokens (0 = all).
            top_p: nucleus sampling mass in (0, 1] (1 = all).
            seed: sampling seed (same seed, same tokens).
            stop_token_ids: stop tokens; default the checkpoint's ``eos_token_id``
                (``generation_config.json``).

        Raises:
            InvalidInputError: bad options or prompt (before any work).
        """
        steps = list(
            self.stream(
                input_ids,
                attention_mask,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                seed=seed,
                stop_token_ids=stop_token_ids,
            )
        )
        return np.stack(steps, axis=1)

    def generate_text(self, prompts, *, chat: bool = False, **kwargs) -> list[str]:
        """Generate from texts; returns each row's new text (stop and pad tokens dropped)."""
        check_options(**{k: kwargs[k] for k in _OPTION_NAMES if k in kwargs})
        tokens = self.generate(self.encode(prompts, chat=chat), **kwargs)
        return [self.decode_text(self._strip(row)) for row in tokens]

    def _strip(self, row) -> list[int]:
        out = []
        for t in row:
            if int(t) in self.eos_token_ids:
                break
            out.append(int(t))
        return out


_OPTION_NAMES = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")


def runtime_generate(runtime, input_ids, max_new_tokens=DEFAULT_MAX_NEW_TOKENS, **kwargs):
    """``Runtime.generate``: texts or ids -> int64 ``[B, N]`` new tokens (or an iterator).

    ``input_ids`` may be a text or list of texts (tokenized with the checkpoint's tokenizer,
    ``chat=True`` applies its chat template), or token ids (see :meth:`Generator.prepare`).
    ``stream=True`` returns the iterator of :meth:`Generator.stream`. Other keyword arguments
    are those of :meth:`Generator.generate`.

    Raises:
        InvalidInputError: the runtime's model is not a generation export, or bad input.
    """
    gen = getattr(runtime, "_generator", None)
    if gen is None:
        session = getattr(getattr(runtime, "_impl", None), "session", None)
        gen = Generator(
            runtime.path,
            prefill_session=session if runtime.backend == "onnxruntime" else None,
        )
        runtime._generator = gen
    stream = bool(kwargs.pop("stream", False))
    chat = bool(kwargs.pop("chat", False))
    check_options(max_new_tokens, **{k: kwargs[k] for k in _OPTION_NAMES[1:] if k in kwargs})
    if isinstance(input_ids, str) or (
        isinstance(input_ids, (list, tuple)) and input_ids and isinstance(input_ids[0], str)
    ):
        input_ids = gen.encode(input_ids, chat=chat)
    if stream:
        return gen.stream(input_ids, max_new_tokens=max_new_tokens, **kwargs)
    return gen.generate(input_ids, max_new_tokens=max_new_tokens, **kwargs)


def resolve_model_file(path: str | os.PathLike) -> Path:
    """``prefill.onnx`` of a generation export directory; other paths unchanged."""
    p = Path(path)
    if p.is_dir():
        from sparse_attn.export.generate import read_generation_info

        return p / read_generation_info(p)["prefill"]
    return p


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "Generator",
    "SamplingOptions",
    "check_options",
    "left_pad",
    "resolve_model_file",
    "runtime_generate",
    "select_tokens",
]
