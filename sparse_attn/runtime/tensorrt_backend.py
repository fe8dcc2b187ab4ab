"""The runtime's TensorRT backend: run an engine written by ``sparse-attn engine``.

``TensorRTSession(engine_path)`` deserializes the engine with the sparse-attn plugin
registered, and for each request sets the input shapes, allocates the outputs with the shapes
TensorRT reports for those inputs, and executes on a CUDA stream (PyTorch CUDA tensors are the
device buffers). Metadata comes from the engine's JSON sidecar (``<engine>.json``, written by
:func:`sparse_attn.engines.build_engine`): the source model's ``metadata_props`` plus the
engine's own fields under ``sparse_attn.engine.*``.

Not run anywhere yet: no machine with TensorRT and a GPU was available (``docs/gpu.md``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from sparse_attn.errors import InvalidInputError


def _require_tensorrt():
    from sparse_attn.engines import import_tensorrt

    return import_tensorrt(
        "run a TensorRT engine", hint="run the .onnx model with --backend onnxruntime instead"
    )[0]


class TensorRTSession:
    """One deserialized engine and one execution context (calls are serialised by a lock).

    Args:
        engine_path: engine file from ``sparse-attn engine --backend tensorrt``.

    Attributes:
        input_names, output_names: I/O tensor names in engine order.
        metadata: ``dict[str, str]``: the source model's ``metadata_props`` and
            ``sparse_attn.engine.*`` fields of the sidecar.

    Raises:
        UnsupportedEnvironmentError: TensorRT or a CUDA GPU is missing.
        InvalidInputError: the file is missing or is not an engine TensorRT can load.
    """

    def __init__(self, engine_path: str) -> None:
        trt = _require_tensorrt()
        import torch

        from sparse_attn.engines import read_sidecar
        from sparse_attn.plugins import tensorrt_plugin

        path = Path(engine_path)
        if not path.is_file():
            raise InvalidInputError(f"engine file {path} does not exist; check the path")
        tensorrt_plugin.register()
        self._trt = trt
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise InvalidInputError(
                f"TensorRT could not deserialize {path} (built by another TensorRT version or "
                "for another GPU?); rebuild it with sparse-attn engine"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_in[n]]
        self.output_names = [n for n in names if not is_in[n]]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        side = read_sidecar(path)
        meta = {str(k): str(v) for k, v in (side.get("metadata") or {}).items()}
        for k, v in side.items():
            if k != "metadata":
                meta[f"sparse_attn.engine.{k}"] = v if isinstance(v, str) else json.dumps(v)
        self.metadata = meta
        self._stream = torch.cuda.Stream()
        self._lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one request.

        Args:
            feeds: ``{input_name: array}`` for every engine input (dtype cast to the engine's
                when it is a safe cast; shapes within the engine's profile).

        Returns:
            ``{output_name: array}`` with the shapes TensorRT computed for these inputs.

        Raises:
            InvalidInputError: a missing/unknown input, an unsafe dtype, or a shape TensorRT
                rejects (outside the profile).
            RuntimeError: execution failed.
        """
        torch = self._torch
        missing = [n for n in self.input_names if n not in feeds]
        unknown = [n for n in feeds if n not in self.input_names]
        if missing or unknown:
            raise InvalidInputError(
                f"engine inputs are {self.input_names}; missing {missing}, unknown {unknown}"
            )
        with self._lock:
            keep = []
            for name in self.input_names:
                arr = np.asarray(feeds[name])
                want = self._dtypes[name]
                if arr.dtype != want:
                    if not np.can_cast(arr.dtype, want, casting="same_kind"):
                        raise InvalidInputError(
                            f"input {name!r} has dtype {arr.dtype}, the engine wants {want}"
                        )
                    arr = arr.astype(want)
                t = torch.from_numpy(np.ascontiguousarray(arr)).to("cuda", non_blocking=False)
                if not self.context.set_input_shape(name, tuple(arr.shape)):
                    raise InvalidInputError(
                        f"input {name!r} shape {list(arr.shape)} is outside the engine's "
                        "optimisation profile (see the engine's .json)"
                    )
                self.context.set_tensor_address(name, t.data_ptr())
                keep.append(t)
            outs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"TensorRT left output {name!r} with shape {shape}")
                tdt = torch.from_numpy(np.zeros(0, dtype=self._dtypes[name])).dtype
                o = torch.empty(shape, dtype=tdt, device="cuda")
                self.context.set_tensor_address(name, o.data_ptr())
                outs[name] = o
            torch.cuda.current_stream().synchronize()  # inputs copied before the engine reads
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see its log)")
            self._stream.synchronize()
            del keep
            return {n: o.cpu().numpy() for n, o in outs.items()}

    def close(self) -> None:
        """Release the context and engine."""
        self.context = None
        self.engine = None
