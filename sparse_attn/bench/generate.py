"""``generate`` suite: time to first token, decode speed and cache memory of generation.

Three implementations of greedy generation of ``new_tokens`` tokens after a prompt of ``S``
tokens (batch 1, random token ids, seeded), on one checkpoint (default Gemma 3 270M):

* ``ours_ort``: our generation export (:mod:`sparse_attn.export.generate`) in ONNX Runtime:
  prefill with ``sparse_attn::BlockSparseAttention`` (each layer's own pattern), decode with
  the window-bounded cache.
* ``dense_ort``: the same export with the model's own dense attention in the prefill graph
  (what exporting the unmodified model gives); the decode graph is the same.
* ``hf_sdpa``: transformers' ``generate`` (greedy) with ``attn_implementation="sdpa"`` in
  PyTorch (its ``DynamicCache`` also keeps ``W - 1`` positions on sliding layers).

Measured per cell: ``ttft_s`` (prompt in, first new token out), ``decode_tokens_per_s``
(the tokens after the first, over their time), ``cache_mib`` (the K/V cache after the last
step: ONNX Runtime's ``present.*`` outputs, transformers' cache tensors), ``peak_rss_mib``
(peak resident memory increase over the cell, see :class:`~sparse_attn.bench.harness.PeakRSS`),
and whether the tokens equal ``hf_sdpa``'s. One run per cell (a generation is long); the
load average is recorded. Nothing here asserts a timing.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sparse_attn.bench.harness import PeakRSS

#: Implementations of the suite.
GENERATE_IMPLS = ("ours_ort", "dense_ort", "hf_sdpa")
DEFAULT_LENGTHS = (512, 2048, 8192)
DEFAULT_MODEL = "gemma3-270m"


def _prompt(length: int, vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(3, min(vocab, 32000), size=(1, length), dtype=np.int64)


def _ort_cell(gen, ids, new_tokens: int) -> dict:
    steps, first = [], None
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        for tok in gen.stream(ids, max_new_tokens=new_tokens, stop_token_ids=[]):
            if first is None:
                first = time.perf_counter() - t0
            steps.append(int(tok[0]))
    total = time.perf_counter() - t0
    shapes = gen.last_cache_shapes
    itemsize = 2 if gen.info.get("dtype") == "float16" else 4
    cache = sum(int(np.prod(s)) for s in shapes.values()) * itemsize
    return {
        "ttft_s": first,
        "decode_tokens_per_s": (len(steps) - 1) / (total - first) if len(steps) > 1 else None,
        "cache_mib": cache / 2**20,
        "peak_rss_mib": rss.peak_mib,
        "tokens": steps,
    }


def _hf_cell(model, ids, new_tokens: int) -> dict:
    import torch
    from transformers.generation.streamers import BaseStreamer

    class _Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    clock = _Clock()
    t0 = time.perf_counter()
    with PeakRSS() as rss, torch.no_grad():
        out = model.generate(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.ones_like(torch.from_numpy(ids)),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            streamer=clock,
            return_dict_in_generate=True,
        )
    total = time.perf_counter() - t0
    new = [t - t0 for t in clock.times[1:]]  # the first put is the prompt
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    nbytes = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                nbytes += t.numel() * t.element_size()
    tokens = out.sequences[0, ids.shape[1] :].tolist()
    return {
        "ttft_s": new[0] if new else total,
        "decode_tokens_per_s": (len(new) - 1) / (new[-1] - new[0]) if len(new) > 1 else None,
        "cache_mib": nbytes / 2**20,
        "peak_rss_mib": rss.peak_mib,
        "tokens": tokens,
    }


def run_generate_suite(
    *,
    workdir: Path,
    model: str = DEFAULT_MODEL,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    new_tokens: int = 32,
    impls: Sequence[str] = GENERATE_IMPLS,
    threads: int = 2,
    block_size: int = 64,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the suite; returns ``{"cells": [...], "model", "lengths", ...}`` (JSON-ready).

    Each cell is ``{"impl", "seq_len", "new_tokens", "ttft_s", "decode_tokens_per_s",
    "cache_mib", "peak_rss_mib", "same_tokens_as_hf", "loadavg"}`` or ``{"impl",
    "seq_len", "error"}`` when that implementation could not run.

    Raises:
        InvalidInputError: unknown implementations, lengths < 1.
    """
    import torch

    from sparse_attn.errors import InvalidInputError
    from sparse_attn.export.generate import export_checkpoint, export_generation
    from sparse_attn.models import checkpoint as ckpt
    from sparse_attn.runtime.generate import Generator

    bad = [i for i in impls if i not in GENERATE_IMPLS]
    if bad:
        raise InvalidInputError(f"unknown generate impl(s) {bad}; choose from {GENERATE_IMPLS}")
    if not lengths or min(lengths) < 1:
        raise InvalidInputError(f"generate lengths must be >= 1, got {list(lengths)}")
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    workdir = Path(workdir)
    max_len = max(lengths)
    path = ckpt.resolve(model)
    hf = ckpt.load_model(path)
    vocab = int(hf.get_output_embeddings().weight.shape[0])
    cells: list[dict] = []
    gens = {}
    for impl in impls:
        if impl == "hf_sdpa":
            continue
        out = workdir / f"generate-{Path(str(path)).name}-{impl}-{max_len}-{block_size}"
        try:
            if not (out / "generation.json").is_file():
                t = time.perf_counter()
                if impl == "ours_ort":
                    export_checkpoint(
                        path, out, max_seq_len=max_len, block_size=block_size, verbose=False
                    )
                else:
                    export_generation(
                        hf,
                        out,
                        max_seq_len=max_len,
                        prefill_attention=lambda m: _impl_ctx(m, "sdpa"),
                        source_dir=path,
                        verbose=False,
                    )
                log(f"generate: exported {impl} in {time.perf_counter() - t:.0f} s -> {out}")
            gens[impl] = Generator(out, intra_op_threads=threads, allow_spinning=False)
        except Exception as exc:  # recorded, the suite goes on
            gens[impl] = exc
            log(f"generate: {impl} export failed: {exc}")
    for s in lengths:
        ids = _prompt(s, vocab)
        ref_tokens = None
        row_cells = []
        for impl in impls:
            cell = {"impl": impl, "seq_len": int(s), "new_tokens": int(new_tokens)}
            gc.collect()
            try:
                if impl == "hf_sdpa":
                    with _impl_ctx(hf, "sdpa"):
                        cell.update(_hf_cell(hf, ids, new_tokens))
                    ref_tokens = cell["tokens"]
                else:
                    g = gens[impl]
                    if isinstance(g, Exception):
                        raise g
                    cell.update(_ort_cell(g, ids, new_tokens))
            except Exception as exc:
                cell["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            cell["loadavg"] = list(os.getloadavg())
            row_cells.append(cell)
            log(
                f"generate S={s} {impl}: "
                + (
                    cell["error"]
                    if "error" in cell
                    else f"ttft {cell['ttft_s']:.2f} s, {cell['decode_tokens_per_s'] or 0:.1f} "
                    f"tok/s, cache {cell['cache_mib']:.1f} MiB"
                )
            )
        for cell in row_cells:
            if ref_tokens is not None and "tokens" in cell:
                cell["same_tokens_as_hf"] = cell["tokens"] == ref_tokens
            cell.pop("tokens", None)
        cells.extend(row_cells)
    return {
        "model": str(model),
        "lengths": [int(x) for x in lengths],
        "new_tokens": int(new_tokens),
        "impls": list(impls),
        "threads": threads,
        "cells": cells,
    }


def _impl_ctx(model, name: str):
    from sparse_attn.export.generate import attention_implementation

    return attention_implementation(model, name)


def markdown(result: dict) -> str:
    """A markdown table of the suite's cells."""
    lines = [
        f"### generate: {result.get('model')}, {result.get('new_tokens')} new tokens, batch 1",
        "",
        "| S | impl | time to first token (s) | decode tokens/s | cache MiB | peak RSS MiB | "
        "same tokens as HF |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result.get("cells", []):
        if "error" in c:
            lines.append(f"| {c['seq_len']} | {c['impl']} | n/a: {c['error'][:80]} | | | | |")
            continue

        def f(v, fmt):
            return "n/a" if v is None else format(v, fmt)

        lines.append(
            f"| {c['seq_len']} | {c['impl']} | {f(c['ttft_s'], '.2f')} | "
            f"{f(c['decode_tokens_per_s'], '.1f')} | {f(c['cache_mib'], '.1f')} | "
            f"{f(c['peak_rss_mib'], '.0f')} | {c.get('same_tokens_as_hf', 'n/a')} |"
        )
    return "\n".join(lines) + "\n"
