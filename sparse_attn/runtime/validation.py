"""Model metadata and request validation for :class:`sparse_attn.runtime.Runtime`.

Every request is checked here *before* any backend runs, so a bad request costs nothing and
leaves the runtime serving. Each refusal is one :class:`~sparse_attn.errors.InvalidInputError`
whose message says what was expected, what came, and how to fix it.

Shape convention of exported models (docs/spec.md): dimension 0 of every input is
the batch (``>= 1``); every other *symbolic* dimension is a sequence length ``S`` with
``1 <= S <= max_seq_len`` (``S == max_seq_len`` for models exported with a static sequence
length); every numeric dimension must match exactly. Inputs that share a symbolic dimension
name must agree on its value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparse_attn.errors import InvalidInputError
from sparse_attn.opspec import META_PREFIX

#: ONNX / ONNX Runtime / TensorRT type names -> numpy dtypes.
_TYPE_NAMES = {
    "float": np.float32,
    "float32": np.float32,
    "tensor(float)": np.float32,
    "float16": np.float16,
    "half": np.float16,
    "tensor(float16)": np.float16,
    "double": np.float64,
    "float64": np.float64,
    "tensor(double)": np.float64,
    "int64": np.int64,
    "tensor(int64)": np.int64,
    "int32": np.int32,
    "tensor(int32)": np.int32,
    "int8": np.int8,
    "tensor(int8)": np.int8,
    "uint8": np.uint8,
    "tensor(uint8)": np.uint8,
    "bool": np.bool_,
    "tensor(bool)": np.bool_,
}

#: Inputs filled in when a request leaves them out: name -> fill value (1 = real token).
DEFAULT_FILLS = {"key_padding_mask": 1, "attention_mask": 1, "token_type_ids": 0}

#: Names of inputs that hold token ids (checked against the vocabulary).
TOKEN_ID_INPUTS = ("input_ids",)


def to_numpy_dtype(type_name: Any) -> np.dtype:
    """Map an ONNX/ORT/TensorRT/numpy type name (``"tensor(float)"``, ``"int64"``...) to numpy.

    Raises:
        InvalidInputError: for a type name the runtime does not know.
    """
    if isinstance(type_name, np.dtype):
        return type_name
    key = str(type_name).lower().replace("datatype.", "")
    if key in _TYPE_NAMES:
        return np.dtype(_TYPE_NAMES[key])
    try:
        return np.dtype(key)
    except TypeError as exc:
        raise InvalidInputError(f"unknown tensor type {type_name!r} in the model") from exc


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model input or output.

    Attributes:
        name: tensor name in the model.
        dtype: numpy dtype.
        shape: one entry per dimension: an ``int`` (fixed) or a ``str`` (symbolic, e.g.
            ``"batch"``, ``"seq_len"``); ``None`` or a negative int means unnamed dynamic.
    """

    name: str
    dtype: np.dtype
    shape: tuple

    def describe(self) -> str:
        """``name: dtype [d0, d1, ...]`` for messages."""
        dims = ", ".join(str(d) if d is not None else "?" for d in self.shape)
        return f"{self.name}: {np.dtype(self.dtype).name} [{dims}]"

    def as_json(self) -> dict:
        """JSON form used in ``sparse_attn.inputs`` metadata."""
        return {"name": self.name, "dtype": np.dtype(self.dtype).name, "shape": list(self.shape)}


def specs_from_json(text: str | None) -> list[TensorSpec] | None:
    """Parse the ``sparse_attn.inputs`` / ``sparse_attn.outputs`` metadata JSON (or None)."""
    if not text:
        return None
    try:
        items = json.loads(text)
        return [
            TensorSpec(str(d["name"]), to_numpy_dtype(d["dtype"]), tuple(d["shape"])) for d in items
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"model metadata has malformed tensor descriptions: {exc}") from exc


def _parse_bool(value: str | None) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def _find_key(obj: Any, key: str) -> Any:
    """Depth-first search of a nested dict/list for ``key`` (first hit), else None."""
    if isinstance(obj, Mapping):
        if key in obj:
            return obj[key]
        for v in obj.values():
            hit = _find_key(v, key)
            if hit is not None:
                return hit
    elif isinstance(obj, list):
        for v in obj:
            hit = _find_key(v, key)
            if hit is not None:
                return hit
    return None


