"""Attention-level suite: every implementation on every (pattern, S) cell.

For each sequence length the inputs ``query/key/value [1, H, S, D]`` fp32 are drawn once
(seeded); for each pattern the layout is compiled once and shared by every
implementation. Dense baselines do not depend on the pattern and are measured once per
S. Derived figures per cell (definitions in ``docs/bench.md``):

* ``speedup_vs_dense`` = median(SDPA dense) / median(cell)
* ``ideal_ms`` = median(SDPA dense) x token density; ``fraction_of_ideal`` =
  ``ideal_ms`` / median(cell) (1.0 = the ideal is reached)
* ``gflops``: flops the cell's algorithm needs / median; ``4 S^2 D H`` for dense
  implementations (half of it for causal SDPA, which skips the upper triangle), and
  ``4 S^2 D H x density`` for those that compute the pattern (SDPA with a mask does the
  dense work, so its figure is the *useful* rate); ``gemm_fraction`` divides by the
  measured fp32 GEMM rate.
* ``cpu_equiv_ms`` = CPU time per call / threads, ``gflops_cpu`` and
  ``gemm_fraction_cpu`` the same figures from it: what the cell costs when its threads have
  the cores to themselves (a lower bound of the idle wall time; for a shared machine).
* ``max_abs_diff`` against SDPA with the boolean mask (dense masked attention, the
  oracle; rows with no visible key count as 0) or, where that cell is n/a, against the
  dense reference of our own library.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparse_attn.bench.harness import NotAvailable, PeakRSS, mem_available_bytes, time_callable
from sparse_attn.bench.impls import IMPLS, Case, Impl

#: The reference configuration of the targets table.
REFERENCE_SPEC = "band(w=256) | global(n=64)"
#: (spec, causal) of the full run: the reference config and the four presets.
DEFAULT_PATTERNS: tuple[tuple[str, bool], ...] = (
    (REFERENCE_SPEC, False),
    ("longformer", False),
    ("bigbird", False),
    ("sliding_window", True),
    ("sparse_transformer_strided", False),
)
DEFAULT_SIZES = (1024, 2048, 4096, 8192, 16384)
#: Order of the columns; the first pattern implementation that runs is the accuracy oracle.
DEFAULT_IMPLS = (
    "sdpa_dense",
    "sdpa_causal",
    "sdpa_mask",
    "ours_torch",
    "ours_torch_pure",
    "ours_onnx_ort",
    "flex_compiled",
    "ort_dense",
    "ort_mha",
    "ort_sparse",
)


@dataclass
class TimingPolicy:
    """How many calls a cell gets (see :func:`sparse_attn.bench.harness.time_callable`)."""

    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 10
    budget_s: float = 2.0


def build_layout(spec: str, seq_len: int, block_size: int, num_heads: int, causal: bool):
    """Compile ``spec`` for ``seq_len`` tokens; returns ``(layout, source, seconds)``.

    Uses :func:`sparse_attn.layout.compile_layout`. Where that is not available (a partial
    install) the layout of :data:`REFERENCE_SPEC` is built from its token mask instead and
    ``source`` says so; every figure of such a cell is then about that fallback pattern.
    """
    t0 = time.perf_counter()
    try:
        from sparse_attn.layout import compile_layout
    except ImportError:
        compile_layout = None
    if compile_layout is not None:
        lay = compile_layout(spec, seq_len, block_size, num_heads=num_heads, causal=causal)
        return lay, "compile_layout", time.perf_counter() - t0
    from sparse_attn.layout import BlockLayout

    i = np.arange(seq_len)
    m = (np.abs(i[:, None] - i[None, :]) <= 256) | (i[:, None] < 64) | (i[None, :] < 64)
    if causal:
        m &= i[None, :] <= i[:, None]
    one = BlockLayout.from_token_mask(m, block_size, spec=REFERENCE_SPEC, causal=causal)
    rep = BlockLayout(
        seq_len=one.seq_len,
        block_size=block_size,
        row_ptr=np.repeat(one.row_ptr, num_heads, 0),
        col_idx=np.repeat(one.col_idx, num_heads, 0),
        mask_idx=np.repeat(one.mask_idx, num_heads, 0),
        masks=one.masks,
        spec=REFERENCE_SPEC,
        causal=causal,
    )
    return rep, f"fallback {REFERENCE_SPEC!r} (compile_layout missing)", time.perf_counter() - t0


def _max_abs_diff(got, ref) -> tuple[float, list[int] | None]:
    import torch

    g = torch.nan_to_num(got.float(), nan=0.0)
    r = torch.nan_to_num(ref.float(), nan=0.0)
    if g.shape != r.shape:
        return math.inf, None
    d = (g - r).abs()
    idx = int(torch.argmax(d))
    return float(d.reshape(-1)[idx]), [int(x) for x in np.unravel_index(idx, d.shape)]


def _block_causal_diff(cell: dict, got, case: Case) -> None:
    """Accuracy of a ``block_causal`` cell against SDPA with (block layout & causal) as mask."""
    import torch

    lay = case.layout
    s, bs = case.seq_len, lay.block_size
    blocks = lay.block_mask() > 0  # [H, nb, nb]
    if case.heads_identical():
        blocks = blocks[:1]
    if blocks.shape[0] * s * s * 5 > 2 * 2**30:  # bool mask + SDPA's float copy
        cell["diff_reference"] = f"skipped at S={s} (the O(S^2) reference mask is too large)"
        return
    tok = np.repeat(np.repeat(blocks, bs, axis=1), bs, axis=2)[:, :s, :s]
    tok &= np.tril(np.ones((s, s), dtype=bool))[None]
    with torch.inference_mode():
        ref = torch.nn.functional.scaled_dot_product_attention(
            case.query, case.key, case.value, attn_mask=torch.from_numpy(tok)[None]
        )
    cell["max_abs_diff"], cell["worst_index"] = _max_abs_diff(got, ref)
    cell["diff_reference"] = "sdpa_mask(block layout & causal)"


def _flops(impl: Impl, b: int, h: int, s: int, d: int, density: float, block_density: float):
    dense = 4.0 * b * h * s * s * d
    if impl.computes == "dense":
        return dense
    if impl.computes == "dense_causal":
        return dense * (s + 1) / (2 * s)
    return dense * density


def run_attention_suite(
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    patterns: Sequence[tuple[str, bool]] = DEFAULT_PATTERNS,
    impls: Sequence[str] = DEFAULT_IMPLS,
    num_heads: int = 8,
    head_dim: int = 64,
    block_size: int = 64,
    batch: int = 1,
    policy: TimingPolicy | None = None,
    max_cell_gib: float = 6.0,
    threads: int = 2,
    workdir: Path,
    gemm_gflops: float | None = None,
    gemm_gflops_cpu: float | None = None,
    log: Callable[[str], None] = print,
    seed: int = 0,
    on_progress: Callable[[list[dict]], None] | None = None,
) -> dict:
    """Run the attention suite; returns ``{"cells": [...], "layouts": [...], "config": {...}}``.

    Args:
        sizes: sequence lengths S (tokens). patterns: ``(spec, causal)`` pairs.
        impls: names from :data:`sparse_attn.bench.impls.IMPLS`.
        num_heads, head_dim, block_size, batch: problem shape (B, H, D) and layout block.
        policy: warm-up and repeat counts. threads: torch and ORT intra-op threads.
        max_cell_gib: a cell whose estimated memory exceeds this (or 60 % of the
            machine's available memory) is reported n/a instead of run.
        workdir: where exported ONNX files go. gemm_gflops: measured GEMM rate;
            gemm_gflops_cpu: the same from CPU time (see ``harness.gemm_ceiling``).
        on_progress: called with the cells so far after each (S, pattern) group.

    Raises:
        InvalidInputError: unknown implementation name or non-positive sizes.
    """
    import torch

    from sparse_attn.errors import InvalidInputError

    unknown = [n for n in impls if n not in IMPLS]
    if unknown:
        raise InvalidInputError(
            f"unknown implementation(s) {unknown}; choose from {', '.join(IMPLS)}"
        )
    if any(int(s) < 1 for s in sizes) or num_heads < 1 or head_dim < 1 or batch < 1:
        raise InvalidInputError(
            f"sizes, heads, head dim and batch must be >= 1 (got sizes={list(sizes)}, "
            f"H={num_heads}, D={head_dim}, B={batch})"
        )
    policy = policy or TimingPolicy()
    torch.set_num_threads(threads)
    cells: list[dict] = []
    layouts: list[dict] = []
    order = [IMPLS[n] for n in impls]
    for s in sizes:
        gen = torch.Generator().manual_seed(seed + s)
        shape = (batch, num_heads, s, head_dim)
        q, k, v = (torch.randn(shape, generator=gen, dtype=torch.float32) for _ in range(3))
        shared: dict[str, dict] = {}
        shared_out: dict[str, object] = {}
        for spec, causal in patterns:
            try:
                layout, source, compile_s = build_layout(spec, s, block_size, num_heads, causal)
            except Exception as exc:  # noqa: BLE001 - a bad preset must not stop the run
                reason = f"layout failed: {type(exc).__name__}: {exc}"
                log(f"[attention] S={s} {spec}: n/a ({reason})")
                for impl in order:
                    cells.append(_na(impl, spec, causal, s, reason))
                continue
            st = layout.stats()
            layouts.append(
                {
                    "pattern": spec,
                    "causal": bool(layout.causal),
                    "seq_len": s,
                    "source": source,
                    "compile_s": compile_s,
                    **{key: st[key] for key in ("density_tokens", "density_blocks")},
                    "full_blocks": st["full_blocks"],
                    "partial_blocks": st["partial_blocks"],
                    "expanded_spec": st["spec"],
                }
            )
            density = float(st["density_tokens"])
            case = Case(q, k, v, layout, spec, causal, density, workdir, threads)
            ref = None
            ref_name = None
            group: list[dict] = []
            for impl in order:
                if impl.causal_only and not (layout.causal or causal):
                    continue
                if impl.pattern_independent and impl.name in shared:
                    cell = dict(shared[impl.name], pattern=spec, causal=bool(layout.causal))
                    cell["shared"] = True
                    group.append(cell)
                    continue
                cell, out = _run_cell(impl, case, policy, max_cell_gib)
                if out is not None and impl.computes == "block_causal":
                    _block_causal_diff(cell, impl.to_bhsd(out, case), case)
                elif out is not None and impl.computes == "pattern":
                    got = impl.to_bhsd(out, case)
                    if ref is None:
                        ref, ref_name = got, impl.name
                        cell["max_abs_diff"], cell["diff_reference"] = 0.0, impl.name
                    elif ref is not None:
                        diff, where = _max_abs_diff(got, ref)
                        cell["max_abs_diff"], cell["worst_index"] = diff, where
                        cell["diff_reference"] = ref_name
                elif out is not None and impl.computes == "dense":
                    got = impl.to_bhsd(out, case)
                    if "dense" not in shared_out:
                        shared_out["dense"] = got
                        cell["max_abs_diff"], cell["diff_reference"] = 0.0, impl.name
                    else:
                        cell["max_abs_diff"], cell["worst_index"] = _max_abs_diff(
                            got, shared_out["dense"]
                        )
                        cell["diff_reference"] = "sdpa_dense"
                del out
                if impl.pattern_independent:
                    shared[impl.name] = cell
                group.append(cell)
                log(_cell_line(cell))
            dense = next(
                (c for c in group if c["impl"] == "sdpa_dense" and c["status"] == "ok"), None
            )
            for c in group:
                c["density_tokens"] = density
                c["density_blocks"] = float(st["density_blocks"])
                if c["status"] != "ok":
                    continue
                impl = IMPLS[c["impl"]]
                flops = _flops(
                    impl, batch, num_heads, s, head_dim, density, float(st["density_blocks"])
                )
                c["gflops"] = flops / (c["median_ms"] * 1e-3) / 1e9
                c["gemm_fraction"] = c["gflops"] / gemm_gflops if gemm_gflops else None
                cpu = c.get("cpu_median_ms")
                if cpu:
                    c["cpu_equiv_ms"] = cpu / threads
                    c["gflops_cpu"] = flops / (c["cpu_equiv_ms"] * 1e-3) / 1e9
                    c["gemm_fraction_cpu"] = (
                        c["gflops_cpu"] / gemm_gflops_cpu if gemm_gflops_cpu else None
                    )
                if dense is not None:
                    c["speedup_vs_dense"] = dense["median_ms"] / c["median_ms"]
                    c["ideal_ms"] = dense["median_ms"] * density
                    c["fraction_of_ideal"] = c["ideal_ms"] / c["median_ms"]
                else:
                    c["speedup_vs_dense"] = c["ideal_ms"] = c["fraction_of_ideal"] = None
            cells.extend(group)
            del ref
            if on_progress is not None:
                on_progress(cells)
    return {
        "cells": cells,
        "layouts": layouts,
        "config": {
            "sizes": list(sizes),
            "patterns": [list(p) for p in patterns],
            "impls": list(impls),
            "batch": batch,
            "num_heads": num_heads,
            "head_dim": head_dim,
            "block_size": block_size,
            "dtype": "float32",
            "threads": threads,
            "max_cell_gib": max_cell_gib,
            "timing_policy": vars(policy),
        },
    }


def _na(impl: Impl, spec: str, causal: bool, s: int, reason: str) -> dict:
    return {
        "suite": "attention",
        "impl": impl.name,
        "label": impl.label,
        "ours": impl.ours,
        "computes": impl.computes,
        "pattern": spec,
        "causal": causal,
        "seq_len": s,
        "status": "n/a",
        "reason": reason,
        "median_ms": None,
    }


def _run_cell(impl: Impl, case: Case, policy: TimingPolicy, max_cell_gib: float):
    """Estimate, prepare, time and measure one cell; never raises (errors become n/a)."""
    s = case.seq_len
    spec = case.spec
    causal = bool(case.layout.causal)
    est = impl.estimate_bytes(case)
    avail = mem_available_bytes()
    limit = max_cell_gib * 2**30
    if avail is not None:
        limit = min(limit, 0.6 * avail)
    if est > limit:
        return (
            _na(
                impl,
                spec,
                causal,
                s,
                f"estimated {est / 2**30:.1f} GiB > limit {limit / 2**30:.1f} GiB",
            ),
            None,
        )
    t0 = time.perf_counter()
    try:
        fn = impl.prepare(case)
        prep = time.perf_counter() - t0
        with PeakRSS() as peak:
            timing, out = time_callable(
                fn,
                warmup=policy.warmup,
                min_repeats=policy.min_repeats,
                max_repeats=policy.max_repeats,
                budget_s=policy.budget_s,
            )
    except NotAvailable as exc:
        return _na(impl, spec, causal, s, str(exc)), None
    except Exception as exc:  # noqa: BLE001 - a failing alternative must not stop the run
        msg = " ".join(str(exc).split())[:300]
        return _na(impl, spec, causal, s, f"error: {type(exc).__name__}: {msg}"), None
    cell = _na(impl, spec, causal, s, "")
    cell.update(
        status="ok",
        reason=None,
        median_ms=timing.median_ms,
        q1_ms=timing.q1_ms,
        q3_ms=timing.q3_ms,
        min_ms=timing.min_ms,
        max_ms=timing.max_ms,
        repeats=timing.repeats,
        warmup=timing.warmup,
        first_call_ms=timing.first_call_ms,
        times_ms=timing.times_ms,
        cpu_median_ms=timing.cpu_median_ms,
        prepare_s=prep,
        peak_mem_mib=peak.peak_mib,
        estimate_mib=est / 2**20,
        loadavg_1m=os.getloadavg()[0],
        shared=False,
        note=getattr(fn, "note", None),
    )
    return cell, out


def _cell_line(c: dict) -> str:
    head = f"[attention] S={c['seq_len']:>6} {c['pattern'][:28]:<28} {c['impl']:<14}"
    if c["status"] != "ok":
        return f"{head} n/a ({c['reason']})"
    mem = "?" if c.get("peak_mem_mib") is None else f"{c['peak_mem_mib']:.0f} MiB"
    cpu = c.get("cpu_median_ms")
    cpu_s = "" if cpu is None else f" cpu {cpu:.1f} ms"
    return (
        f"{head} {c['median_ms']:9.2f} ms [{c['min_ms']:.2f}-{c['max_ms']:.2f}] "
        f"x{c['repeats']}{cpu_s} peak {mem}"
    )
