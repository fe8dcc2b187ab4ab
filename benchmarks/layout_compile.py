"""Layout compile time and peak memory for the presets.

Usage::

    python benchmarks/layout_compile.py [--seq-len 65536] [--block-size 64] [--num-heads 1]
                                        [--repeat 3] [--out DIR]

For every preset (and two composed specs) it compiles the layout ``--repeat`` times and
reports the best wall time, the peak memory traced by ``tracemalloc`` during one compile
(numpy buffers included), the growth of the process's max RSS, and the layout's size. Prints
a table and, with ``--out``, writes ``layout_compile.json`` there. The dense boolean mask it
avoids would take ``H * S^2`` bytes (4 GiB per head at S = 65,536).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys

from sparse_attn.bench.layout_suite import measure_compile as measure

SPECS = [
    "bigbird",
    "longformer",
    "sparse_transformer_strided",
    "sparse_transformer_fixed",
    "sliding_window",
    "local_vertical_stride",
    "band(w=256) | global(n=64)",
    "dilated(w=128, d=4) | random(r=3, seed=0) | causal",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=65536)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--num-heads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--spec", action="append", help="spec to measure (repeatable); default: presets"
    )
    ap.add_argument("--out", type=pathlib.Path, help="directory for layout_compile.json")
    args = ap.parse_args(argv)
    if min(args.seq_len, args.block_size, args.num_heads, args.repeat) < 1:
        ap.error("--seq-len, --block-size, --num-heads and --repeat must be >= 1")

    rows = [
        measure(s, args.seq_len, args.block_size, args.num_heads, args.repeat)
        for s in (args.spec or SPECS)
    ]
    head = (
        f"{'spec':52s} {'best s':>7s} {'peak MiB':>9s} {'rss+ MiB':>9s} {'layout MiB':>10s} "
        f"{'blocks':>8s} {'partial':>8s} {'masks':>5s} {'dens tok':>9s}"
    )
    print(
        f"S={args.seq_len} block={args.block_size} H={args.num_heads} "
        f"(dense mask would be {rows[0]['dense_mask_mib']:.0f} MiB)"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['spec'][:52]:52s} {r['compile_s_best']:7.3f} {r['peak_traced_mib']:9.1f} "
            f"{r['max_rss_growth_mib']:9.1f} {r['layout_mib']:10.2f} {r['nnz_blocks']:8d} "
            f"{r['partial_blocks']:8d} {r['num_masks']:5d} {r['density_tokens']:9.5f}"
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        import numpy

        doc = {
            "benchmark": "layout_compile",
            "python": sys.version.split()[0],
            "numpy": numpy.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
            "results": rows,
        }
        path = args.out / "layout_compile.json"
        path.write_text(json.dumps(doc, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
