"""``sparse_attn.Runtime``: serve an exported model or engine, validated, thread-safe (docs/spec.md).

::

    rt = sparse_attn.Runtime("artifacts/minilm.onnx")          # .onnx -> ONNX Runtime
    out = rt.run({"input_ids": ids, "attention_mask": mask})   # dict name -> numpy array
    emb = rt.embed(["A first text.", "A second one."])        # text models: [B, E]

Backends: ``onnxruntime`` (an ``.onnx`` file, including the ORT-optimised model written by
``sparse-attn engine --backend onnxruntime``), ``tensorrt`` (a TensorRT engine, through the
engines part's ``TensorRTSession``), ``torch`` (the eager PyTorch model rebuilt from the
file's metadata: the reference of ``sparse-attn check``). ``auto`` picks ONNX Runtime for an
ONNX file and TensorRT for an engine.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparse_attn.errors import InvalidInputError, SparseAttnError, UnsupportedEnvironmentError
from sparse_attn.runtime.validation import (
    ModelInfo,
    TensorSpec,
    ValidatedRequest,
    specs_from_json,
    validate_request,
)

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")

#: Bytes that a serialized TensorRT engine carries near its start.
_TRT_MAGIC = b"ftrt"


def _load_onnx_proto(path: Path):
    """Parse an ONNX file without external data; ``None`` if it is not an ONNX model."""
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # protobuf DecodeError and friends: not an ONNX file
        return None
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        return None
    return model


def check_external_data(model, path: Path) -> None:
    """Refuse a model whose external-data files are missing or lie outside its directory.

    Args:
        model: the ``onnx.ModelProto`` loaded without external data.
        path: the model file (external data is relative to its directory).

    Raises:
        InvalidInputError: an absolute location, one that escapes the directory (``..``, a
            symbolic link out of it), or a missing file.
    """
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors

    base = path.resolve().parent
    for tensor in _get_all_tensors(model):
        if tensor.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        loc = ExternalDataInfo(tensor).location
        target = (base / loc).resolve()
        if os.path.isabs(loc) or not target.is_relative_to(base):
            raise InvalidInputError(
                f"{path}: tensor {tensor.name!r} points at external data {loc!r} outside the "
                "model's directory; refusing to read it (keep external data next to the model)"
            )
        if not target.is_file():
            raise InvalidInputError(
                f"{path}: external data file {loc!r} of tensor {tensor.name!r} is missing; "
                "copy it next to the model"
            )


def graph_vocab_size(model) -> int | None:
    """Rows of the embedding table that ``input_ids`` indexes (a ``Gather`` on an initializer),
    or ``None`` when the graph has none: the vocabulary size of a foreign text model."""
    if model is None:
        return None
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == "input_ids":
            table = inits.get(node.input[0])
            if table is not None and len(table.dims) == 2 and table.dims[0] > 0:
                return int(table.dims[0])
    return None


def detect_kind(path: str | os.PathLike, verify: bool = True) -> str:
    """Tell what a model file is, from its content: ``"onnx"`` or ``"tensorrt"``.

    A TensorRT engine is recognised by its magic bytes; anything else must parse as an ONNX
    model. The ``<file>.json`` description written by ``sparse-attn engine`` is consulted only
    for a file that is neither (an engine from a TensorRT whose header differs), so a stray or
    broken sidecar next to a valid ``.onnx`` changes nothing.

    Args:
        path: the file.
        verify: kept for compatibility; the content is always checked.

    Raises:
        InvalidInputError: if the path does not exist, is not a file, or is neither an ONNX
            model nor a TensorRT engine.
    """
    return _inspect(Path(path))[0]


def _inspect(p: Path):
    """``(kind, onnx.ModelProto or None)`` of a model file (see :func:`detect_kind`)."""
    from sparse_attn.engines import read_sidecar

    if not p.exists():
        raise InvalidInputError(f"model file {p} does not exist; check the path")
    if not p.is_file():
        raise InvalidInputError(f"{p} is not a file; pass an .onnx model or a TensorRT engine")
    with open(p, "rb") as fh:
        head = fh.read(64)
    if _TRT_MAGIC in head[:32]:
        return "tensorrt", None
    model = _load_onnx_proto(p)
    if model is not None:
        return "onnx", model
    if read_sidecar(p, strict=False).get("backend") == "tensorrt":
        return "tensorrt", None
    raise InvalidInputError(
        f"{p} is neither an ONNX model nor a TensorRT engine ({p.stat().st_size} bytes); "
        "pass a file written by `sparse-attn export` or `sparse-attn engine`"
    )


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, or an engine's metadata (see :class:`Runtime`).

    A TensorRT engine's metadata is read from its JSON sidecar (``<engine>.json``, key
    ``metadata``: the source model's ``metadata_props``) without TensorRT; only an engine
    without a sidecar needs TensorRT to open it.

    Raises:
        InvalidInputError: if the file is not a model.
        UnsupportedEnvironmentError: for an engine whose metadata needs TensorRT to read.
    """
    from sparse_attn.engines import read_sidecar

    p = Path(path)
    kind = detect_kind(p)
    if kind == "onnx":
        model = _load_onnx_proto(p)
        return {m.key: m.value for m in model.metadata_props}
    side = read_sidecar(p).get("metadata")
    if isinstance(side, dict) and side:
        return {str(k): str(v) for k, v in side.items()}
    return _open_tensorrt(p).metadata


