"""Layout suite: time and peak memory of compiling each preset at a long length (S = 65,536).

:func:`measure_compile` is the measurement (best-of-``repeat`` compile time, ``tracemalloc``
peak of one compile); the script ``benchmarks/layout_compile.py`` prints its table from the
same function.
"""

from __future__ import annotations

import resource
import time
import tracemalloc
from collections.abc import Callable, Sequence

DEFAULT_LAYOUT_PATTERNS = (
    "band(w=256) | global(n=64)",
    "longformer",
    "bigbird",
    "sliding_window",
    "sparse_transformer_strided",
)


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_compile(spec: str, seq_len: int, block_size: int, num_heads: int, repeat: int) -> dict:
    """Compile ``spec`` ``repeat`` times; timings (s), memory (MiB) and layout statistics.

    Returns a dict with ``compile_s_best`` / ``compile_s_first`` (wall-clock seconds),
    ``peak_traced_mib`` (``tracemalloc`` peak of the first compile: ``compile_layout``
    allocates only NumPy buffers, which tracemalloc sees), ``max_rss_growth_mib``,
    ``layout_mib`` (the layout's arrays), ``dense_mask_mib`` (the ``H * S^2`` boolean mask
    it avoids), ``nnz_blocks``, ``full_blocks``, ``partial_blocks``, ``num_masks``,
    ``density_tokens``, ``density_blocks``.
    """
    from sparse_attn.layout import compile_layout

    rss0 = _max_rss_mib()
    tracemalloc.start()
    t0 = time.perf_counter()
    layout = compile_layout(spec, seq_len, block_size, num_heads=num_heads)
    first = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    times = [first]
    for _ in range(repeat - 1):
        t0 = time.perf_counter()
        compile_layout(spec, seq_len, block_size, num_heads=num_heads)
        times.append(time.perf_counter() - t0)
    st = layout.stats()
    arrays = sum(a.nbytes for a in (layout.row_ptr, layout.col_idx, layout.mask_idx, layout.masks))
    return {
        "spec": spec,
        "expanded": st["spec"],
        "seq_len": seq_len,
        "block_size": block_size,
        "num_heads": num_heads,
        "compile_s_best": min(times),
        "compile_s_first": first,
        "peak_traced_mib": peak / 2**20,
        "max_rss_growth_mib": max(0.0, _max_rss_mib() - rss0),
        "layout_mib": arrays / 2**20,
        "dense_mask_mib": num_heads * seq_len * seq_len / 2**20,
        "nnz_blocks": int(layout.nnz.sum()),
        "full_blocks": st["full_blocks"],
        "partial_blocks": st["partial_blocks"],
        "num_masks": st["num_masks"],
        "density_tokens": st["density_tokens"],
        "density_blocks": st["density_blocks"],
    }


def run_layout_suite(
    *,
    patterns: Sequence[str] = DEFAULT_LAYOUT_PATTERNS,
    seq_len: int = 65536,
    block_size: int = 64,
    num_heads: int = 8,
    repeats: int = 1,
    log: Callable[[str], None] = print,
) -> dict:
    """Compile every pattern at ``seq_len``; returns ``{"cells": [...], "config": {...}}``.

    Each cell: ``compile_s`` (best of ``repeats`` wall-clock seconds), ``peak_mem_mib``
    (peak RSS increase during the first compile), ``density_tokens``, ``stored_blocks``,
    ``num_masks``; or ``status="n/a"`` with the reason.
    """
    cells = []
    for pat in patterns:
        cell = {
            "suite": "layout",
            "pattern": pat,
            "seq_len": seq_len,
            "block_size": block_size,
            "num_heads": num_heads,
            "status": "n/a",
        }
        try:
            res = measure_compile(pat, seq_len, block_size, num_heads, repeat=max(1, repeats))
            cell.update(
                res,
                status="ok",
                reason=None,
                source="sparse_attn.bench.layout_suite (peak = tracemalloc peak of one compile)",
                compile_s=res["compile_s_best"],
                peak_mem_mib=res["peak_traced_mib"],
                stored_blocks=res["nnz_blocks"],
            )
        except Exception as exc:  # noqa: BLE001 - reported as the cell's reason
            cell["reason"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        cells.append(cell)
        if cell["status"] == "ok":
            log(
                f"[layout] {pat:<30} S={seq_len}: {cell.get('compile_s') or float('nan'):.3f} s, "
                f"peak {cell.get('peak_mem_mib') or float('nan'):.1f} MiB"
            )
        else:
            log(f"[layout] {pat:<30} S={seq_len}: n/a ({cell['reason']})")
    return {
        "cells": cells,
        "config": {"seq_len": seq_len, "block_size": block_size, "num_heads": num_heads},
    }
