"""ONNX Runtime (CPU): the exported block-sparse op vs a dense MatMul-Softmax-MatMul graph.

Issue 3 target: at S=4096, H=8, D=64, ``band(w=256) | global(n=64)``, block 64, the sparse op
is at least 3x faster than dense. Both models run in the same process with the same session
options; runs are interleaved (sparse, dense, sparse, ...) so that load from other processes
hits both alike. Prints a table and writes JSON.

    .venv/bin/python benchmarks/onnx_attention.py --json artifacts/bench/onnx_attention.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def dense_model(heads: int, head_dim: int, scale: float, opset: int = 20) -> onnx.ModelProto:
    """Plain dense attention ``softmax(Q K^T * scale) V`` (no mask), the baseline."""
    et = TensorProto.FLOAT
    nodes = [
        helper.make_node("Transpose", ["key"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["query", "kt"], ["s0"]),
        helper.make_node("Mul", ["s0", "scale"], ["s1"]),
        helper.make_node("Softmax", ["s1"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "value"], ["output"]),
    ]
    dims = ["batch", heads, "seq_len", head_dim]
    graph = helper.make_graph(
        nodes,
        "dense_attention",
        [helper.make_tensor_value_info(n, et, dims) for n in ("query", "key", "value")],
        [helper.make_tensor_value_info("output", et, dims)],
        initializer=[numpy_helper.from_array(np.array(scale, np.float32), "scale")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pattern", default="band(w=256) | global(n=64)")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    ap.add_argument("--key-padding-mask", action="store_true", help="sparse model takes a mask")
    ap.add_argument(
        "--no-spin",
        action="store_true",
        help="disable ORT thread-pool spinning (both graphs; helps on a loaded machine)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from sparse_attn import opspec
    from sparse_attn.export.function_body import make_node_model, plan_buckets
    from sparse_attn.layout import compile_layout

    layout = compile_layout(args.pattern, args.seq_len, args.block_size, num_heads=args.heads)
    scale = opspec.default_scale(args.head_dim)
    sparse = make_node_model(
        layout, head_dim=args.head_dim, key_padding_mask=args.key_padding_mask, scale=scale
    )
    dense = dense_model(args.heads, args.head_dim, scale)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    if args.no_spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    t0 = time.perf_counter()
    s_sess = ort.InferenceSession(
        sparse.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    init_s = time.perf_counter() - t0
    d_sess = ort.InferenceSession(dense.SerializeToString(), so, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    shape = (args.batch, args.heads, args.seq_len, args.head_dim)
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    feeds = {"query": q, "key": k, "value": v}
    s_feeds = dict(feeds)
    if args.key_padding_mask:
        s_feeds["key_padding_mask"] = np.ones((args.batch, args.seq_len), dtype=bool)
    s_out = s_sess.run(None, s_feeds)[0]  # warm-up (and constant folding)
    d_sess.run(None, feeds)
    times = {"sparse": [], "dense": []}
    cpu = {"sparse": [], "dense": []}  # process CPU time: robust to other jobs' load
    for _ in range(args.repeat):
        for name, sess, f in (("sparse", s_sess, s_feeds), ("dense", d_sess, feeds)):
            c, t = time.process_time(), time.perf_counter()
            sess.run(None, f)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)

    # correctness spot check: a few query rows of head 0 against float64 dense masked math
    rows = np.linspace(0, args.seq_len - 1, 5).astype(int)
    tm = layout.token_mask()[0]
    q64, k64, v64 = (x[0, 0].astype(np.float64) for x in (q, k, v))
    sc = q64[rows] @ k64.T * scale
    sc = np.where(tm[rows], sc, -np.inf)
    p = np.exp(sc - sc.max(-1, keepdims=True))
    expect = (p / p.sum(-1, keepdims=True)) @ v64
    max_err = float(np.abs(s_out[0, 0, rows] - expect).max())

    buckets = plan_buckets(layout)
    stored = int(layout.nnz.sum())
    computed = int(sum(b.cols.size for b in buckets))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    result = {
        "pattern": layout.spec,
        "seq_len": args.seq_len,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "block_size": args.block_size,
        "batch": args.batch,
        "threads": args.threads,
        "spinning": not args.no_spin,
        "repeat": args.repeat,
        "onnxruntime": ort.__version__,
        "density_blocks": layout.stats()["density_blocks"],
        "stored_tiles": stored,
        "computed_tiles": computed,
        "buckets": [[b.width, len(b.rows)] for b in buckets],
        "sparse_ms_median": med["sparse"] * 1e3,
        "dense_ms_median": med["dense"] * 1e3,
        "sparse_ms_min": best["sparse"] * 1e3,
        "dense_ms_min": best["dense"] * 1e3,
        "speedup_median": med["dense"] / med["sparse"],
        "speedup_min": best["dense"] / best["sparse"],
        "sparse_cpu_ms_median": statistics.median(cpu["sparse"]) * 1e3,
        "dense_cpu_ms_median": statistics.median(cpu["dense"]) * 1e3,
        "speedup_cpu_time": statistics.median(cpu["dense"]) / statistics.median(cpu["sparse"]),
        "sparse_session_init_s": init_s,
        "spot_check_max_abs_err": max_err,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    print(
        f"ONNX Runtime CPU, {args.pattern!r}, S={args.seq_len}, H={args.heads}, "
        f"D={args.head_dim}, block {args.block_size}, batch {args.batch}, {args.threads} threads"
    )
    print(
        f"  sparse op (function body): median {result['sparse_ms_median']:8.1f} ms   "
        f"min {result['sparse_ms_min']:8.1f} ms"
    )
    print(
        f"  dense MatMul-Softmax-MatMul: median {result['dense_ms_median']:6.1f} ms   "
        f"min {result['dense_ms_min']:8.1f} ms"
    )
    print(
        f"  speedup: {result['speedup_median']:.2f}x (median), {result['speedup_min']:.2f}x (min);"
        f" tiles computed {computed} / stored {stored}; spot-check err {max_err:.1e}"
    )
    print(
        f"  CPU time (all threads, spinning included): sparse {result['sparse_cpu_ms_median']:.1f} ms, "
        f"dense {result['dense_cpu_ms_median']:.1f} ms: {result['speedup_cpu_time']:.2f}x"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
