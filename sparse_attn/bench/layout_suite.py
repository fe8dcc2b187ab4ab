"""Layout suite: time and peak memory of compiling each preset at a long length (S = 65,536).

When the repository's ``benchmarks/layout_compile.py`` (the pattern compiler's own
benchmark) exposes ``measure(spec, seq_len, block_size, num_heads, repeat) -> dict``, its
figures are used (best-of-``repeat`` compile time, ``tracemalloc`` peak of one compile:
``compile_layout`` allocates only NumPy buffers, which tracemalloc sees); otherwise :func:`sparse_attn.layout.compile_layout` is timed here, with the peak
memory measured as in :class:`sparse_attn.bench.harness.PeakRSS`.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sparse_attn.bench.harness import PeakRSS

DEFAULT_LAYOUT_PATTERNS = (
    "band(w=256) | global(n=64)",
    "longformer",
    "bigbird",
    "sliding_window",
    "sparse_transformer_strided",
)


def _external_measure():
    """``measure`` of ``benchmarks/layout_compile.py`` when it has one, else None."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "layout_compile.py"
    if not path.is_file():
        return None
    try:
        spec = importlib.util.spec_from_file_location("_sparse_attn_layout_compile", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - a broken script falls back to our own timing
        return None
    fn = getattr(mod, "measure", None)
    return fn if callable(fn) else None


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
    external = _external_measure()
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
            if external is not None:
                res = dict(external(pat, seq_len, block_size, num_heads, repeat=max(1, repeats)))
                cell.update(
                    res,
                    status="ok",
                    reason=None,
                    source="benchmarks/layout_compile.py (peak = tracemalloc peak of one compile)",
                    compile_s=res.get("compile_s_best"),
                    peak_mem_mib=res.get("peak_traced_mib"),
                    stored_blocks=res.get("nnz_blocks"),
                )
            else:
                from sparse_attn.layout import compile_layout

                times = []
                peak_mib = None
                lay = None
                for i in range(max(1, repeats)):
                    with PeakRSS() as peak:
                        t0 = time.perf_counter()
                        lay = compile_layout(pat, seq_len, block_size, num_heads=num_heads)
                        times.append(time.perf_counter() - t0)
                    if i == 0:
                        peak_mib = peak.peak_mib
                st = lay.stats()
                cell.update(
                    status="ok",
                    reason=None,
                    source="sparse_attn.bench (compile_layout)",
                    compile_s=min(times),
                    peak_mem_mib=peak_mib,
                    density_tokens=st["density_tokens"],
                    density_blocks=st["density_blocks"],
                    stored_blocks=st["full_blocks"] + st["partial_blocks"],
                    num_masks=st["num_masks"],
                )
                del lay
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
