"""The KServe / Triton "v2" inference protocol over HTTP: request decoding, response encoding.

Requests: ``POST /v2/models/{name}/infer`` with a JSON body
``{"id"?, "inputs": [{"name", "shape", "datatype", "data"?, "parameters"?}], "outputs"?,
"parameters"?}``. Tensor data is either JSON (``data``: flat or nested list, row-major) or
binary (the *binary tensor data extension*: the header ``Inference-Header-Content-Length: N``
says the JSON is the first N bytes of the body; each binary input has
``parameters.binary_data_size`` and its bytes follow the JSON, in input order, little-endian,
row-major). Responses use binary data for an output when the request asks for it (output
``parameters.binary_data`` or request ``parameters.binary_data_output``), JSON otherwise.

Errors are JSON ``{"error": "<message>"}``. Everything here is pure (no web framework).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sparse_attn.errors import InvalidInputError

#: v2 datatype names <-> numpy dtypes (BYTES and BF16 are not served: no model takes them).
DATATYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NAMES = {v: k for k, v in DATATYPES.items()}

#: Header of the binary tensor data extension.
HEADER_LENGTH = "inference-header-content-length"


def datatype_of(dtype) -> str:
    """v2 datatype name of a numpy dtype (``float32`` -> ``FP32``).

    Raises:
        InvalidInputError: for a dtype the protocol has no name for here.
    """
    dt = np.dtype(dtype)
    if dt not in _NAMES:
        raise InvalidInputError(f"dtype {dt.name} has no v2 protocol datatype here")
    return _NAMES[dt]


def protocol_shape(shape: Sequence) -> list[int]:
    """A spec shape with symbolic / unknown dims as ``-1`` (v2 metadata convention)."""
    return [
        int(d) if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else -1 for d in shape
    ]


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """Undo ``Content-Encoding: gzip | deflate`` (tritonclient's request compression).

    Raises:
        InvalidInputError: unknown encoding or corrupt data.
    """
    enc = (content_encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    try:
        if enc == "gzip":
            return gzip.decompress(body)
        if enc == "deflate":
            return zlib.decompress(body)
    except (OSError, zlib.error, EOFError) as exc:
        raise InvalidInputError(f"request body is not valid {enc} data: {exc}") from exc
    raise InvalidInputError(
        f"unsupported Content-Encoding {content_encoding!r}; send gzip, deflate or plain data"
    )


def parse_infer_request(body: bytes, header_length: str | None) -> tuple[dict, dict]:
    """Decode an infer request into ``(header_json, {input name: numpy array})``.

    Args:
        body: the (decompressed) request body.
        header_length: the ``Inference-Header-Content-Length`` header, or ``None`` when the
            whole body is JSON.

    Raises:
        InvalidInputError: malformed JSON, missing fields, an unknown datatype, data whose
            size does not match its shape, or binary sizes that do not add up to the body.
    """
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 < n <= len(body):
            raise InvalidInputError(
                f"Inference-Header-Content-Length {header_length!r} is not between 1 and the "
                f"body size {len(body)}"
            )
        head, rest = body[:n], memoryview(body)[n:]
    else:
        head, rest = body, memoryview(b"")
    try:
        req = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"request is not valid JSON: {exc}") from exc
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise InvalidInputError(
            'request must be a JSON object with an "inputs" list of '
            '{"name", "shape", "datatype", "data"} tensors'
        )
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(req["inputs"]):
        if not isinstance(t, dict):
            raise InvalidInputError(f"inputs[{i}] must be an object, got {type(t).__name__}")
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f'inputs[{i}] has no "name"')
        if name in feeds:
            raise InvalidInputError(f"input {name!r} is given twice")
        dtype = _dtype(name, t.get("datatype"))
        shape = _shape(name, t.get("shape"))
        params = t.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(rest):
                raise InvalidInputError(
                    f"input {name!r}: binary_data_size {size!r} does not fit the "
                    f"{len(rest) - offset} bytes of binary data left in the body"
                )
            if size != count * dtype.itemsize:
                raise InvalidInputError(
                    f"input {name!r}: binary_data_size {size} does not match shape {shape} of "
                    f"{t.get('datatype')} ({count * dtype.itemsize} bytes)"
                )
            arr = np.frombuffer(rest[offset : offset + size], dtype=dtype.newbyteorder("<"))
            offset += size
            feeds[name] = arr.astype(dtype, copy=False).reshape(shape)
            continue
        if "data" not in t:
            raise InvalidInputError(f'input {name!r} has neither "data" nor binary data')
        try:
            arr = np.asarray(t["data"], dtype=dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInputError(
                f"input {name!r}: data is not a list of {t.get('datatype')} values ({exc})"
            ) from exc
        if arr.size != count:
            raise InvalidInputError(
                f"input {name!r}: data holds {arr.size} values but shape {shape} needs {count}"
            )
        feeds[name] = arr.reshape(shape)
    if offset != len(rest):
        raise InvalidInputError(
            f"the body holds {len(rest) - offset} bytes of binary data that no input claims"
        )
    return req, feeds


def _dtype(name: str, datatype: Any) -> np.dtype:
    if datatype not in DATATYPES:
        raise InvalidInputError(
            f"input {name!r}: datatype {datatype!r} is not supported; use one of "
            f"{', '.join(DATATYPES)}"
        )
    return DATATYPES[datatype]


def _shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInputError(
            f'input {name!r}: "shape" must be a list of non-negative integers, got {shape!r}'
        )
    return shape


def requested_outputs(req: Mapping, available: Sequence[str]) -> list[tuple[str, bool]]:
    """``[(output name, binary?)]`` asked for by a request (all outputs when none is named).

    Raises:
        InvalidInputError: an output name the model does not have.
    """
    params = req.get("parameters") if isinstance(req.get("parameters"), dict) else {}
    default_binary = bool(params.get("binary_data_output", False))
    outs = req.get("outputs")
    if not outs:
        return [(n, default_binary) for n in available]
    if not isinstance(outs, list):
        raise InvalidInputError('"outputs" must be a list of {"name"} objects')
    picked = []
    for i, o in enumerate(outs):
        name = o.get("name") if isinstance(o, dict) else None
        if name not in available:
            raise InvalidInputError(
                f"outputs[{i}]: unknown output {name!r}; the model's outputs are {list(available)}"
            )
        p = o.get("parameters") if isinstance(o.get("parameters"), dict) else {}
        picked.append((name, bool(p.get("binary_data", default_binary))))
    return picked


def encode_infer_response(
    model_name: str,
    outputs: Mapping[str, np.ndarray],
    wanted: Sequence[tuple[str, bool]],
    request_id: str | None = None,
    model_version: str = "1",
) -> tuple[bytes, dict[str, str]]:
    """Encode outputs as a v2 response body; returns ``(body, extra headers)``."""
    meta: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        meta["id"] = request_id
    tensors, blobs = [], []
    for name, binary in wanted:
        arr = np.asarray(outputs[name])
        t: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(arr.dtype),
            "shape": [int(d) for d in arr.shape],
        }
        if binary:
            raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            t["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            t["data"] = arr.reshape(-1).tolist()
        tensors.append(t)
    meta["outputs"] = tensors
    head = json.dumps(meta, separators=(",", ":")).encode()
    if not blobs:
        return head, {}
    return b"".join([head, *blobs]), {"Inference-Header-Content-Length": str(len(head))}
