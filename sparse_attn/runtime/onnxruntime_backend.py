"""ONNX Runtime backend of :class:`sparse_attn.runtime.Runtime`.

CPU execution provider everywhere; the CUDA execution provider where ``onnxruntime-gpu`` is
installed, with I/O binding (inputs copied to device buffers once, outputs allocated on the
device and copied back once). Exported models carry a model-local function for
``sparse_attn::BlockSparseAttention``, so no plugin library is needed (docs/spec.md).

``InferenceSession.run`` and ``run_with_iobinding`` (with one binding per call) are
thread-safe, so one backend serves many threads without a lock.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sparse_attn.errors import InvalidInputError, UnsupportedEnvironmentError
from sparse_attn.runtime.validation import TensorSpec, to_numpy_dtype

NAME = "onnxruntime"


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency here
        raise UnsupportedEnvironmentError(
            "onnxruntime is not installed; install it with `pip install onnxruntime` "
            "(or onnxruntime-gpu, never both)"
        ) from exc
    return ort


def session_options(intra_op_threads: int | None = None, allow_spinning: bool | None = None):
    """The ``onnxruntime.SessionOptions`` of every session the runtime opens.

    Intra-op threads from ``intra_op_threads`` (default ``OMP_NUM_THREADS`` when set, else
    ONNX Runtime's own default); thread spinning as given (default ONNX Runtime's); warnings
    only. ONNX Runtime's memory pattern is off: it plans one arena block per input shape, so
    with a dynamic S (and the op's chunked Scan) it keeps a second copy of the activations
    (Gemma 3 270M at S = 32768: 7.8 GiB peak with it, 4.8 GiB without, same speed), and a
    decode step whose ``attention_mask`` grows by one token would grow it with the text.
    """
    opts = _import_ort().SessionOptions()
    threads = intra_op_threads
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"])
    if threads:
        opts.intra_op_num_threads = int(threads)
    if allow_spinning is not None:
        opts.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
        )
    opts.log_severity_level = 3
    opts.enable_mem_pattern = False
    return opts


def _dim(d) -> int | str | None:
    if isinstance(d, int):
        return d
    if isinstance(d, str) and d:
        return d
    return None


class OnnxRuntimeBackend:
    """One ONNX Runtime ``InferenceSession`` over an ``.onnx`` file.

    Args:
        path: ONNX model file.
        providers: execution providers; default CUDA (if available) then CPU.
        intra_op_threads: ORT intra-op threads; default ``OMP_NUM_THREADS`` or ORT's choice.
        allow_spinning: ORT intra-op thread spinning (``session.intra_op.allow_spinning``);
            ``None`` keeps ORT's default (on). Off costs a little latency on an idle machine
            and saves a lot on a shared one: the block-sparse function body runs ~35 ops per
            layer, each of which waits for every spinning thread.

    Attributes:
        inputs / outputs: :class:`TensorSpec` lists from the session.
        metadata: the model's ``metadata_props`` (dict str -> str).
        device: ``"cuda"`` when the CUDA provider runs the model, else ``"cpu"``.

    Raises:
        InvalidInputError: if the file cannot be loaded as an ONNX model.
    """

    name = NAME

    def __init__(
        self,
        path: str | os.PathLike,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
        allow_spinning: bool | None = None,
    ) -> None:
        ort = _import_ort()
        self._ort = ort
        self.path = Path(path)
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider",) if p in available]
            providers.append("CPUExecutionProvider")
        opts = session_options(intra_op_threads, allow_spinning)
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/InvalidGraph types
            msg = " ".join(str(exc).split())[:300]
            raise InvalidInputError(
                f"{self.path} is neither an ONNX model nor a TensorRT engine (ONNX Runtime "
                f"says {type(exc).__name__}: {msg}); pass a file written by `sparse-attn "
                "export` or `sparse-attn engine`"
            ) from exc
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self.inputs = [
            TensorSpec(i.name, to_numpy_dtype(i.type), tuple(_dim(d) for d in i.shape))
            for i in self.session.get_inputs()
        ]
        self.outputs = [
            TensorSpec(o.name, to_numpy_dtype(o.type), tuple(_dim(d) for d in o.shape))
            for o in self.session.get_outputs()
        ]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def output_names(self) -> list[str]:
        """Output names in model order."""
        return [o.name for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one validated request.

        Args:
            feeds: input name -> numpy array (already validated, C-contiguous).

        Returns:
            output name -> numpy array (host memory), in model order.
        """
        if self.device == "cuda":
            binding = self.session.io_binding()
            for name, arr in feeds.items():
                binding.bind_cpu_input(name, arr)
            for name in self.output_names:
                binding.bind_output(name, "cuda")
            self.session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = self.session.run(self.output_names, feeds)
        return {n: np.asarray(v) for n, v in zip(self.output_names, values, strict=True)}

    def close(self) -> None:
        """Release the session."""
        self.session = None
