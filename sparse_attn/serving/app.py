"""The HTTP application: v2 inference protocol, embeddings, metrics, over one ``Runtime``.

:func:`create_app` returns a FastAPI (ASGI) application. ``sparse-attn serve`` runs it under
uvicorn; the Ray Serve deployment (:mod:`sparse_attn.serving.ray_app`) runs the same
application in every replica.

Routes (``{name}`` is the served model's name):

==========================================  ===============================================
``GET  /v2/health/live``                    200 while the process runs
``GET  /v2/health/ready``                   200 when the model is loaded and not draining
``GET  /v2``                                server metadata
``GET  /v2/models/{name}``                  model metadata (inputs, outputs, -1 = dynamic)
``GET  /v2/models/{name}/ready``            200 when ready
``GET  /v2/models/{name}/config``           the model's Triton ``ModelConfig`` as JSON
``POST /v2/models/{name}/infer``            inference (JSON or binary tensor data)
``POST /v1/embeddings``                     text models: ``{"input": str | [str]}`` ->
                                            OpenAI-style embeddings list
``POST /v2/models/{name}/generate``         generation exports: ``{"text_input" | "input_ids",
                                            "parameters"}`` -> ``text_output``, ``output_ids``
``POST /v2/models/{name}/generate_stream``  the same as server-sent events, one per token
``GET  /metrics``                           Prometheus text format
==========================================  ===============================================

``/versions/{v}`` may follow ``/v2/models/{name}`` (only version ``1`` exists).

Status codes: 400 a request the runtime refuses (its message in ``{"error": ...}``), 404 an
unknown model name, 413 a body above ``max_request_bytes`` or more than ``max_texts`` texts,
503 a full queue or a draining server (with ``Retry-After``), 500 a backend failure.
"""

from __future__ import annotations

import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from sparse_attn.errors import InvalidInputError, SparseAttnError
from sparse_attn.serving.batching import (
    BatchPolicy,
    DynamicBatcher,
    QueueFullError,
    ShuttingDownError,
)

#: Default largest request body (bytes): 64 MiB holds a [32, 8, 4096, 64] fp32 tensor.
DEFAULT_MAX_REQUEST_BYTES = 64 << 20
#: Default largest number of texts in one embeddings request.
DEFAULT_MAX_TEXTS = 256


class RequestTooLargeError(InvalidInputError):
    """The request body or its number of texts exceeds the server's limit (HTTP 413)."""


@dataclass
class ServingState:
    """What the routes share: the runtime, the batcher, the metrics and the limits."""

    runtime: Any
    name: str
    batcher: DynamicBatcher
    metrics: Any
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_texts: int = DEFAULT_MAX_TEXTS
    started: bool = False
    draining: bool = False
    stats: dict = field(default_factory=lambda: {"answered": 0, "refused": 0, "failed": 0})

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and not self.batcher.closing


def default_model_name(path: str | os.PathLike) -> str:
    """The served name of a model file: its stem (``artifacts/minilm.onnx`` -> ``minilm``)."""
    return Path(path).stem or "model"


def _check_name(name: str) -> str:
    import re

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name):
        raise InvalidInputError(
            f"model name {name!r} is not valid; use letters, digits, '.', '_' and '-' "
            "(at most 128 characters)"
        )
    return name


def load_runtime(model, backend: str = "auto", threads: int | None = None):
    """A :class:`sparse_attn.Runtime` for ``model`` (a path), or ``model`` itself if loaded."""
    if hasattr(model, "run") and hasattr(model, "validate"):
        return model
    from sparse_attn.runtime import Runtime

    return Runtime(model, backend=backend, intra_op_threads=threads, allow_spinning=False)


