"""Triton Inference Server model repositories for exported models and engines.

:func:`write_repository` lays out::

    REPO/<name>/config.pbtxt          # backend onnxruntime (an .onnx) or tensorrt (an engine)
    REPO/<name>/1/model.onnx          # or 1/model.plan
    REPO/<name>_python/config.pbtxt   # optional: the python backend wrapping sparse_attn.Runtime
    REPO/<name>_python/1/model.py
    REPO/<name>_python/1/model.onnx

``config.pbtxt`` is Triton's ``ModelConfig`` in protobuf text format: the tensors' names,
types and dims come from the model's metadata (``sparse_attn.inputs`` / ``outputs``; the
batch dimension becomes ``max_batch_size``, every other symbolic dimension ``-1``), with a
dynamic batcher (``max_queue_delay_microseconds``, a bounded queue) and an instance group.

Triton's dynamic batcher merges only requests of equal shape unless a model declares ragged
inputs; the python-backend variant pads the requests Triton hands it (different sequence
lengths included) with :class:`sparse_attn.serving.batching.BatchPlan`, like
``sparse-attn serve``.

A TensorRT engine's entry records what the engine needs at load time (written in the file as
comments and ``parameters``): the ``sparse_attn::BlockSparseAttention`` plugin (namespace,
name, version, AOT or JIT implementation), the TensorRT version and the GPU's compute
capability it was built for.

One description, two renderings: :func:`model_config_dict` builds a plain dict in the JSON
form of ``ModelConfig`` (what ``GET /v2/models/{name}/config`` returns) and
:func:`to_pbtxt` writes it in the text format.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from sparse_attn.errors import InvalidInputError

#: numpy dtype -> Triton ``DataType`` enum name.
TRITON_TYPES = {
    np.dtype(np.bool_): "TYPE_BOOL",
    np.dtype(np.uint8): "TYPE_UINT8",
    np.dtype(np.uint16): "TYPE_UINT16",
    np.dtype(np.uint32): "TYPE_UINT32",
    np.dtype(np.uint64): "TYPE_UINT64",
    np.dtype(np.int8): "TYPE_INT8",
    np.dtype(np.int16): "TYPE_INT16",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.float64): "TYPE_FP64",
}

#: Enum-valued fields (written unquoted in the text format).
_ENUM_FIELDS = {"data_type", "kind", "timeout_action"}

KINDS = ("onnx", "tensorrt", "python")


class ModelDescription:
    """Inputs, outputs and metadata of a model file, read without loading a backend.

    Attributes:
        path: the file. kind: ``"onnx"`` or ``"tensorrt"``. metadata: ``sparse_attn.*`` keys.
        inputs / outputs: :class:`~sparse_attn.runtime.validation.TensorSpec` lists.
        sidecar: an engine's sidecar JSON (``{}`` for ONNX).

    Raises:
        InvalidInputError: not a model, or a model without tensor descriptions.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from sparse_attn.runtime.runtime import _load_onnx_proto, detect_kind, read_metadata
        from sparse_attn.runtime.validation import TensorSpec, specs_from_json, to_numpy_dtype

        self.path = Path(path)
        self.kind = detect_kind(self.path)
        self.metadata = read_metadata(self.path)
        self.sidecar: dict = {}
        if self.kind == "tensorrt":
            from sparse_attn.engines import read_sidecar

            self.sidecar = read_sidecar(self.path)
        inputs = specs_from_json(self.metadata.get("sparse_attn.inputs"))
        outputs = specs_from_json(self.metadata.get("sparse_attn.outputs"))
        if (inputs is None or outputs is None) and self.kind == "onnx":
            import onnx

            model = _load_onnx_proto(self.path)
            inits = {t.name for t in model.graph.initializer}

            def spec(vi):
                tt = vi.type.tensor_type
                dims = tuple(
                    int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None)
                    for d in tt.shape.dim
                )
                dt = to_numpy_dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
                return TensorSpec(vi.name, dt, dims)

            inputs = inputs or [spec(v) for v in model.graph.input if v.name not in inits]
            outputs = outputs or [spec(v) for v in model.graph.output]
        if not inputs or not outputs:
            raise InvalidInputError(
                f"{self.path} has no 'sparse_attn.inputs'/'sparse_attn.outputs' metadata; "
                "export or build it with sparse-attn"
            )
        self.inputs = list(inputs)
        self.outputs = list(outputs)


def _triton_type(name: str, dtype) -> str:
    dt = np.dtype(dtype)
    if dt not in TRITON_TYPES:
        raise InvalidInputError(f"tensor {name!r} has dtype {dt.name}, which Triton cannot carry")
    return TRITON_TYPES[dt]