@dataclass
class ModelInfo:
    """What the runtime knows about a model, read from its ``sparse_attn.*`` metadata.

    Attributes:
        metadata: raw metadata (string -> string), all keys.
        family: ``sparse_attn.model`` (``attention``, ``minilm``...) or ``None`` for a foreign model.
        max_seq_len: largest sequence length a request may have, or ``None`` if unknown.
        static_seq_len: True when requests must have exactly ``max_seq_len`` tokens.
        dtype: ``sparse_attn.dtype`` (``float32`` | ``float16``) or ``None``.
        model_config: parsed ``sparse_attn.model_config`` JSON (``{}`` if absent).
        vocab_size: size of the token vocabulary (``sparse_attn.vocab_size``, else from
            ``model_config``), or ``None``.
        type_vocab_size: number of token types (from ``model_config``), or ``None``.
    """

    metadata: dict
    family: str | None = None
    max_seq_len: int | None = None
    static_seq_len: bool = False
    dtype: str | None = None
    model_config: dict = field(default_factory=dict)
    vocab_size: int | None = None
    type_vocab_size: int | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str] | None) -> ModelInfo:
        """Build from a metadata mapping (missing keys give ``None``/defaults).

        Raises:
            InvalidInputError: if a present key has a malformed value.
        """
        md = {str(k): str(v) for k, v in (metadata or {}).items()}
        cfg: dict = {}
        raw_cfg = md.get(f"{META_PREFIX}model_config")
        if raw_cfg:
            try:
                cfg = json.loads(raw_cfg)
            except ValueError as exc:
                raise InvalidInputError(
                    f"model metadata 'sparse_attn.model_config' is not valid JSON: {exc}"
                ) from exc
            if not isinstance(cfg, dict):
                cfg = {"value": cfg}
        max_len = md.get(f"{META_PREFIX}max_seq_len")
        try:
            max_seq_len = int(max_len) if max_len not in (None, "") else None
        except ValueError as exc:
            raise InvalidInputError(
                f"model metadata 'sparse_attn.max_seq_len' must be an integer, got {max_len!r}"
            ) from exc
        vocab = md.get(f"{META_PREFIX}vocab_size") or _find_key(cfg, "vocab_size")
        tvocab = _find_key(cfg, "type_vocab_size")
        return cls(
            metadata=md,
            family=md.get(f"{META_PREFIX}model") or None,
            max_seq_len=max_seq_len,
            static_seq_len=_parse_bool(md.get(f"{META_PREFIX}static_seq_len")),
            dtype=md.get(f"{META_PREFIX}dtype") or None,
            model_config=cfg,
            vocab_size=_positive_int("vocab_size", vocab),
            type_vocab_size=_positive_int("type_vocab_size", tvocab),
        )


def _positive_int(key: str, value: Any) -> int | None:
    """A vocabulary size from metadata: a positive int, or None when absent."""
    if value in (None, "", 0):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        n = 0
    if n < 1:
        raise InvalidInputError(
            f"model metadata {key}={str(value)[:40]!r} is not a positive integer"
        )
    return n


def _as_array(name: str, value: Any) -> np.ndarray:
    """numpy view of a request value (numpy array, torch tensor, nested list)."""
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch"):
        return value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(
            f"input {name!r}: ragged or non-numeric {type(value).__name__} cannot become an "
            f"array ({exc}); pass a rectangular numpy array"
        ) from exc
    if arr.dtype == object:
        raise InvalidInputError(
            f"input {name!r}: ragged or non-numeric data; pass a rectangular numpy array"
        )
    return arr


@dataclass(frozen=True)
class ValidatedRequest:
    """A request that passed :func:`validate_request`.

    Attributes:
        feeds: name -> C-contiguous numpy array, in the model's input order, defaults filled in.
        batch: batch size B (>= 1).
        seq_len: sequence length S of the request, or ``None`` if no input has one.
        dims: symbolic dimension name -> value for this request.
    """

    feeds: dict
    batch: int
    seq_len: int | None
    dims: dict