def create_app(
    model,
    *,
    name: str | None = None,
    policy: BatchPolicy | None = None,
    backend: str = "auto",
    threads: int | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_texts: int = DEFAULT_MAX_TEXTS,
):
    """Build the ASGI application serving one model.

    Args:
        model: a model path (``.onnx`` or engine) or a loaded :class:`sparse_attn.Runtime`.
        name: served model name (default: the file's stem).
        policy: dynamic batching (:class:`BatchPolicy`; default 8 rows, 5 ms, 256 queued).
        backend: Runtime backend when ``model`` is a path.
        threads: ONNX Runtime intra-op threads (default ``OMP_NUM_THREADS``).
        max_request_bytes: largest accepted body in bytes (413 above).
        max_texts: most texts in one embeddings request (413 above).

    Returns:
        a ``fastapi.FastAPI`` application; ``app.state.serving`` is its :class:`ServingState`.

    Raises:
        InvalidInputError: bad name, limits or model file (before anything is served).
    """
    from sparse_attn.serving import protocol
    from sparse_attn.serving.metrics import CONTENT_TYPE, ServerMetrics

    for key, val in (("max_request_bytes", max_request_bytes), ("max_texts", max_texts)):
        if not isinstance(val, int) or val < 1:
            raise InvalidInputError(f"{key} must be an integer >= 1, got {val!r}")
    rt = load_runtime(model, backend=backend, threads=threads)
    name = _check_name(name or default_model_name(rt.path))
    metrics = ServerMetrics()
    batcher = DynamicBatcher(rt, policy or BatchPolicy(), on_batch=metrics.observe_batch)
    metrics.queue.set_function(lambda: batcher.queue_depth)
    state = ServingState(
        runtime=rt,
        name=name,
        batcher=batcher,
        metrics=metrics,
        max_request_bytes=max_request_bytes,
        max_texts=max_texts,
    )

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        state.started = True
        try:
            yield
        finally:
            state.draining = True
            await batcher.close()

    app = FastAPI(
        title="sparse-attn",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.serving = state

    def error(code: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split())}, code, headers=headers)

    def unknown_model(got: str) -> JSONResponse:
        return error(404, f"unknown model {got!r}; this server serves {name!r}")

    def bad_version(version: str | None) -> JSONResponse | None:
        if version not in (None, "", "1"):
            return error(404, f"model {name!r} has no version {version!r}; the only one is '1'")
        return None

    def map_error(exc: Exception) -> JSONResponse:
        if isinstance(exc, RequestTooLargeError):
            return error(413, str(exc))
        if isinstance(exc, InvalidInputError):
            return error(400, str(exc))
        if isinstance(exc, (QueueFullError, ShuttingDownError)):
            return error(503, str(exc), {"Retry-After": "1"})
        if isinstance(exc, SparseAttnError):
            return error(500, str(exc))
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    async def read_body(request: Request) -> bytes:
        limit = state.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLargeError(
                f"request body of {int(declared)} bytes exceeds the server's limit of {limit} "
                "bytes; send fewer or shorter rows per request"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestTooLargeError(
                    f"request body exceeds the server's limit of {limit} bytes; send fewer or "
                    "shorter rows per request"
                )
            chunks.append(chunk)
        body = protocol.decode_body(b"".join(chunks), request.headers.get("content-encoding"))
        if len(body) > limit:
            raise RequestTooLargeError(
                f"decompressed request body of {len(body)} bytes exceeds the server's limit of "
                f"{limit} bytes"
            )
        return body

    async def answer(endpoint: str, t0: float, work) -> Response:
        try:
            resp = await work()
        except Exception as exc:  # noqa: BLE001 - mapped to a status code, never re-raised
            resp = map_error(exc)
        code = resp.status_code
        key = "answered" if code < 400 else ("refused" if code < 500 else "failed")
        state.stats[key] += 1
        metrics.observe_request(endpoint, code, time.perf_counter() - t0)
        return resp

    # ------------------------------------------------------------------ health / metadata
    @app.get("/v2/health/live")
    async def live():
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready():
        return Response(status_code=200 if state.ready else 503)

    @app.get("/v2")
    async def server_metadata():
        return {
            "name": "sparse-attn",
            "version": _version(),
            "extensions": ["binary_tensor_data", "model_configuration"],
        }

    def model_metadata() -> dict:
        return {
            "name": name,
            "versions": ["1"],
            "platform": "tensorrt_plan" if rt.backend == "tensorrt" else "onnxruntime_onnx",
            "inputs": [
                {
                    "name": s.name,
                    "datatype": protocol.datatype_of(s.dtype),
                    "shape": protocol.protocol_shape(s.shape),
                }
                for s in rt.inputs
            ],
            "outputs": [
                {
                    "name": s.name,
                    "datatype": protocol.datatype_of(s.dtype),
                    "shape": protocol.protocol_shape(s.shape),
                }
                for s in rt.outputs
            ],
            "parameters": {
                k.split(".", 1)[1]: rt.metadata[k]
                for k in (
                    "sparse_attn.model",
                    "sparse_attn.pattern",
                    "sparse_attn.max_seq_len",
                    "sparse_attn.block_size",
                    "sparse_attn.dtype",
                )
                if k in rt.metadata
            },
        }

    @app.get("/v2/models/{model_name}")
    @app.get("/v2/models/{model_name}/versions/{version}")
    async def get_model(model_name: str, version: str | None = None):
        if model_name != name:
            return unknown_model(model_name)
        return bad_version(version) or model_metadata()

    @app.get("/v2/models/{model_name}/ready")
    @app.get("/v2/models/{model_name}/versions/{version}/ready")
    async def model_ready(model_name: str, version: str | None = None):
        if model_name != name:
            return unknown_model(model_name)
        return bad_version(version) or Response(status_code=200 if state.ready else 503)

    @app.get("/v2/models/{model_name}/config")
    @app.get("/v2/models/{model_name}/versions/{version}/config")
    async def model_config(model_name: str, version: str | None = None):
        from sparse_attn.serving.triton_repo import config_json, model_config_dict

        if model_name != name:
            return unknown_model(model_name)
        pol = batcher.policy
        cfg = model_config_dict(
            rt,
            name,
            kind="tensorrt" if rt.backend == "tensorrt" else "onnx",
            max_batch_size=pol.max_batch_size,
            max_delay_ms=pol.max_delay_ms,
            instances=pol.workers,
        )
        return bad_version(version) or config_json(cfg)

    # ------------------------------------------------------------------ inference
    @app.post("/v2/models/{model_name}/infer")
    @app.post("/v2/models/{model_name}/versions/{version}/infer")
    async def infer(model_name: str, request: Request, version: str | None = None):
        t0 = time.perf_counter()

        async def work():
            if model_name != name:
                return unknown_model(model_name)
            if (resp := bad_version(version)) is not None:
                return resp
            body = await read_body(request)
            req, feeds = protocol.parse_infer_request(
                body, request.headers.get(protocol.HEADER_LENGTH)
            )
            wanted = protocol.requested_outputs(req, rt.output_names)
            outputs = await batcher.submit(feeds)
            rid = req.get("id")
            payload, headers = protocol.encode_infer_response(
                name, outputs, wanted, str(rid) if rid is not None else None
            )
            media = "application/octet-stream" if headers else "application/json"
            return Response(payload, 200, headers=headers, media_type=media)

        return await answer("infer", t0, work)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        t0 = time.perf_counter()

        async def work():
            import json

            import numpy as np

            from sparse_attn.runtime.text import sentence_embeddings

            body = await read_body(request)
            try:
                req = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidInputError(f"request is not valid JSON: {exc}") from exc
            if not isinstance(req, dict) or "input" not in req:
                raise InvalidInputError(
                    'request must be a JSON object {"input": "text" | ["text", ...]}'
                )
            if req.get("model") not in (None, name):
                return unknown_model(str(req.get("model")))
            texts = req["input"]
            texts = [texts] if isinstance(texts, str) else texts
            if not isinstance(texts, list):
                raise InvalidInputError('"input" must be a string or a list of strings')
            if len(texts) > state.max_texts:
                raise RequestTooLargeError(
                    f"{len(texts)} texts exceed the server's limit of {state.max_texts} per "
                    "request; split them over several requests"
                )
            feeds, lengths, truncated = rt.encoder.encode_detailed(texts, rt.inputs)
            outputs = await batcher.submit(feeds)
            picked = sentence_embeddings(outputs, feeds.get("attention_mask"))
            if picked is None:
                raise InvalidInputError(
                    f"the model's outputs {list(outputs)} hold no embeddings (no float [B, E] "
                    "or [B, S, E] output)"
                )
            emb = np.asarray(picked[1], dtype=np.float32)
            out = {
                "object": "list",
                "model": name,
                "data": [
                    {"object": "embedding", "index": i, "embedding": emb[i].tolist()}
                    for i in range(len(texts))
                ],
                "usage": {"prompt_tokens": int(sum(lengths)), "total_tokens": int(sum(lengths))},
            }
            if any(truncated):
                out["truncated"] = [i for i, cut in enumerate(truncated) if cut]
            return JSONResponse(out)

        return await answer("embeddings", t0, work)

    # ------------------------------------------------------------------ generation
    import asyncio
    import threading

    gen_state = {"pending": 0}
    gen_options = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop_token_ids")

    def generation_request(req: Any) -> tuple[Any, dict, bool]:
        """``(prompt, Runtime.generate keyword arguments, text?)`` of a generate request."""
        if not isinstance(req, dict):
            raise InvalidInputError('request must be a JSON object {"text_input": "..."}')
        if not callable(getattr(rt, "generate", None)):
            raise InvalidInputError(f"model {name!r} cannot generate (no Runtime.generate)")
        params = req.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInputError('"parameters" must be an object')
        params = dict(params)
        if "max_tokens" in params:  # the name Triton's generate extension uses
            params.setdefault("max_new_tokens", params.pop("max_tokens"))
        bad = sorted(set(params) - set(gen_options))
        if bad:
            raise InvalidInputError(
                f"unknown generation parameter(s) {bad}; known: {list(gen_options)}"
            )
        if "text_input" in req:
            if not isinstance(req["text_input"], str):
                raise InvalidInputError('"text_input" must be a string')
            return req["text_input"], params, True
        ids = req.get("input_ids")
        if not isinstance(ids, list) or not ids:
            raise InvalidInputError(
                'give "text_input" (a string) or "input_ids" (a list of token-id lists)'
            )
        return (ids if isinstance(ids[0], list) else [ids]), params, False

    def decode(tokens) -> str | None:
        gen = getattr(rt, "_generator", None)
        if gen is None:
            return None
        stops = set(getattr(gen, "eos_token_ids", []) or [])
        kept = []
        for t in tokens:
            if int(t) in stops:
                break
            kept.append(int(t))
        return gen.decode_text(kept)

    def claim_generation_slot() -> None:
        if batcher.closing or state.draining:
            raise ShuttingDownError("the server is shutting down; send the request elsewhere")
        if gen_state["pending"] >= batcher.policy.max_queue:
            raise QueueFullError(
                f"{gen_state['pending']} generation requests are pending (the limit is "
                f"{batcher.policy.max_queue}); retry later or raise --max-queue"
            )
        gen_state["pending"] += 1

    async def read_json(request: Request) -> Any:
        import json

        body = await read_body(request)
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"request is not valid JSON: {exc}") from exc

    @app.post("/v2/models/{model_name}/generate")
    async def generate(model_name: str, request: Request):
        t0 = time.perf_counter()

        async def work():
            if model_name != name:
                return unknown_model(model_name)
            prompt, kwargs, text = generation_request(await read_json(request))
            claim_generation_slot()
            try:
                loop = asyncio.get_running_loop()
                tokens = await loop.run_in_executor(None, lambda: rt.generate(prompt, **kwargs))
            finally:
                gen_state["pending"] -= 1
            out: dict[str, Any] = {"model_name": name, "output_ids": tokens.tolist()}
            if text:
                out["text_output"] = decode(tokens[0])
            return JSONResponse(out)

        return await answer("generate", t0, work)

    @app.post("/v2/models/{model_name}/generate_stream")
    async def generate_stream(model_name: str, request: Request):
        """Server-sent events: one ``data: {...}`` per new token (all rows), then the end."""
        import json

        from fastapi.responses import StreamingResponse

        t0 = time.perf_counter()

        async def work():
            if model_name != name:
                return unknown_model(model_name)
            prompt, kwargs, text = generation_request(await read_json(request))
            claim_generation_slot()
            loop = asyncio.get_running_loop()
            try:
                # validation happens here, before the first token (the iterator is eager)
                it = await loop.run_in_executor(
                    None, lambda: rt.generate(prompt, stream=True, **kwargs)
                )
            except BaseException:
                gen_state["pending"] -= 1
                raise
            queue: asyncio.Queue = asyncio.Queue()
            done = object()

            def pump() -> None:  # one thread iterates the generator from start to end
                try:
                    for step in it:
                        loop.call_soon_threadsafe(queue.put_nowait, step)
                except Exception as exc:  # noqa: BLE001 - sent to the client as an event
                    loop.call_soon_threadsafe(queue.put_nowait, exc)
                finally:
                    loop.call_soon_threadsafe(queue.put_nowait, done)

            threading.Thread(target=pump, name="sparse-attn-generate", daemon=True).start()

            async def events():
                produced: list[int] = []
                shown = ""
                try:
                    while True:
                        step = await queue.get()
                        if step is done:
                            break
                        if isinstance(step, Exception):
                            msg = " ".join(str(step).split())
                            yield f"data: {json.dumps({'error': msg})}\n\n"
                            break
                        event: dict[str, Any] = {"model_name": name, "output_ids": step.tolist()}
                        if text:
                            produced.append(int(step[0]))
                            full = decode(produced) or ""
                            event["text_output"] = full[len(shown) :]
                            shown = full
                        yield f"data: {json.dumps(event)}\n\n"
                finally:
                    gen_state["pending"] -= 1

            return StreamingResponse(events(), media_type="text/event-stream")

        return await answer("generate_stream", t0, work)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def _version() -> str:
    from sparse_attn import __version__

    return __version__