def _open_tensorrt(path: Path):
    try:
        from sparse_attn.runtime.tensorrt_backend import TensorRTSession
    except ImportError as exc:
        raise UnsupportedEnvironmentError(
            f"the TensorRT backend is unavailable ({exc}); run the .onnx model with "
            "--backend onnxruntime instead"
        ) from exc
    return TensorRTSession(str(path))


class _TensorRTAdapter:
    """Adapts a ``TensorRTSession`` (which serialises its own calls) to the runtime."""

    name = "tensorrt"

    def __init__(self, path: Path) -> None:
        self.session = _open_tensorrt(path)
        self.metadata = dict(getattr(self.session, "metadata", {}) or {})
        specs = specs_from_json(self.metadata.get("sparse_attn.inputs"))
        if specs is None:
            raise InvalidInputError(
                f"engine {path} has no 'sparse_attn.inputs' metadata; rebuild it with "
                "`sparse-attn engine`"
            )
        names = list(self.session.input_names)
        self.inputs = [s for s in specs if s.name in names] or specs
        self.outputs = specs_from_json(self.metadata.get("sparse_attn.outputs")) or [
            TensorSpec(n, np.dtype(np.float32), ()) for n in self.session.output_names
        ]

    @property
    def output_names(self) -> list[str]:
        return list(self.session.output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(self.session.run(feeds))

    def close(self) -> None:
        close = getattr(self.session, "close", None)
        if close is not None:
            close()


class Runtime:
    """Serve one model file: validate each request, run it on a backend, return numpy outputs.

    Args:
        path: an ``.onnx`` model (from ``sparse-attn export`` / ``sparse-attn engine --backend
            onnxruntime``) or a TensorRT engine (``sparse-attn engine --backend tensorrt``).
        backend: ``"auto"`` (ONNX Runtime for ONNX, TensorRT for an engine),
            ``"onnxruntime"``, ``"tensorrt"`` or ``"torch"`` (eager PyTorch rebuilt from the
            file's metadata).
        providers: ONNX Runtime execution providers (default CUDA if installed, then CPU).
        intra_op_threads: ONNX Runtime intra-op threads (default ``OMP_NUM_THREADS`` or ORT's).
        allow_spinning: ONNX Runtime thread spinning; ``None`` = ORT's default (on). Turn it
            off on a machine shared with other work.

    Attributes:
        path, backend (the resolved name), info (:class:`ModelInfo`), metadata (dict),
        inputs / outputs (:class:`TensorSpec` lists), max_seq_len.

    Thread safety: :meth:`run`, :meth:`run_text` and :meth:`embed` may be called from many
    threads at once (ONNX Runtime sessions are thread-safe; the torch and TensorRT backends
    are serialised by a lock).

    Raises:
        InvalidInputError: unknown backend, missing file, a file that is not a model, or an
            engine given to the ``onnxruntime`` backend.
        UnsupportedEnvironmentError: TensorRT requested where TensorRT or a GPU is absent.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        backend: str = "auto",
        *,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
        allow_spinning: bool | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise InvalidInputError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
        from sparse_attn.runtime.generate import resolve_model_file

        self.path = resolve_model_file(path)  # a generation export directory -> its prefill
        kind, proto = _inspect(self.path)
        if kind == "onnx":
            check_external_data(proto, self.path)
        if backend == "auto":
            backend = "tensorrt" if kind == "tensorrt" else "onnxruntime"
        if backend == "onnxruntime":
            if kind != "onnx":
                raise InvalidInputError(
                    f"{self.path} is a TensorRT engine; ONNX Runtime needs the .onnx model "
                    "(or use --backend tensorrt)"
                )
            from sparse_attn.runtime.onnxruntime_backend import OnnxRuntimeBackend

            impl = OnnxRuntimeBackend(
                self.path,
                providers=providers,
                intra_op_threads=intra_op_threads,
                allow_spinning=allow_spinning,
            )
            metadata = impl.metadata
        elif backend == "tensorrt":
            if kind != "tensorrt":
                raise InvalidInputError(
                    f"{self.path} is an ONNX model, not a TensorRT engine; build one with "
                    "`sparse-attn engine MODEL.onnx --backend tensorrt -o OUT` "
                    "or use --backend onnxruntime"
                )
            impl = _TensorRTAdapter(self.path)
            metadata = impl.metadata
        else:
            from sparse_attn.runtime.torch_backend import TorchBackend

            metadata = read_metadata(self.path)
            impl = TorchBackend(metadata)
        self._impl = impl
        self.backend = backend
        self.metadata: dict[str, str] = dict(metadata)
        self.info = ModelInfo.from_metadata(self.metadata)
        if self.info.vocab_size is None and "input_ids" in [t.name for t in impl.inputs]:
            self.info.vocab_size = graph_vocab_size(proto)
        self.inputs: list[TensorSpec] = list(impl.inputs)
        self.outputs: list[TensorSpec] = list(impl.outputs)
        self._encoder = None
        self._encoder_lock = threading.Lock()

    # ------------------------------------------------------------------ properties
    @property
    def input_names(self) -> list[str]:
        """Model input names, in order."""
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Model output names, in order."""
        return [s.name for s in self.outputs] or list(self._impl.output_names)

    @property
    def max_seq_len(self) -> int | None:
        """Longest sequence a request may have (``None`` for a model without metadata)."""
        return self.info.max_seq_len

    @property
    def is_text_model(self) -> bool:
        """True when the model takes ``input_ids`` (it has a tokenizer front end)."""
        return "input_ids" in self.input_names

    def __repr__(self) -> str:
        return (
            f"Runtime({str(self.path)!r}, backend={self.backend!r}, model={self.info.family!r}, "
            f"max_seq_len={self.max_seq_len})"
        )

    # ------------------------------------------------------------------ tensors
    def validate(self, feeds: Mapping[str, Any]) -> ValidatedRequest:
        """Check a request without running it (see :func:`validate_request`).

        Raises:
            InvalidInputError: with expected vs received for the first problem found.
        """
        return validate_request(feeds, self.inputs, self.info)

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate and run one request.

        Args:
            feeds: input name -> array ``[B, ...]`` (numpy, torch tensor or nested list) of the
                model's dtypes; ``attention_mask`` / ``key_padding_mask`` (ones) and
                ``token_type_ids`` (zeros) may be left out.

        Returns:
            output name -> numpy array of the request's shape (e.g. ``[B, S, E]``).

        Raises:
            InvalidInputError: if the request is refused (nothing was run).
            SparseAttnError: if the backend fails on a valid request.
        """
        req = self.validate(feeds)
        try:
            return self._impl.run(req.feeds)
        except SparseAttnError:
            raise
        except Exception as exc:
            raise SparseAttnError(
                f"{self.backend} failed on a valid request (batch {req.batch}, seq_len "
                f"{req.seq_len}): {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            ) from exc

    # ------------------------------------------------------------------ text
    @property
    def encoder(self):
        """The model's :class:`~sparse_attn.runtime.text.TextEncoder` (created on first use).

        Raises:
            InvalidInputError: if the model is not a text model or has no known tokenizer.
        """
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None:
                    self._encoder = self._make_encoder()
        return self._encoder

    def _make_encoder(self):
        from sparse_attn.runtime.text import TextEncoder, find_tokenizer_file

        if not self.is_text_model:
            raise InvalidInputError(
                f"{self.path} takes {self.input_names}, not token ids: it is not a text model; "
                "use Runtime.run with arrays"
            )
        tok = find_tokenizer_file(self.info)
        if tok is None:
            raise InvalidInputError(
                f"no tokenizer is known for model family {self.info.family!r}; "
                "tokenize yourself and use Runtime.run"
            )
        max_len = self.max_seq_len
        if max_len is None:
            max_len = next(
                (
                    int(d)
                    for s in self.inputs
                    if s.name == "input_ids"
                    for d in s.shape[1:2]
                    if isinstance(d, int) and d > 0
                ),
                512,
            )
        return TextEncoder(tok, max_len, pad_to_max=self.info.static_seq_len)

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Tokenize texts into this model's feeds (``[B, S]`` of the model's dtypes).

        Warns:
            TextTruncatedWarning: for a text longer than ``max_seq_len`` tokens.
        """
        feeds, _ = self.encoder.encode(texts, self.inputs)
        return feeds

    def run_text(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Tokenize ``texts`` with the model's own tokenizer and run them as one batch.

        Returns:
            the model outputs, plus the feeds used under ``"input_ids"`` / ``"attention_mask"``
            keys only if the model has no outputs of those names.
        """
        feeds = self.encode(texts)
        out = self.run(feeds)
        for k in ("input_ids", "attention_mask"):
            if k in feeds and k not in out:
                out[k] = feeds[k]
        return out

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings ``float32 [len(texts), E]`` of a text model.

        Takes the model's embedding output (rank 2), or mean-pools its token vectors over
        real tokens (Sentence-BERT pooling) when it only returns ``[B, S, E]``.

        Raises:
            InvalidInputError: if ``texts`` is empty or the model is not a text model.
        """
        from sparse_attn.runtime.text import sentence_embeddings

        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InvalidInputError("no texts given; pass at least one text")
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        chunks = []
        for i in range(0, len(texts), batch_size):
            feeds = self.encode(texts[i : i + batch_size])
            out = self.run(feeds)
            picked = sentence_embeddings(out, feeds.get("attention_mask"))
            if picked is None:
                raise InvalidInputError(
                    f"the model's outputs {list(out)} hold no embeddings (no float [B, E] or "
                    "[B, S, E] output)"
                )
            chunks.append(picked[1])
        return np.concatenate(chunks, axis=0)

    # ------------------------------------------------------------------ generation
    def generate(self, input_ids, max_new_tokens: int = 32, **kwargs):
        """Generate with a generation export (``sparse-attn export ... --task generate``).

        Args:
            input_ids: token ids ``[B, S]`` (or a list of token lists of any lengths; rows are
                left-padded), or a text / list of texts for the checkpoint's tokenizer.
            max_new_tokens: most new tokens (>= 1).
            **kwargs: ``attention_mask``, ``temperature`` (0 = greedy, the default),
                ``top_k``, ``top_p``, ``seed``, ``stop_token_ids``, ``stream`` (return an
                iterator of int64 ``[B]`` per step), ``chat`` (apply the chat template to texts).

        Returns:
            int64 ``[B, N]`` new tokens, ``N <= max_new_tokens`` (see
            :mod:`sparse_attn.runtime.generate`).

        Raises:
            InvalidInputError: the model is not a generation export, or bad input (before any
                work).
        """
        from sparse_attn.runtime.generate import runtime_generate

        return runtime_generate(self, input_ids, max_new_tokens, **kwargs)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Release the backend's resources."""
        self._impl.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
