"""ONNX Runtime (CPU): the exported block-sparse op vs a dense MatMul-Softmax-MatMul graph.

Two measurements, printed as tables and written as one JSON file:

* **time**: the sparse op's function body and the dense graph run in one process with the
  same session options, interleaved (sparse, dense, sparse, ...) so that load from other
  processes hits both alike, or with ``--order blocks`` each graph's runs together after a
  pause (on a quiet machine with ONNX Runtime's default thread spinning, the session that
  ran last keeps spinning into the other's run when interleaved); medians of wall and
  process CPU time. Default case:
  ``band(w=256) | global(n=64)``, S = 4096, H = 8, D = 64, block 64.
* **memory**: each model runs twice in a fresh subprocess; the process's peak resident
  set (``VmHWM``) is recorded together with the resident set
  just before the first run (interpreter, onnxruntime, session, inputs). Default case:
  causal ``band(w=1024)``, H = 8, D = 64, S = 2k..16k. The dense graph is skipped above
  ``--dense-max-seq-len`` (its scores alone are ``H * S^2 * 4`` bytes).

    .venv/bin/python benchmarks/onnx_attention.py --json artifacts/bench/onnx_attention.json
    .venv/bin/python benchmarks/onnx_attention.py --suite time --num-kv-heads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def dense_model(
    heads: int, head_dim: int, scale: float, opset: int = 20, causal: bool = False
) -> onnx.ModelProto:
    """Plain dense attention ``softmax(Q K^T * scale) V``, the baseline (no mask, or a
    causal ``-inf`` bias built from the sequence length when ``causal``)."""
    et = TensorProto.FLOAT
    nodes = [
        helper.make_node("Transpose", ["key"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["query", "kt"], ["s0"]),
        helper.make_node("Mul", ["s0", "scale"], ["s1"]),
    ]
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "scale")]
    last = "s1"
    if causal:
        nodes += [
            helper.make_node("Shape", ["query"], ["sq"], start=2, end=3),
            helper.make_node(
                "ConstantOfShape",
                ["sq2"],
                ["ones"],
                value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
            ),
            helper.make_node("Concat", ["sq", "sq"], ["sq2"], axis=0),
            helper.make_node("Trilu", ["ones"], ["tri"], upper=0),
            helper.make_node("Equal", ["tri", "zero"], ["hidden"]),
            helper.make_node("Where", ["hidden", "ninf", "s1"], ["s2"]),
        ]
        inits += [
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(-np.inf, np.float32), "ninf"),
        ]
        last = "s2"
    nodes += [
        helper.make_node("Softmax", [last], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "value"], ["output"]),
    ]
    dims = ["batch", heads, "seq_len", head_dim]
    graph = helper.make_graph(
        _toposort(nodes),
        "dense_attention",
        [helper.make_tensor_value_info(n, et, dims) for n in ("query", "key", "value")],
        [helper.make_tensor_value_info("output", et, dims)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _toposort(nodes):
    """Nodes in an order where every input is produced before use."""
    done = {"query", "key", "value", "scale", "zero", "ninf"}
    out, rest = [], list(nodes)
    while rest:
        for n in rest:
            if all(i in done for i in n.input):
                out.append(n)
                done.update(n.output)
                rest.remove(n)
                break
        else:
            raise ValueError("cycle in dense graph")
    return out


def _sessions_options(threads: int, spin: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _models(case: dict):
    """(sparse model, dense model, layout) of one case."""
    from sparse_attn import opspec
    from sparse_attn.export.function_body import make_node_model
    from sparse_attn.layout import compile_layout

    layout = compile_layout(
        case["pattern"],
        case["seq_len"],
        case["block_size"],
        num_heads=case["heads"],
        causal=case["causal"],
    )
    scale = opspec.default_scale(case["head_dim"])
    sparse = make_node_model(
        layout,
        head_dim=case["head_dim"],
        key_padding_mask=case["key_padding_mask"],
        scale=scale,
        num_kv_heads=case["kv_heads"],
    )
    dense = dense_model(case["heads"], case["head_dim"], scale, causal=case["causal"])
    return sparse, dense, layout


def _feeds(case: dict, rng) -> tuple[dict, dict]:
    b, h, hkv, s, d = (case[k] for k in ("batch", "heads", "kv_heads", "seq_len", "head_dim"))
    q = rng.standard_normal((b, h, s, d)).astype(np.float32)
    k, v = (rng.standard_normal((b, hkv, s, d)).astype(np.float32) for _ in range(2))
    sparse = {"query": q, "key": k, "value": v}
    if case["key_padding_mask"]:
        sparse["key_padding_mask"] = np.ones((b, s), dtype=bool)
    rep = h // hkv  # the dense baseline takes K/V with H heads
    dense = {"query": q, "key": np.repeat(k, rep, axis=1), "value": np.repeat(v, rep, axis=1)}
    return sparse, dense


def _status_mib(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (Linux ``/proc``; NaN elsewhere).

    ``VmHWM`` (the peak resident set of this process image) is used rather than
    ``getrusage().ru_maxrss``, which Linux carries over ``execve`` from the forking parent.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def child_memory(case: dict, which: str) -> dict:
    """Run one model once after a warm-up in this process; report RSS figures (MiB)."""
    import onnxruntime as ort

    sparse, dense, _ = _models(case)
    model = (sparse if which == "sparse" else dense).SerializeToString()
    del sparse, dense
    sess = ort.InferenceSession(
        model, _sessions_options(case["threads"], True), providers=["CPUExecutionProvider"]
    )
    feeds = _feeds(case, np.random.default_rng(0))[0 if which == "sparse" else 1]
    before = _status_mib("VmRSS")
    t = time.perf_counter()
    sess.run(None, feeds)
    first = time.perf_counter() - t
    t = time.perf_counter()
    sess.run(None, feeds)
    second = time.perf_counter() - t
    peak = _status_mib("VmHWM")
    inputs = sum(x.nbytes for x in feeds.values()) / 2**20
    out = case["batch"] * case["heads"] * case["seq_len"] * case["head_dim"] * 4 / 2**20
    return {
        "model": which,
        "peak_rss_mib": peak,
        "rss_before_run_mib": before,
        "inputs_mib": inputs,
        "output_mib": out,
        "first_run_s": first,
        "second_run_s": second,
    }


def measure_memory(case: dict, which: str, timeout: float = 1800) -> dict:
    """:func:`child_memory` in a fresh interpreter (so that peaks do not mix)."""
    cmd = [sys.executable, __file__, "--child", json.dumps({"case": case, "which": which})]
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        return {"model": which, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_time(case: dict, repeat: int, spin: bool, order: str = "interleaved") -> dict:
    """Sparse/dense runs in this process, interleaved or in blocks: medians and minima (ms)."""
    import onnxruntime as ort

    from sparse_attn.export.function_body import plan_buckets

    sparse, dense, layout = _models(case)
    so = _sessions_options(case["threads"], spin)
    t0 = time.perf_counter()
    s_sess = ort.InferenceSession(
        sparse.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    init_s = time.perf_counter() - t0
    d_sess = ort.InferenceSession(dense.SerializeToString(), so, providers=["CPUExecutionProvider"])
    s_feeds, d_feeds = _feeds(case, np.random.default_rng(0))
    s_out = s_sess.run(None, s_feeds)[0]  # warm-up (and constant folding)
    d_out = d_sess.run(None, d_feeds)[0]
    wall = {"sparse": [], "dense": []}
    cpu = {"sparse": [], "dense": []}  # process CPU time: robust to other jobs' load
    graphs = (("sparse", s_sess, s_feeds), ("dense", d_sess, d_feeds))
    if order == "blocks":
        schedule = [g for g in graphs for _ in range(repeat)]
    else:
        schedule = [g for _ in range(repeat) for g in graphs]
    last = None
    for name, sess, f in schedule:
        if order == "blocks" and name != last:
            time.sleep(0.5)  # the other session's pool threads stop spinning
            sess.run(None, f)
            last = name
        c, t = time.process_time(), time.perf_counter()
        sess.run(None, f)
        wall[name].append((time.perf_counter() - t) * 1e3)
        cpu[name].append((time.process_time() - c) * 1e3)
    # spot check: head 0 against float64 dense masked math on a few query rows
    rows = np.linspace(0, case["seq_len"] - 1, 5).astype(int)
    tm = layout.token_mask()[0]
    q64, k64, v64 = (s_feeds[n][0, 0].astype(np.float64) for n in ("query", "key", "value"))
    sc = np.where(tm[rows], q64[rows] @ k64.T / np.sqrt(case["head_dim"]), -np.inf)
    p = np.exp(sc - sc.max(-1, keepdims=True))
    expect = (p / p.sum(-1, keepdims=True)) @ v64
    buckets = plan_buckets(layout, num_kv_heads=case["kv_heads"])
    med = {k: statistics.median(v) for k, v in wall.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "sparse_ms_median": med["sparse"],
        "dense_ms_median": med["dense"],
        "sparse_ms_min": min(wall["sparse"]),
        "dense_ms_min": min(wall["dense"]),
        "speedup_median": med["dense"] / med["sparse"],
        "sparse_cpu_ms_median": cmed["sparse"],
        "dense_cpu_ms_median": cmed["dense"],
        "speedup_cpu_time": cmed["dense"] / cmed["sparse"],
        "sparse_session_init_s": init_s,
        "density_blocks": layout.stats()["density_blocks"],
        "density_tokens": layout.stats()["density_tokens"],
        "stored_tiles": int(layout.nnz.sum()),
        # (query head, tile) pairs computed; a grouped unit counts once per query head
        "computed_tiles": int(sum(b.cols.size * b.heads_per_unit for b in buckets)),
        "buckets": [[b.width, len(b.rows), b.heads_per_unit] for b in buckets],
        "spot_check_max_abs_err": float(np.abs(s_out[0, 0, rows] - expect).max()),
        "dense_vs_sparse_max_abs_diff": float(np.abs(s_out - d_out).max())
        if case["pattern"].startswith("dense")
        else None,
    }


def _case(args, **over) -> dict:
    case = {
        "pattern": args.pattern,
        "causal": args.causal,
        "seq_len": args.seq_len,
        "heads": args.heads,
        "kv_heads": args.num_kv_heads or args.heads,
        "head_dim": args.head_dim,
        "block_size": args.block_size,
        "batch": args.batch,
        "threads": args.threads,
        "key_padding_mask": args.key_padding_mask,
    }
    case.update(over)
    return case


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=("time", "memory", "all"), default="all")
    ap.add_argument("--pattern", default="band(w=256) | global(n=64)", help="time suite")
    ap.add_argument("--causal", action="store_true", help="time suite: causal pattern")
    ap.add_argument("--seq-len", type=int, default=4096, help="time suite")
    ap.add_argument("--mem-pattern", default="band(w=1024)", help="memory suite (causal)")
    ap.add_argument(
        "--mem-seq-lens", default="2048,4096,8192,16384", help="memory suite, comma-separated"
    )
    ap.add_argument("--dense-max-seq-len", type=int, default=8192, help="memory suite")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--num-kv-heads", type=int, default=None, help="grouped K/V (default H)")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    ap.add_argument("--key-padding-mask", action="store_true", help="sparse model takes a mask")
    ap.add_argument(
        "--no-spin",
        action="store_true",
        help="time suite: disable ORT thread-pool spinning (both graphs; helps on a loaded host)",
    )
    ap.add_argument(
        "--order",
        choices=("interleaved", "blocks"),
        default="interleaved",
        help="time suite: alternate the graphs run by run (fair under load) or time each in "
        "one block after a pause (accurate on a quiet machine with spinning on)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child_memory(spec["case"], spec["which"])))
        return {}

    import onnxruntime as ort

    result = {
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "load_average_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
    }
    if args.suite in ("time", "all"):
        case = _case(args)
        timing = measure_time(case, args.repeat, not args.no_spin, args.order)
        result["time"] = {"case": case, "spinning": not args.no_spin, "order": args.order}
        result["time"].update(timing)
        print(
            f"ONNX Runtime {ort.__version__} CPU, {case['pattern']!r}"
            f"{' causal' if case['causal'] else ''}, S={case['seq_len']}, H={case['heads']}, "
            f"Hkv={case['kv_heads']}, D={case['head_dim']}, block {case['block_size']}, "
            f"batch {case['batch']}, {case['threads']} threads"
        )
        print("| graph | wall median (ms) | wall min (ms) | CPU time median (ms) |")
        print("|---|---|---|---|")
        for name in ("sparse", "dense"):
            print(
                f"| {name} | {timing[name + '_ms_median']:.1f} | {timing[name + '_ms_min']:.1f} "
                f"| {timing[name + '_cpu_ms_median']:.1f} |"
            )
        print(
            f"speedup {timing['speedup_median']:.2f}x wall, {timing['speedup_cpu_time']:.2f}x "
            f"CPU time; tiles computed {timing['computed_tiles']} / stored "
            f"{timing['stored_tiles']}; spot-check err {timing['spot_check_max_abs_err']:.1e}"
        )
    if args.suite in ("memory", "all"):
        rows = []
        print(
            f"\npeak process memory, causal {args.mem_pattern!r}, H={args.heads}, "
            f"D={args.head_dim}, block {args.block_size}, batch {args.batch} (MiB)"
        )
        print(
            "| S | inputs+output | sparse peak | sparse before run | dense peak | sparse 2nd run (s) |"
        )
        print("|---|---|---|---|---|---|")
        for s in (int(x) for x in args.mem_seq_lens.split(",") if x):
            case = _case(args, pattern=args.mem_pattern, causal=True, seq_len=s)
            sp = measure_memory(case, "sparse")
            de = (
                measure_memory(case, "dense")
                if s <= args.dense_max_seq_len
                else {"model": "dense", "skipped": f"S > {args.dense_max_seq_len}"}
            )
            rows.append({"case": case, "sparse": sp, "dense": de})
            io_mib = sp.get("inputs_mib", 0) + sp.get("output_mib", 0)
            print(
                f"| {s} | {io_mib:.0f} | {sp.get('peak_rss_mib', float('nan')):.0f} | "
                f"{sp.get('rss_before_run_mib', float('nan')):.0f} | "
                f"{de.get('peak_rss_mib', float('nan')):.0f} | "
                f"{sp.get('second_run_s', float('nan')):.2f} |"
            )
        result["memory"] = rows
    result["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(
        f"load average: {result['load_average_start']:.2f} at start, "
        f"{result['load_average_end']:.2f} at end ({result['cpu_count']} CPUs)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