def validate_request(
    feeds: Mapping[str, Any], inputs: list[TensorSpec], info: ModelInfo
) -> ValidatedRequest:
    """Check one request against the model's inputs; refuse it before anything runs.

    Args:
        feeds: input name -> array (numpy, torch tensor or nested list). Inputs named in
            :data:`DEFAULT_FILLS` may be left out (filled with ones / zeros).
        inputs: the model's input specs.
        info: model metadata (``max_seq_len``, ``static_seq_len``, ``vocab_size``).

    Returns:
        :class:`ValidatedRequest`.

    Raises:
        InvalidInputError: unknown or missing input name, wrong dtype, wrong rank, a fixed
            dimension that differs, empty batch, S < 1 or S > max_seq_len (S != max_seq_len
            for static models), symbolic dims that disagree between inputs, or token ids
            outside ``[0, vocab_size)``. The message names the input, expected and received.
    """
    if not isinstance(feeds, Mapping):
        raise InvalidInputError(
            f"a request must be a dict of input name -> array, got {type(feeds).__name__}"
        )
    expected = {s.name: s for s in inputs}
    unknown = [k for k in feeds if k not in expected]
    if unknown:
        raise InvalidInputError(
            f"unknown input name(s) {unknown}; the model's inputs are "
            f"{[s.describe() for s in inputs]}"
        )
    arrays: dict[str, np.ndarray] = {}
    for spec in inputs:
        if spec.name in feeds:
            arrays[spec.name] = _as_array(spec.name, feeds[spec.name])
    missing = [s.name for s in inputs if s.name not in arrays and s.name not in DEFAULT_FILLS]
    if missing:
        raise InvalidInputError(
            f"missing input(s) {missing}; the model's inputs are {[s.describe() for s in inputs]}"
        )
    if not arrays:
        raise InvalidInputError(
            f"empty request; the model's inputs are {[s.describe() for s in inputs]}"
        )

    dims: dict[str, int] = {}
    batch = None
    seq_len = None
    for spec in inputs:
        if spec.name not in arrays:
            continue
        arr = arrays[spec.name]
        want = np.dtype(spec.dtype)
        if arr.dtype != want:
            raise InvalidInputError(
                f"input {spec.name!r}: expected dtype {want.name}, received {arr.dtype.name}; "
                f"convert it with .astype(numpy.{want.name})"
            )
        if arr.ndim != len(spec.shape):
            raise InvalidInputError(
                f"input {spec.name!r}: expected rank {len(spec.shape)} "
                f"({spec.describe()}), received shape {list(arr.shape)}"
            )
        for axis, (want_d, got_d) in enumerate(zip(spec.shape, arr.shape, strict=True)):
            if axis == 0:
                if got_d < 1:
                    raise InvalidInputError(
                        f"input {spec.name!r}: empty batch (dimension 0 is {got_d}); "
                        "send at least one example"
                    )
                if batch is None:
                    batch = got_d
                elif batch != got_d:
                    raise InvalidInputError(
                        f"input {spec.name!r}: batch size {got_d} differs from {batch} of the "
                        "other inputs; all inputs must have the same batch size"
                    )
            if isinstance(want_d, int) and want_d >= 0:
                if got_d != want_d and axis > 0 and want_d == info.max_seq_len:
                    _check_seq_len(spec.name, axis, got_d, info)  # static S: say so
                if got_d != want_d:
                    raise InvalidInputError(
                        f"input {spec.name!r}: dimension {axis} must be {want_d} "
                        f"({spec.describe()}), received {got_d} (shape {list(arr.shape)})"
                    )
                continue
            if axis > 0:
                _check_seq_len(spec.name, axis, got_d, info)
                seq_len = got_d if seq_len is None else seq_len
            if isinstance(want_d, str) and want_d:
                if dims.setdefault(want_d, got_d) != got_d:
                    raise InvalidInputError(
                        f"input {spec.name!r}: dimension {axis} ({want_d!r}) is {got_d} but "
                        f"another input has {want_d}={dims[want_d]}; they must agree"
                    )
    if batch is None:  # pragma: no cover - every input has a dim 0 unless all are scalars
        batch = 1

    for name in TOKEN_ID_INPUTS:
        if name in arrays and info.vocab_size and arrays[name].size:
            _check_ids(name, arrays[name], info.vocab_size, "vocabulary size")
    if "token_type_ids" in arrays and info.type_vocab_size and arrays["token_type_ids"].size:
        _check_ids("token_type_ids", arrays["token_type_ids"], info.type_vocab_size, "token types")

    out: dict[str, np.ndarray] = {}
    for spec in inputs:
        if spec.name in arrays:
            out[spec.name] = np.ascontiguousarray(arrays[spec.name])
        else:
            shape = []
            for axis, d in enumerate(spec.shape):
                if isinstance(d, int) and d >= 0:
                    shape.append(d)
                elif axis == 0:
                    shape.append(batch)
                elif isinstance(d, str) and d in dims:
                    shape.append(dims[d])
                elif seq_len is not None:
                    shape.append(seq_len)
                else:
                    raise InvalidInputError(
                        f"input {spec.name!r} was left out and its shape {spec.describe()} "
                        "cannot be inferred from the other inputs; pass it explicitly"
                    )
            out[spec.name] = np.full(shape, DEFAULT_FILLS[spec.name], dtype=spec.dtype)
    return ValidatedRequest(feeds=out, batch=int(batch), seq_len=seq_len, dims=dims)


def _check_seq_len(name: str, axis: int, got: int, info: ModelInfo) -> None:
    if got < 1:
        raise InvalidInputError(
            f"input {name!r}: sequence length (dimension {axis}) is {got}; it must be >= 1"
        )
    if info.max_seq_len is None:
        return
    if info.static_seq_len and got != info.max_seq_len:
        raise InvalidInputError(
            f"input {name!r}: this model was exported with a static sequence length of "
            f"{info.max_seq_len} tokens (its pattern needs the end of the sequence), received "
            f"{got}; pad the request to {info.max_seq_len} tokens"
        )
    if got > info.max_seq_len:
        raise InvalidInputError(
            f"input {name!r}: sequence length {got} exceeds the model's max_seq_len "
            f"{info.max_seq_len}; truncate the request or export with a larger --max-seq-len"
        )


def _check_ids(name: str, arr: np.ndarray, limit: int, what: str) -> None:
    if not np.issubdtype(arr.dtype, np.integer):
        return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= limit:
        bad = lo if lo < 0 else hi
        where = tuple(int(i) for i in np.argwhere(arr == bad)[0])
        raise InvalidInputError(
            f"input {name!r}: id {bad} at index {list(where)} is outside [0, {limit}) "
            f"(the model's {what}); use the model's own tokenizer"
        )
