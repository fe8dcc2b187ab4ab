"""Dynamic batching for the server: merge concurrent requests, run them once, split the result.

A request is one feed dict accepted by :meth:`sparse_attn.Runtime.validate` (dimension 0 is
the batch; every other symbolic dimension is a sequence length ``S``). The batcher keeps
accepted requests in a bounded FIFO queue. A worker takes the oldest request, waits until the
queue holds ``max_batch_size`` rows or the oldest request has waited ``max_delay_ms``, takes
every queued request that can join it (in arrival order, up to ``max_batch_size`` rows),
and runs them as one call:

* inputs are concatenated along dimension 0; sequence dimensions are padded at the end to the
  longest request of the batch. Padding positions get 0 (``input_ids`` 0, floats 0.0) and
  *0 in the model's mask input* (``attention_mask`` / ``key_padding_mask``), so a padded key
  is masked out of every query: the op guarantees that masked keys never influence an output,
  and the layout is prefix-stable (visibility of ``i, j < S`` does not depend on ``S``);
* each output is cut back along dimension 0 and cropped to the request's own sequence
  lengths (the output's symbolic dimensions, from the model's ``sparse_attn.outputs``
  metadata).

So every response equals the result of running that request alone, up to floating-point
summation order (within the op's tolerance, :data:`sparse_attn.runtime.compare.TOLERANCES`).
Models without a mask input (or without output shape metadata, or with a static sequence
length) are batched only with requests of the same shape.

Back-pressure: :meth:`DynamicBatcher.submit` raises :class:`QueueFullError` when
``max_queue`` requests are already waiting, and :class:`ShuttingDownError` after
:meth:`DynamicBatcher.close` began; both map to HTTP 503. Closing lets every accepted request
finish before the workers stop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparse_attn.errors import InvalidInputError, SparseAttnError

#: Inputs that mark real tokens (1) and padding (0); a model needs one to pad requests.
MASK_INPUTS = ("attention_mask", "key_padding_mask")


class QueueFullError(SparseAttnError):
    """The request queue is full (HTTP 503): retry later or raise ``--max-queue``."""


class ShuttingDownError(SparseAttnError):
    """The server is shutting down and accepts no new request (HTTP 503)."""


@dataclass(frozen=True)
class BatchPolicy:
    """How requests are merged.

    Attributes:
        max_batch_size: most rows (sum of the requests' dimension 0) run in one call; 1 turns
            batching off. A request with more rows runs alone.
        max_delay_ms: longest time (milliseconds) the oldest queued request waits for others
            to join its batch.
        max_queue: most requests waiting (not yet running); more are refused (HTTP 503).
        workers: batches run at once (each in its own thread).
        max_padding: most padding a merged call may carry, as a fraction of its real tokens
            (``rows x longest S <= (1 + max_padding) x sum of rows x S``). Requests of very
            different lengths then go to different calls instead of paying for the longest.
    """

    max_batch_size: int = 8
    max_delay_ms: float = 5.0
    max_queue: int = 256
    workers: int = 1
    max_padding: float = 0.1

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "workers"):
            val = getattr(self, name)
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise InvalidInputError(f"{name} must be an integer >= 1, got {val!r}")
        if not (isinstance(self.max_delay_ms, (int, float)) and 0 <= self.max_delay_ms <= 60_000):
            raise InvalidInputError(
                f"max_delay_ms must be between 0 and 60000 milliseconds, got {self.max_delay_ms!r}"
            )
        if not (isinstance(self.max_padding, (int, float)) and self.max_padding >= 0):
            raise InvalidInputError(f"max_padding must be >= 0, got {self.max_padding!r}")


@dataclass
class _Item:
    feeds: dict
    rows: int
    seq: dict  # input name -> {axis: length} of the request's sequence axes
    key: tuple  # requests with equal keys may share a batch
    future: asyncio.Future
    enqueued: float

    @property
    def length(self) -> int:
        """The request's longest sequence axis (1 when it has none)."""
        return max((n for axes in self.seq.values() for n in axes.values()), default=1)


class BatchPlan:
    """What can be padded and cropped for one model (derived from its tensor specs).

    Args:
        inputs / outputs: the model's :class:`~sparse_attn.runtime.validation.TensorSpec` lists.
        static_seq_len: the model takes exactly ``max_seq_len`` tokens (nothing to pad).
    """

    def __init__(self, inputs, outputs, static_seq_len: bool = False) -> None:
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.seq_axes = {
            s.name: [ax for ax, d in enumerate(s.shape) if ax > 0 and not _fixed(d)]
            for s in self.inputs
        }
        self.mask_input = next((n for n in MASK_INPUTS if self.seq_axes.get(n)), None)
        # output name -> [(axis, dim name or None)] of the sequence axes to crop
        self.out_seq = {
            s.name: [
                (ax, d if isinstance(d, str) else None)
                for ax, d in enumerate(s.shape)
                if ax > 0 and not _fixed(d)
            ]
            for s in self.outputs
        }
        self.can_pad = (
            self.mask_input is not None
            and not static_seq_len
            and bool(self.outputs)
            and all(s.shape and not _fixed(s.shape[0]) for s in self.outputs)
        )

    def key_of(self, feeds: Mapping[str, np.ndarray]) -> tuple:
        """Requests with the same key can be merged (dtypes; the exact shape if not paddable)."""
        parts = []
        for name, arr in feeds.items():
            shape = arr.shape[1:]
            if self.can_pad:
                shape = tuple(
                    -1 if ax + 1 in self.seq_axes.get(name, ()) else d for ax, d in enumerate(shape)
                )
            parts.append((name, arr.dtype.str, shape))
        return tuple(parts)

    def seq_of(self, feeds: Mapping[str, np.ndarray]) -> dict:
        return {n: {ax: feeds[n].shape[ax] for ax in self.seq_axes.get(n, ())} for n in feeds}

    def merge(self, items: list[_Item]) -> dict[str, np.ndarray]:
        """Concatenate the items' feeds along dimension 0, padding sequence axes (see module)."""
        if len(items) == 1:
            return items[0].feeds
        merged = {}
        for name in items[0].feeds:
            arrs = [it.feeds[name] for it in items]
            axes = self.seq_axes.get(name, ())
            if self.can_pad and axes:
                target = {ax: max(a.shape[ax] for a in arrs) for ax in axes}
                padded = []
                for a in arrs:
                    widths = [(0, 0)] * a.ndim
                    for ax, n in target.items():
                        widths[ax] = (0, n - a.shape[ax])
                    padded.append(np.pad(a, widths) if any(w[1] for w in widths) else a)
                arrs = padded
            merged[name] = np.concatenate(arrs, axis=0)
        return merged

    def split(self, outputs: Mapping[str, np.ndarray], items: list[_Item]) -> list[dict]:
        """Cut merged outputs back into one dict per item, cropped to its sequence lengths."""
        if len(items) == 1:
            return [dict(outputs)]
        results: list[dict] = [{} for _ in items]
        for name, arr in outputs.items():
            start = 0
            for i, it in enumerate(items):
                part = arr[start : start + it.rows]
                start += it.rows
                crop = self._crop(name, part, it) if self.can_pad else None
                results[i][name] = np.ascontiguousarray(part[crop] if crop else part)
        return results

    def _crop(self, name: str, part: np.ndarray, item: _Item):
        spec = self.out_seq.get(name)
        if not spec:
            return None
        lengths = {}
        for n, axes in item.seq.items():
            for ax, length in axes.items():
                dim = next((s.shape[ax] for s in self.inputs if s.name == n), None)
                if isinstance(dim, str):
                    lengths.setdefault(dim, length)
                lengths.setdefault(None, length)
        index = [slice(None)] * part.ndim
        for ax, dim in spec:
            length = lengths.get(dim, lengths.get(None))
            if length is not None and ax < part.ndim:
                index[ax] = slice(0, length)
        return tuple(index)


def _fixed(d) -> bool:
    return isinstance(d, int) and not isinstance(d, bool) and d >= 0


class DynamicBatcher:
    """Queue + workers that run a :class:`~sparse_attn.Runtime` on merged requests.

    Args:
        runtime: the loaded model (``validate`` and ``run`` are used; ``run`` is called from
            worker threads).
        policy: :class:`BatchPolicy`.
        on_batch: called after each batch with ``(n_requests, n_rows, seconds)`` (metrics).

    Use from one asyncio event loop: ``await start()``, ``await submit(feeds)`` from request
    handlers, ``await close()`` at shutdown.
    """

    def __init__(
        self,
        runtime,
        policy: BatchPolicy | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.policy = policy or BatchPolicy()
        self.plan = BatchPlan(
            runtime.inputs, runtime.outputs, bool(getattr(runtime.info, "static_seq_len", False))
        )
        self.on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._closing = False
        self._running = 0
        self.accepted = 0
        self.completed = 0

    # ------------------------------------------------------------------ state
    @property
    def queue_depth(self) -> int:
        """Requests accepted and not yet running."""
        return len(self._queue)

    @property
    def closing(self) -> bool:
        return self._closing

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the worker tasks on the running event loop."""
        if self._workers:
            return
        self._wakeup = asyncio.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.policy.workers, thread_name_prefix="sparse-attn-batch"
        )
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.policy.workers)]

    async def close(self) -> None:
        """Refuse new requests, finish every accepted one, then stop the workers."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ------------------------------------------------------------------ requests
    def prepare(self, feeds: Mapping[str, Any]):
        """Validate a request with the runtime's own checks (raises ``InvalidInputError``)."""
        return self.runtime.validate(feeds)

    async def submit(self, feeds: Mapping[str, Any], validated=None) -> dict[str, np.ndarray]:
        """Queue one request and wait for its outputs.

        Args:
            feeds: input name -> array, as for :meth:`sparse_attn.Runtime.run`.
            validated: the result of :meth:`prepare` when the caller already validated.

        Returns:
            output name -> numpy array of the request's own shape.

        Raises:
            InvalidInputError: the runtime refused the request (nothing was queued).
            QueueFullError: ``max_queue`` requests are waiting.
            ShuttingDownError: :meth:`close` was called.
            SparseAttnError: the backend failed on the batch.
        """
        if self._closing:
            raise ShuttingDownError("the server is shutting down; send the request elsewhere")
        if not self._workers:
            raise ShuttingDownError("the batcher is not running; start the server first")
        req = validated if validated is not None else self.prepare(feeds)
        if len(self._queue) >= self.policy.max_queue:
            raise QueueFullError(
                f"the request queue is full ({self.policy.max_queue} requests waiting); "
                "retry later or start the server with a larger --max-queue"
            )
        fut = asyncio.get_running_loop().create_future()
        item = _Item(
            feeds=req.feeds,
            rows=int(req.batch),
            seq=self.plan.seq_of(req.feeds),
            key=self.plan.key_of(req.feeds),
            future=fut,
            enqueued=time.perf_counter(),
        )
        self._queue.append(item)
        self.accepted += 1
        self._wakeup.set()
        return await asyncio.shield(fut)

    # ------------------------------------------------------------------ workers
    def _take_batch(self) -> list[_Item]:
        first = self._queue.popleft()
        batch, rows = [first], first.rows
        longest, real = first.length, first.rows * first.length
        limit = 1.0 + self.policy.max_padding
        if self.policy.max_batch_size > 1:
            keep: deque[_Item] = deque()
            while self._queue:
                it = self._queue.popleft()
                if it.key == first.key and rows + it.rows <= self.policy.max_batch_size:
                    new_longest = max(longest, it.length)
                    new_real = real + it.rows * it.length
                    if (rows + it.rows) * new_longest <= limit * new_real:
                        batch.append(it)
                        rows, longest, real = rows + it.rows, new_longest, new_real
                        continue
                keep.append(it)
            self._queue = keep
        return batch

    def _ready_rows(self, first: _Item) -> int:
        return sum(it.rows for it in self._queue if it.key == first.key)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        pol = self.policy
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            first = self._queue[0]
            if pol.max_batch_size > 1 and not self._closing:
                deadline = first.enqueued + pol.max_delay_ms / 1000.0
                while (
                    self._queue
                    and self._queue[0] is first
                    and self._ready_rows(first) < pol.max_batch_size
                    and not self._closing
                ):
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), timeout=left)
                    except asyncio.TimeoutError:
                        break
                if not self._queue or self._queue[0] is not first:
                    continue  # another worker took it
            batch = self._take_batch()
            if self._queue:
                self._wakeup.set()  # let an idle worker look at the rest
            self._running += 1
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._pool, self._run, batch)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(
                            exc if isinstance(exc, Exception) else SparseAttnError(str(exc))
                        )
                if not isinstance(exc, Exception):
                    raise
            else:
                for it, res in zip(batch, results, strict=True):
                    if not it.future.done():
                        it.future.set_result(res)
            finally:
                self._running -= 1
                self.completed += len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), sum(it.rows for it in batch), time.perf_counter() - t0)

    def _run(self, batch: list[_Item]) -> list[dict]:
        merged = self.plan.merge(batch)
        outputs = self.runtime.run(merged)
        return self.plan.split(outputs, batch)


def run_merged(runtime, feeds_list: list[Mapping[str, np.ndarray]]) -> list[dict]:
    """Run validated requests as merged calls of ``runtime`` (synchronous; no queue).

    Requests that can share a call (see :class:`BatchPlan`) are merged, padded and split back
    exactly as the server's batcher does. Used by the Triton python-backend model.

    Args:
        runtime: a :class:`sparse_attn.Runtime`.
        feeds_list: ``ValidatedRequest.feeds`` of each request.

    Returns:
        one output dict per request, in order.
    """
    plan = BatchPlan(
        runtime.inputs, runtime.outputs, bool(getattr(runtime.info, "static_seq_len", False))
    )
    items = [
        _Item(
            feeds=dict(f),
            rows=int(next(iter(f.values())).shape[0]),
            seq=plan.seq_of(f),
            key=plan.key_of(f),
            future=None,
            enqueued=0.0,
        )
        for f in feeds_list
    ]
    results: list[dict | None] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.key, []).append(i)
    for idx in groups.values():
        batch = [items[i] for i in idx]
        for i, res in zip(idx, plan.split(runtime.run(plan.merge(batch)), batch), strict=True):
            results[i] = res
    return results
