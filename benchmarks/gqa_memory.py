#!/usr/bin/env python
"""Peak memory of the ``torch`` backend with grouped K/V, against repeating K/V per head.

Each measurement runs in a fresh process: inputs ``query [1, H, S, D]``, ``key/value
[1, Hkv, S, D]`` and the layout are built first, then the process's peak RSS growth
(``ru_maxrss``) over one call is recorded. ``grouped`` calls the backend with the Hkv heads
as they are; ``repeated`` first expands K/V to H heads (``repeat_interleave``, what a model
would have to do without grouped-query support) and counts that copy too. Both CPU paths of
the backend are measured (``pure``: ``SPARSE_ATTN_DISABLE_CPU_EXT=1``; ``cpu_ext``: the
compiled kernel, when it takes the inputs).

Usage::

    python benchmarks/gqa_memory.py [--seq-len 8192] [--heads 8] [--kv-heads 1]
                                    [--head-dim 128] [--out DIR]

Prints a table and, with ``--out``, writes ``gqa_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _child(args) -> dict:
    import resource

    import torch

    import sparse_attn
    from sparse_attn.kernels import block_sparse_attention, torch_backend

    torch.manual_seed(0)
    h, hkv, s, d = args.heads, args.kv_heads, args.seq_len, args.head_dim
    q = torch.randn(1, h, s, d)
    k = torch.randn(1, hkv, s, d)
    v = torch.randn(1, hkv, s, d)
    layout = sparse_attn.compile_layout(
        args.pattern, seq_len=s, block_size=args.block_size, num_heads=h
    )
    torch_backend.plan(layout, seq_len=s, num_heads=h, num_kv_heads=hkv)  # plan outside
    torch_backend.plan(layout, seq_len=s, num_heads=h, num_kv_heads=h)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.mode == "repeated":
        k = k.repeat_interleave(h // hkv, dim=1)
        v = v.repeat_interleave(h // hkv, dim=1)
    out = block_sparse_attention(q, k, v, layout, backend="torch")
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": args.mode,
        "path": "cpu_ext" if torch_backend.cpu_ext_active() else "pure",
        "peak_growth_mib": (rss1 - rss0) / 1024,
        "output_mib": out.numel() * out.element_size() / 2**20,
        "kv_mib": 2 * k.numel() * k.element_size() / 2**20,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=1)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--pattern", default="band(w=256) | global(n=64)")
    p.add_argument("--out", default=None)
    p.add_argument("--child", choices=("grouped", "repeated"), default=None, dest="mode")
    args = p.parse_args(argv)
    if args.mode:
        print(json.dumps(_child(args)))
        return 0
    rows = []
    for path in ("pure", "cpu_ext"):
        for mode in ("grouped", "repeated"):
            env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
            env.pop("SPARSE_ATTN_DISABLE_CPU_EXT", None)
            if path == "pure":
                env["SPARSE_ATTN_DISABLE_CPU_EXT"] = "1"
            cmd = [sys.executable, __file__, "--child", mode]
            cmd += ["--seq-len", str(args.seq_len), "--heads", str(args.heads)]
            cmd += ["--kv-heads", str(args.kv_heads), "--head-dim", str(args.head_dim)]
            cmd += ["--block-size", str(args.block_size), "--pattern", args.pattern]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if res.returncode:
                print(res.stderr[-2000:], file=sys.stderr)
                return 1
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["requested_path"] = path
            rows.append(row)
    print(
        f"S={args.seq_len} H={args.heads} Hkv={args.kv_heads} D={args.head_dim} fp32, "
        f"{args.pattern}, block {args.block_size}; peak RSS growth over one call"
    )
    print(f"{'path':8} {'mode':9} {'K+V MiB':>8} {'output MiB':>10} {'peak growth MiB':>16}")
    for r in rows:
        print(
            f"{r['path']:8} {r['mode']:9} {r['kv_mib']:8.1f} {r['output_mib']:10.1f} "
            f"{r['peak_growth_mib']:16.1f}"
        )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gqa_memory.json").write_text(
            json.dumps({"config": vars(args), "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
