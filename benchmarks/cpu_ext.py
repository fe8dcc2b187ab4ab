"""Benchmark of the compiled CPU kernel (sparse_attn.kernels.cpu_ext) against the alternatives.

Cases (fp32, B = 1, block 64, S in {4096, 8192, 16384} by default):

* ``band_global``: ``band(w=256) | global(n=64)``, H = 8 query and K/V heads, D = 64;
* ``gemma``: Gemma 3's sliding layers, ``band(w=511) | causal`` (a 512-token causal window),
  H = 4 query heads over Hkv = 1 K/V head (grouped, not expanded), D = 256.

Implementations timed:

* ``cpu_ext``: ``cpu_ext.attention_arrays`` on the layout arrays (what the ``torch`` backend
  calls for CPU tensors), once per instruction set given with ``--isa`` (``auto`` = the
  best this CPU runs; ``avx2`` / ``scalar`` force a path through ``SPARSE_ATTN_CPU_ISA``);
* ``sdpa_dense``: ``torch.nn.functional.scaled_dot_product_attention`` without a mask
  (PyTorch's CPU flash kernel, ``enable_gqa`` for grouped K/V); the *ideal* is its time x
  the pattern's token density;
* ``flex``: FlexAttention under ``torch.compile`` with the same mask as a ``mask_mod`` and a
  ``BlockMask`` of the same block size (``enable_gqa`` for grouped K/V; skip with
  ``--no-flex``).

Timing: one warm-up call each, then ``--repeats`` rounds in which every implementation is
called once in turn (so a burst of load from other processes hits all of them alike); the
median is the headline, min and the process CPU time per call (all threads) are reported
too, with the 1-minute load average. The machine's fp32 GEMM ceiling (``torch.mm`` of
4096 x 4096 matrices on the same threads) is measured first: GFLOP/s of the kernel count 4 x D
flops per (query, key) pair of the stored tiles. Writes JSON (``--out``, with the CPU's
ISA flags and the kernel's ISA) and prints a markdown table. Never asserts timings.

An AVX2 figure taken on an AVX-512 CPU is only fair if PyTorch's own kernels (the ideal's
SDPA, FlexAttention) are held to AVX2 too: ``--cap-torch avx2`` re-runs the script with
``ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2``
(``ATEN_CPU_CAPABILITY`` alone leaves SDPA's MKL products on AVX-512) and records them in
the JSON.

Usage: ``python benchmarks/cpu_ext.py [--quick] [--cases gemma] [--isa auto avx2]
[--cap-torch avx2] [--no-flex] [--out artifacts/bench/cpu_ext.json]``. Full run: about 5 min on an idle 2-core
machine (dense SDPA at S = 16384 and FlexAttention's compiles dominate).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

#: Environment that holds PyTorch (ATen, MKL, oneDNN) to AVX2, for ``--cap-torch avx2``.
CAP_AVX2_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}


def _reexec_capped(argv: list[str]) -> None:
    """Replace this process by the same command with :data:`CAP_AVX2_ENV` set (PyTorch reads
    it at import, so it cannot be applied in place); a no-op when it is already set."""
    if all(os.environ.get(k) == v for k, v in CAP_AVX2_ENV.items()):
        return
    os.environ.update(CAP_AVX2_ENV)
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *argv])


if __name__ == "__main__" and "--cap-torch" in sys.argv:  # before torch is imported
    _reexec_capped(sys.argv[1:])

import torch  # noqa: E402

#: name -> (spec, H, Hkv, D); FlexAttention's mask_mod for each is in _mask_mod.
CASES = {
    "band_global": ("band(w=256) | global(n=64)", 8, 8, 64),
    "gemma": ("band(w=511) | causal", 4, 1, 256),
}
BLOCK = 64


def _mask_mod(case: str):
    if case == "band_global":

        def band_global(b, h, qi, kj):
            return ((qi - kj).abs() <= 256) | (qi < 64) | (kj < 64)

        return band_global

    def causal_window(b, h, qi, kj):
        return (qi >= kj) & (qi - kj <= 511)

    return causal_window


def _cpu_info() -> dict:
    info = {"machine": platform.machine(), "model": platform.processor(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name"):
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["flags"] = sorted(
                f
                for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_tile")
                if f in flags
            )
            break
    return info


def _stats(ts: list[float], cpu: list[float], load: list[float]) -> dict:
    return {
        "median_ms": statistics.median(ts),
        "min_ms": min(ts),
        "median_cpu_ms": statistics.median(cpu),
        "min_cpu_ms": min(cpu),
        "runs_ms": [round(t, 2) for t in ts],
        "loadavg_1min": load,
    }


def _time_round_robin(fns: dict, repeats: dict) -> dict:
    """Call each fn once (warm-up), then round-robin; repeats[name] calls of each."""
    for fn in fns.values():
        fn()
    ts = {n: [] for n in fns}
    cpu = {n: [] for n in fns}
    load = [os.getloadavg()[0]]
    for r in range(max(repeats.values())):
        for name, fn in fns.items():
            if r >= repeats[name]:
                continue
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            ts[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
    load.append(os.getloadavg()[0])
    return {n: _stats(ts[n], cpu[n], load) for n in fns}


def gemm_ceiling(threads: int, n: int = 4096, repeats: int = 5) -> dict:
    """fp32 GEMM rate of torch.mm (MKL / oneDNN) on ``threads`` threads: the physical limit.

    Also per CPU-second (flops / process CPU time x threads), which a loaded machine
    disturbs less than the wall-clock rate.
    """
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    ts, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        torch.mm(a, b)
        ts.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    flops = 2 * n**3
    return {
        "n": n,
        "median_gflops": flops / statistics.median(ts) / 1e9,
        "max_gflops": flops / min(ts) / 1e9,
        "cpu_time_gflops": flops * threads / min(cpu) / 1e9,
        "loadavg_1min": os.getloadavg()[0],
    }


def layout_tensors(layout) -> dict[str, torch.Tensor]:
    """int32 row_ptr / col_idx / mask_idx and uint8 masks (one zero mask when M = 0)."""
    import numpy as np

    masks = layout.masks
    if masks.shape[0] == 0:
        masks = np.zeros((1, layout.block_size, layout.block_size), dtype=np.uint8)
    named = zip(
        ("row_ptr", "col_idx", "mask_idx", "masks"),
        (layout.row_ptr, layout.col_idx, layout.mask_idx, masks),
        strict=True,
    )
    return {n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in named}


def _flex_runner(case: str, q, k, v, s: int, grouped: bool):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    bm = create_block_mask(
        _mask_mod(case), None, None, s, s, device="cpu", BLOCK_SIZE=BLOCK, _compile=True
    )
    compiled = torch.compile(flex_attention, dynamic=False)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = compiled(q, k, v, block_mask=bm, enable_gqa=grouped)
    compile_s = time.perf_counter() - t0

    def run():
        with torch.no_grad():
            return compiled(q, k, v, block_mask=bm, enable_gqa=grouped)

    return run, out, compile_s


def _with_isa(isa: str, fn):
    from sparse_attn.kernels import cpu_ext

    def run():
        old = os.environ.get(cpu_ext.ISA_ENV)
        os.environ[cpu_ext.ISA_ENV] = isa
        try:
            return fn()
        finally:
            if old is None:
                del os.environ[cpu_ext.ISA_ENV]
            else:
                os.environ[cpu_ext.ISA_ENV] = old

    return run


def bench_cell(case: str, s: int, args) -> dict:
    from sparse_attn.kernels import cpu_ext
    from sparse_attn.layout import compile_layout

    spec, h, hkv, d = CASES[case]
    layout = compile_layout(spec, seq_len=s, block_size=BLOCK, num_heads=h)
    st = layout.stats()
    arrs = layout_tensors(layout)
    g = torch.Generator().manual_seed(s)
    q = torch.randn(1, h, s, d, generator=g)
    k = torch.randn(1, hkv, s, d, generator=g)
    v = torch.randn(1, hkv, s, d, generator=g)
    scale = d**-0.5

    def ours():
        return cpu_ext.attention_arrays(
            q, k, v, arrs["row_ptr"], arrs["col_idx"], arrs["mask_idx"], arrs["masks"],
            None, BLOCK, scale,
        )  # fmt: skip

    def sdpa():
        with torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=hkv != h)

    fns, reps = {}, {}
    isas = []
    for isa in args.isa:
        name = cpu_ext.isa() if isa == "auto" else isa
        if name in isas:
            continue
        isas.append(name)
        fns[f"cpu_ext[{name}]"] = _with_isa(name, ours)
        reps[f"cpu_ext[{name}]"] = args.repeats
    cell: dict = {
        "case": case,
        "spec": spec,
        "seq_len": s,
        "H": h,
        "Hkv": hkv,
        "D": d,
        "density_tokens": st["density_tokens"],
        "density_blocks": st["density_blocks"],
    }
    out = ours()
    if not args.no_flex:
        try:
            run, fout, compile_s = _flex_runner(case, q, k, v, s, hkv != h)
            fns["flex"], reps["flex"] = run, args.repeats
            cell["flex_compile_s"] = compile_s
            cell["max_abs_diff_vs_flex"] = float((out - fout).abs().max())
        except Exception as exc:  # noqa: BLE001 - report and go on
            cell["flex_error"] = f"{type(exc).__name__}: {exc}"[:300]
    fns["sdpa_dense"], reps["sdpa_dense"] = sdpa, args.dense_repeats
    timed = _time_round_robin(fns, reps)
    cell.update(timed)
    stored_pairs = (st["full_blocks"] + st["partial_blocks"]) * BLOCK * BLOCK
    dense = timed["sdpa_dense"]
    cell["sdpa_dense"]["gflops"] = 4 * d * h * s * s / dense["median_ms"] / 1e6
    cell["ideal_ms"] = dense["median_ms"] * st["density_tokens"]
    cell["ideal_cpu_ms"] = dense["median_cpu_ms"] * st["density_tokens"]
    for name in fns:
        if name.startswith("cpu_ext"):
            cell[name]["gflops_stored_tiles"] = 4 * d * stored_pairs / cell[name]["median_ms"] / 1e6
    if s <= 4096:  # check against float64 SDPA with the boolean token mask (O(S^2) memory)
        mask = torch.from_numpy(layout.token_mask()[0])
        with torch.no_grad():
            ref = torch.nn.functional.scaled_dot_product_attention(
                q.double(), k.double(), v.double(), attn_mask=mask, enable_gqa=hkv != h
            )
        cell["max_abs_err_vs_fp64"] = float((out.double() - ref).abs().max())
    return cell


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--isa", nargs="+", default=["auto"], help="ISA paths to time: auto, avx512, avx2, scalar"
    )
    ap.add_argument("--repeats", type=int, default=7, help="timed calls of the sparse kernels")
    ap.add_argument("--dense-repeats", type=int, default=3, help="timed calls of dense SDPA")
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    ap.add_argument(
        "--cap-torch",
        choices=("avx2",),
        default=None,
        help="hold PyTorch's kernels (the ideal's SDPA, FlexAttention) to AVX2 as well",
    )
    ap.add_argument("--quick", action="store_true", help="S = 4096 only, fewer repeats")
    ap.add_argument("--out", type=Path, default=Path("artifacts/bench/cpu_ext.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seq_lens, args.repeats, args.dense_repeats = [4096], 5, 2

    from sparse_attn.kernels import cpu_ext

    torch.set_num_threads(args.threads)
    if not cpu_ext.is_available():
        print(f"cpu_ext unavailable: {cpu_ext.unavailable_reason()}", file=sys.stderr)
        return 1
    ceiling = gemm_ceiling(args.threads)
    print(
        f"fp32 GEMM ceiling (torch.mm 4096^2, {args.threads} threads): "
        f"{ceiling['median_gflops']:.0f} GFLOP/s median, {ceiling['max_gflops']:.0f} best, "
        f"{ceiling['cpu_time_gflops']:.0f} per CPU time x threads; load {ceiling['loadavg_1min']}",
        flush=True,
    )
    report = {
        "benchmark": "cpu_ext",
        "block_size": BLOCK,
        "dtype": "float32",
        "threads": args.threads,
        "machine": {
            "cpu": _cpu_info(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_capped_env": {k: os.environ.get(k) for k in CAP_AVX2_ENV},
        },
        "cpu_ext_isa": cpu_ext.isa(),
        "cpu_ext_supported_isas": cpu_ext.supported_isas(),
        "gemm_ceiling": ceiling,
        "results": [],
    }
    for case in args.cases:
        for s in args.seq_lens:
            cell = bench_cell(case, s, args)
            report["results"].append(cell)
            print(_row(cell), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print()
    print(markdown(report))
    print(f"\nJSON written to {args.out}")
    return 0


def _fmt(x, nd=1):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _row(c: dict) -> str:
    parts = [f"{c['case']} S={c['seq_len']}:"]
    for name in c:
        if name.startswith("cpu_ext[") or name in ("flex", "sdpa_dense"):
            parts.append(f"{name} {_fmt(c[name]['median_ms'])} ms")
    parts.append(f"ideal {_fmt(c['ideal_ms'])} ms; load {c['sdpa_dense']['loadavg_1min']}")
    return " ".join(parts)


def markdown(report: dict) -> str:
    """Markdown table of a report: medians (ms), ratios to the ideal and to FlexAttention."""
    lines = [
        "| case | S | kernel (ISA) | kernel ms | SDPA dense ms | ideal ms | FlexAttention ms | "
        "kernel / ideal | flex / kernel | kernel CPU ms / ideal CPU ms | kernel GFLOP/s "
        "(stored tiles) | GEMM ceiling GFLOP/s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ceiling = report["gemm_ceiling"]["median_gflops"]
    for c in report["results"]:
        flex = c.get("flex", {}).get("median_ms")
        for name in [n for n in c if n.startswith("cpu_ext[")]:
            ours = c[name]["median_ms"]
            lines.append(
                f"| {c['case']} | {c['seq_len']} | {name[8:-1]} | {_fmt(ours)} | "
                f"{_fmt(c['sdpa_dense']['median_ms'])} | {_fmt(c['ideal_ms'])} | {_fmt(flex)} | "
                f"{_fmt(ours / c['ideal_ms'], 2)} | {_fmt(flex / ours if flex else None, 2)} | "
                f"{_fmt(c[name]['median_cpu_ms'])} / {_fmt(c['ideal_cpu_ms'])} = "
                f"{_fmt(c[name]['median_cpu_ms'] / c['ideal_cpu_ms'], 2)} | "
                f"{_fmt(c[name]['gflops_stored_tiles'])} | {_fmt(ceiling, 0)} | "
                f"{_fmt(c['sdpa_dense']['loadavg_1min'][0])} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
