"""Benchmark: the block-sparse ``torch`` backend against dense SDPA on CPU.

Default case : S = 8192, H = 8, D = 64, B = 1, float32,
``band(w=256) | global(n=64)``, block 64. Methods:

* ``sdpa_dense``: ``torch.nn.functional.scaled_dot_product_attention`` without a mask
  (the dense baseline the sparse kernel must beat);
* ``sdpa_masked``: SDPA with the boolean token mask ``[S, S]`` (same result as ours);
* ``torch_pure``: our ``torch`` backend, pure PyTorch path (``SPARSE_ATTN_DISABLE_CPU_EXT=1``);
* ``torch_cpu_ext``: our ``torch`` backend through the compiled CPU kernel, when available.

Each method runs in a fresh subprocess; time is the median of ``--repeat`` runs after one
warm-up (the minimum is printed too: the machine may be shared); peak memory is the growth of the process's peak RSS (``ru_maxrss``) over the
baseline taken after the inputs and the layout exist (so it is the extra memory the method
needs). Prints a table and writes JSON (``--out``).

    .venv/bin/python benchmarks/torch_backend.py [--seq-len 8192] [--out artifacts/bench/torch_backend.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from pathlib import Path

METHODS = ("sdpa_dense", "sdpa_masked", "torch_pure", "torch_cpu_ext")


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _run_one(cfg: dict, method: str, queue) -> None:
    if method == "torch_pure":
        os.environ["SPARSE_ATTN_DISABLE_CPU_EXT"] = "1"
    import torch

    torch.set_num_threads(cfg["threads"])
    from sparse_attn.kernels import block_sparse_attention, torch_backend
    from sparse_attn.layout import compile_layout

    s, h, d, b, bs = cfg["seq_len"], cfg["heads"], cfg["head_dim"], cfg["batch"], cfg["block"]
    dtype = getattr(torch, cfg["dtype"])
    layout = compile_layout(cfg["pattern"], seq_len=s, block_size=bs, num_heads=h)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, s, d, generator=g).to(dtype) for _ in range(3))
    if method == "torch_cpu_ext" and not torch_backend.cpu_ext_active():
        queue.put({"method": method, "skipped": "cpu_ext not available"})
        return
    mask = None
    if method == "sdpa_masked":
        one_head = compile_layout(cfg["pattern"], seq_len=s, block_size=bs, num_heads=1)
        mask = torch.from_numpy(one_head.token_mask(s)[0])  # [S, S], broadcast over heads

    def call():
        if method.startswith("sdpa"):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return block_sparse_attention(q, k, v, layout, backend="torch")

    with torch.inference_mode():
        base = _maxrss_mib()
        out = call()  # warm-up (plans, extension load)
        times = []
        for _ in range(cfg["repeat"]):
            t0 = time.perf_counter()
            out = call()
            times.append(time.perf_counter() - t0)
        peak = _maxrss_mib() - base
    queue.put(
        {
            "method": method,
            "time_ms": 1000 * statistics.median(times),
            "min_ms": 1000 * min(times),
            "times_ms": [1000 * t for t in times],
            "peak_extra_mib": peak,
            "checksum": float(out.double().abs().sum()),
        }
    )


def run(cfg: dict, methods=METHODS) -> list[dict]:
    ctx = mp.get_context("spawn")
    rows = []
    for m in methods:
        queue = ctx.Queue()
        p = ctx.Process(target=_run_one, args=(cfg, m, queue))
        p.start()
        p.join()
        rows.append(queue.get() if not queue.empty() else {"method": m, "error": p.exitcode})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--pattern", default="band(w=256) | global(n=64)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", type=Path, default=Path("artifacts/bench/torch_backend.json"))
    a = ap.parse_args(argv)
    cfg = {
        "seq_len": a.seq_len,
        "heads": a.heads,
        "head_dim": a.head_dim,
        "batch": a.batch,
        "block": a.block,
        "dtype": a.dtype,
        "pattern": a.pattern,
        "repeat": a.repeat,
        "threads": a.threads,
    }
    from sparse_attn.layout import compile_layout

    st = compile_layout(a.pattern, seq_len=a.seq_len, block_size=a.block, num_heads=a.heads).stats()
    rows = run(cfg, [m for m in a.methods.split(",") if m])
    dense = next((r for r in rows if r["method"] == "sdpa_dense" and "time_ms" in r), None)
    print(
        f"S={a.seq_len} H={a.heads} D={a.head_dim} B={a.batch} {a.dtype} block={a.block} "
        f"pattern={a.pattern!r} density_tokens={st['density_tokens']:.4f} "
        f"density_blocks={st['density_blocks']:.4f} threads={a.threads}"
    )
    print(f"{'method':<16}{'time ms':>10}{'min ms':>10}{'vs dense':>10}{'peak extra MiB':>16}")
    for r in rows:
        if "time_ms" not in r:
            print(
                f"{r['method']:<16}{'-':>10}{'-':>10}{'-':>16}  {r.get('skipped', r.get('error'))}"
            )
            continue
        speed = f"{dense['time_ms'] / r['time_ms']:.2f}x" if dense else "-"
        print(
            f"{r['method']:<16}{r['time_ms']:>10.1f}{r['min_ms']:>10.1f}{speed:>10}"
            f"{r['peak_extra_mib']:>16.1f}"
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    a.out.write_text(
        json.dumps(
            {
                "config": cfg,
                "layout_stats": st,
                "results": rows,
                "torch_version": torch.__version__,
                "machine": platform.machine(),
                "cpu_count": os.cpu_count(),
            },
            indent=2,
        )
    )
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