def _batched(specs) -> bool:
    """True when every tensor's dimension 0 is a dynamic batch dimension."""
    return all(s.shape and not (isinstance(s.shape[0], int) and s.shape[0] >= 0) for s in specs)


def _dims(shape, batched: bool) -> list[int]:
    dims = shape[1:] if batched else shape
    return [int(d) if isinstance(d, int) and d >= 0 else -1 for d in dims]


def model_config_dict(
    model,
    name: str,
    *,
    kind: str = "onnx",
    max_batch_size: int = 8,
    max_delay_ms: float = 5.0,
    max_queue: int = 256,
    instances: int = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """Triton ``ModelConfig`` of a model, as a dict in its JSON form.

    Args:
        model: anything with ``inputs``, ``outputs`` (TensorSpec lists) and ``metadata``
            (a :class:`ModelDescription` or a :class:`sparse_attn.Runtime`).
        name: model name in the repository.
        kind: ``"onnx"`` (backend onnxruntime), ``"tensorrt"`` (platform tensorrt_plan) or
            ``"python"`` (python backend wrapping ``sparse_attn.Runtime``).
        max_batch_size: rows per batch of Triton's dynamic batcher.
        max_delay_ms: longest wait of a queued request for others (milliseconds).
        max_queue: most queued requests (more are rejected).
        instances: model instances (copies run in parallel).
        device: ``"cpu"`` or ``"gpu"`` (TensorRT is always ``gpu``).

    Raises:
        InvalidInputError: unknown kind or device, bad sizes, an untransportable dtype.
    """
    if kind not in KINDS:
        raise InvalidInputError(f"unknown repository kind {kind!r}; choose one of {KINDS}")
    if device not in ("cpu", "gpu"):
        raise InvalidInputError(f"device must be 'cpu' or 'gpu', got {device!r}")
    for key, val in (("max_batch_size", max_batch_size), ("instances", instances)):
        if not isinstance(val, int) or val < 1:
            raise InvalidInputError(f"{key} must be an integer >= 1, got {val!r}")
    if not isinstance(max_queue, int) or max_queue < 1:
        raise InvalidInputError(f"max_queue must be an integer >= 1, got {max_queue!r}")
    if not 0 <= float(max_delay_ms) <= 60_000:
        raise InvalidInputError(f"max_delay_ms must be within 0..60000, got {max_delay_ms!r}")
    from sparse_attn.runtime.validation import DEFAULT_FILLS

    specs_in, specs_out = list(model.inputs), list(model.outputs)
    batched = _batched(specs_in) and _batched(specs_out)
    cfg: dict[str, Any] = {"name": name}
    if kind == "onnx":
        cfg["backend"] = "onnxruntime"
        cfg["default_model_filename"] = "model.onnx"
    elif kind == "tensorrt":
        cfg["platform"] = "tensorrt_plan"
        cfg["backend"] = "tensorrt"
        cfg["default_model_filename"] = "model.plan"
        device = "gpu"
    else:
        cfg["backend"] = "python"
    cfg["max_batch_size"] = int(max_batch_size) if batched else 0
    cfg["input"] = []
    for s in specs_in:
        entry = {
            "name": s.name,
            "data_type": _triton_type(s.name, s.dtype),
            "dims": _dims(s.shape, batched),
        }
        if kind == "python" and s.name in DEFAULT_FILLS:
            entry["optional"] = True
        cfg["input"].append(entry)
    cfg["output"] = [
        {
            "name": s.name,
            "data_type": _triton_type(s.name, s.dtype),
            "dims": _dims(s.shape, batched),
        }
        for s in specs_out
    ]
    if batched:
        cfg["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(round(float(max_delay_ms) * 1000)),
            "default_queue_policy": {"max_queue_size": int(max_queue)},
        }
    cfg["instance_group"] = [
        {"count": int(instances), "kind": "KIND_GPU" if device == "gpu" else "KIND_CPU"}
    ]
    md = getattr(model, "metadata", {}) or {}
    params = {
        f"sparse_attn.{k}": md[f"sparse_attn.{k}"]
        for k in (
            "model",
            "pattern",
            "max_seq_len",
            "static_seq_len",
            "block_size",
            "dtype",
            "layout_hash",
        )
        if f"sparse_attn.{k}" in md
    }
    if kind == "tensorrt":
        params.update(plugin_requirements(getattr(model, "sidecar", {}) or {}))
    if kind == "python":
        params["sparse_attn.model_file"] = "model.onnx"
    if params:
        cfg["parameters"] = {k: {"string_value": str(v)} for k, v in sorted(params.items())}
    return cfg


def plugin_requirements(sidecar: dict) -> dict[str, str]:
    """What a TensorRT engine needs at load time, from its sidecar (flat string dict)."""
    from sparse_attn import opspec

    plugin = sidecar.get("plugin") or {}
    req = {
        "sparse_attn.plugin": (
            f"{plugin.get('namespace', opspec.PLUGIN_NAMESPACE)}::"
            f"{plugin.get('name', opspec.OP_TYPE)}"
        ),
        "sparse_attn.plugin_version": str(plugin.get("version", opspec.PLUGIN_VERSION)),
        "sparse_attn.plugin_implementation": str(plugin.get("implementation", "aot")),
    }
    for key in ("tensorrt_version", "compute_capability", "gpu", "plugin_layers"):
        if sidecar.get(key) is not None:
            req[f"sparse_attn.{key}"] = str(sidecar[key])
    return req


def config_json(cfg: dict) -> dict:
    """The dict as Triton's JSON form (what ``GET /v2/models/{name}/config`` returns)."""
    return json.loads(json.dumps(cfg))


# ---------------------------------------------------------------------------- text format
def _scalar(key: str, v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if isinstance(v, float) else str(int(v))
    if key in _ENUM_FIELDS:
        return str(v)
    return json.dumps(str(v))


def _render(obj: dict, indent: int) -> list[str]:
    pad = "  " * indent
    lines = []
    for key, val in obj.items():
        if key == "parameters" and isinstance(val, dict):
            for k, v in val.items():
                lines.append(f"{pad}parameters {{")
                lines.append(f"{pad}  key: {json.dumps(k)}")
                lines.append(f"{pad}  value {{ string_value: {json.dumps(v['string_value'])} }}")
                lines.append(f"{pad}}}")
        elif isinstance(val, dict):
            lines.append(f"{pad}{key} {{")
            lines += _render(val, indent + 1)
            lines.append(f"{pad}}}")
        elif isinstance(val, list) and val and isinstance(val[0], dict):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(val):
                lines.append(f"{pad}  {{")
                lines += _render(item, indent + 2)
                lines.append(f"{pad}  }}" + ("," if i < len(val) - 1 else ""))
            lines.append(f"{pad}]")
        elif isinstance(val, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(key, v) for v in val)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(key, val)}")
    return lines


def to_pbtxt(cfg: dict, comments: list[str] | None = None) -> str:
    """Render a :func:`model_config_dict` in protobuf text format (``config.pbtxt``)."""
    head = [f"# {c}" for c in comments or []]
    return "\n".join(head + _render(cfg, 0)) + "\n"


def parse_pbtxt(text: str):
    """Parse ``config.pbtxt`` text into Triton's ``ModelConfig`` protobuf (needs tritonclient).

    Raises:
        InvalidInputError: the text is not a valid ``ModelConfig``.
        UnsupportedEnvironmentError: tritonclient is not installed.
    """
    from sparse_attn.errors import UnsupportedEnvironmentError

    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise UnsupportedEnvironmentError(
            f"parsing config.pbtxt needs tritonclient ({exc}); pip install 'tritonclient[http]'"
        ) from exc
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise InvalidInputError(f"not a valid Triton ModelConfig: {exc}") from exc


# ---------------------------------------------------------------------------- repository
_PYTHON_MODEL = '''\
"""Triton python-backend model: sparse_attn.Runtime over the model file next to this one.

Written by `sparse-attn triton-repo`. Needs sparse-attn, onnxruntime and numpy in the
Python environment of Triton's python backend. Requests that Triton's dynamic batcher hands
over together are padded to the longest (mask input 0 on padding) and run as one call, then
cut back, as `sparse-attn serve` does.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from sparse_attn.errors import InvalidInputError
from sparse_attn.runtime import Runtime
from sparse_attn.serving.batching import run_merged


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = Path(args["model_repository"]) / args["model_version"]
        self.runtime = Runtime(here / params.get("sparse_attn.model_file", "model.onnx"))
        self.input_names = [s.name for s in self.runtime.inputs]
        self.output_names = self.runtime.output_names

    def execute(self, requests):
        feeds, errors = [], {}
        for i, request in enumerate(requests):
            item = {}
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    item[name] = tensor.as_numpy()
            try:
                feeds.append(self.runtime.validate(item).feeds)
            except InvalidInputError as exc:
                errors[i] = str(exc)
                feeds.append(None)
        good = [f for f in feeds if f is not None]
        try:
            results = iter(run_merged(self.runtime, good)) if good else iter(())
        except Exception as exc:  # noqa: BLE001 - reported to every request of the batch
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                    for _ in requests]
        responses = []
        for i, f in enumerate(feeds):
            if f is None:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(errors[i])))
                continue
            out = next(results)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(n, np.ascontiguousarray(out[n])) for n in self.output_names
            ]))
        return responses

    def finalize(self):
        self.runtime.close()
'''


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def write_repository(
    model: str | os.PathLike,
    repo: str | os.PathLike,
    *,
    name: str | None = None,
    max_batch_size: int = 8,
    max_delay_ms: float = 5.0,
    max_queue: int = 256,
    instances: int = 1,
    device: str = "cpu",
    python_backend: bool = False,
    force: bool = False,
) -> list[Path]:
    """Write a Triton model repository for an exported model or a TensorRT engine.

    Args:
        model: ``.onnx`` (backend onnxruntime) or TensorRT engine with its sidecar
            (``tensorrt_plan``).
        repo: repository folder (created; other models in it are left alone).
        name: model name (default: the file's stem).
        max_batch_size, max_delay_ms, max_queue, instances, device: see
            :func:`model_config_dict`.
        python_backend: also write ``<name>_python`` (python backend over
            ``sparse_attn.Runtime``; ONNX models only).
        force: replace existing ``REPO/<name>`` folders (never the input file).

    Returns:
        the written ``config.pbtxt`` paths.

    Raises:
        InvalidInputError: bad arguments, an existing model folder without ``force``, a model
            file inside the folder that would be replaced, or a python variant of an engine.
    """
    from sparse_attn.serving.app import _check_name, default_model_name

    desc = ModelDescription(model)
    name = _check_name(name or default_model_name(desc.path))
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise InvalidInputError(f"{repo} exists and is not a folder; choose another -o")
    kind = desc.kind
    if python_backend and kind != "onnx":
        raise InvalidInputError(
            "the python-backend variant wraps an .onnx model; pass the .onnx file, not an engine"
        )
    targets = [name] + ([f"{name}_python"] if python_backend else [])
    src = desc.path.resolve()
    for t in targets:
        d = repo / t
        if d.exists():
            if src.is_relative_to(d.resolve()):
                raise InvalidInputError(f"{desc.path} lies inside {d}, which would be replaced")
            if not force:
                raise InvalidInputError(
                    f"{d} already exists; remove it, choose another --name, or pass --force"
                )
    common = dict(
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        max_queue=max_queue,
        instances=instances,
        device=device,
    )
    configs = {name: model_config_dict(desc, name, kind=kind, **common)}
    if python_backend:
        configs[f"{name}_python"] = model_config_dict(
            desc, f"{name}_python", kind="python", **common
        )
    written = []
    for t, cfg in configs.items():
        d = repo / t
        if d.exists():
            shutil.rmtree(d)
        comments = [
            f"Triton model configuration written by sparse-attn triton-repo from {desc.path.name}.",
        ]
        if cfg.get("backend") == "tensorrt":
            req = plugin_requirements(desc.sidecar)
            comments += [
                "Needs at load time: the TensorRT plugin "
                f"{req['sparse_attn.plugin']} version {req['sparse_attn.plugin_version']} "
                f"({req['sparse_attn.plugin_implementation']} implementation"
                + (
                    ": kernels embedded in the engine)"
                    if req["sparse_attn.plugin_implementation"] == "aot"
                    else ": the plugin must be registered in the serving process)"
                ),
                f"TensorRT {req.get('sparse_attn.tensorrt_version', '(unknown version)')} and a "
                f"GPU of compute capability {req.get('sparse_attn.compute_capability', '?')} "
                "(the engine is not portable to other versions or GPUs).",
            ]
            _copy(desc.path, d / "1" / "model.plan")
        elif cfg.get("backend") == "python":
            comments.append("Needs sparse-attn, onnxruntime and numpy in the python backend's env.")
            _copy(desc.path, d / "1" / "model.onnx")
            (d / "1" / "model.py").write_text(_PYTHON_MODEL)
        else:
            _copy(desc.path, d / "1" / "model.onnx")
        text = to_pbtxt(cfg, comments)
        parse_check = _try_parse(text)
        if parse_check is not None:
            raise InvalidInputError(
                f"internal error: {t}/config.pbtxt does not parse: {parse_check}"
            )
        (d / "config.pbtxt").write_text(text)
        written.append(d / "config.pbtxt")
    return written


def _try_parse(text: str) -> str | None:
    """Parse with protobuf when tritonclient is installed; the error text or None."""
    try:
        parse_pbtxt(text)
    except InvalidInputError as exc:
        return str(exc)
    except Exception:  # noqa: BLE001 - tritonclient absent: writing does not need it
        return None
    return None
