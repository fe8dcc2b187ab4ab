"""Model-level suite, decoder part: a Hugging Face checkpoint's prefill (default Gemma 3 270M).

One prefill = one forward of ``input_ids [1, S]`` (random ids, seeded) with an all-ones
``attention_mask``, returning the logits of the last position (``logits="last"``, the
default: ``[1, 1, vocab]``, what a generation's prefill needs; our exports are made with
``logits="last"`` and Hugging Face's forward is called with ``logits_to_keep=1``) or of every
position (``logits="all"``: ``[1, S, vocab]`` float32, at Gemma's 262,144-token vocabulary
1 GiB per 1,024 tokens, the same in every implementation). Implementations (:data:`IMPLS`):

* ``ours_ort``: our ONNX export (``sparse_attn.models.export_onnx``, the config's per-layer
  patterns) in ONNX Runtime.
* ``dense_ort``: the same export with ``dense()`` on every layer (causal kept), i.e. the same
  graph with a dense layout, in ONNX Runtime.
* ``ours_torch``: the unmodified transformers model with our registered attention running
  the block-sparse op (``sparse_attn.models.build_model``; torch backend, compiled CPU kernel).
* ``hf_eager``, ``hf_sdpa``, ``hf_flex``: the unmodified model with transformers'
  ``eager``, ``sdpa`` and ``flex_attention`` implementations. ``flex_attention`` compiles on
  its first call: that call is untimed and reported as ``compile_s``.
* ``ours_torch_compiled``, ``hf_sdpa_compiled``: ``ours_torch`` and ``hf_sdpa`` with the
  whole model under ``torch.compile(dynamic=False)`` (Inductor fuses the norms and
  element-wise ops around the attention; our op stays one opaque call). The compiling first
  call is untimed and reported as ``compile_s``, as for flex.

Every cell runs in a fresh subprocess (``python -m sparse_attn.bench.gemma worker ...``), so
its peak memory is the process' ``VmHWM`` (peak resident set, MiB: weights, activations and
logits included) and no allocator cache leaks between cells. Exports also run in a
subprocess and are cached in the models folder, keyed by S, layout and export-code hash.
Wall time is the median of ``repeats`` timed calls after ``warmup`` untimed ones; CPU time
(``time.process_time``, all threads) is reported with it, since on a shared machine it is the
steadier figure. A cell whose estimated memory exceeds ``max_gib`` (or what the machine has
available) or that overruns ``timeout_s`` is ``n/a`` with the reason, not a failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

IMPLS = (
    "ours_ort",
    "ours_torch",
    "ours_torch_compiled",
    "dense_ort",
    "hf_eager",
    "hf_sdpa",
    "hf_sdpa_compiled",
    "hf_flex",
)
#: Implementations whose first call compiles (untimed; ``compile_s`` = first call - median).
COMPILING = frozenset({"hf_flex", "ours_torch_compiled", "hf_sdpa_compiled"})
LABELS = {
    "ours_ort": "ours, ONNX Runtime (sparse export)",
    "ours_torch": "ours, PyTorch (HF + registered op)",
    "dense_ort": "dense export, ONNX Runtime",
    "hf_eager": "Hugging Face eager",
    "hf_sdpa": "Hugging Face sdpa",
    "hf_flex": "Hugging Face flex_attention",
    "ours_torch_compiled": "ours, PyTorch, torch.compile",
    "hf_sdpa_compiled": "Hugging Face sdpa, torch.compile",
}
HF_ATTN = {
    "hf_eager": "eager",
    "hf_sdpa": "sdpa",
    "hf_sdpa_compiled": "sdpa",
    "hf_flex": "flex_attention",
}
DEFAULT_LENGTHS = (2048, 8192, 32768)
QUICK_LENGTHS = (512,)
_RESULT_TAG = "GEMMA_BENCH_RESULT "


# ---------------------------------------------------------------------------- estimates
def _config_sizes(model_dir: Path) -> dict:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    weights = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))
    return {
        "vocab": int(cfg.get("vocab_size", 32000)),
        "hidden": int(cfg.get("hidden_size", 1024)),
        "heads": int(cfg.get("num_attention_heads", 8)),
        "layers": int(cfg.get("num_hidden_layers", 1)),
        "inter": int(cfg.get("intermediate_size", 4096)),
        "weights_bytes": weights,
    }


def estimate_gib(impl: str, seq_len: int, sizes: dict, logits: str = "last") -> float:
    """Rough peak memory of one cell in GiB (weights twice for ONNX Runtime, full logits, the
    widest activation, and for eager attention the ``H x S x S`` scores of one layer; the
    dense export runs the op's chunked body, whose working set does not grow with S^2)."""
    s = seq_len
    b = sizes["weights_bytes"] * (2 if impl.endswith("_ort") else 1)
    if logits == "all":
        b += 2 * 4 * s * sizes["vocab"]  # logits (+ one copy on the way out)
    b += 4 * 4 * s * max(sizes["inter"], sizes["hidden"])
    if impl == "hf_eager":
        b += 3 * 4 * sizes["heads"] * s * s
    return b / 2**30


# ---------------------------------------------------------------------------- worker
def _feeds(seq_len: int, vocab: int):
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(3, max(4, vocab), size=(1, seq_len), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones((1, seq_len), np.int64)}


def _worker(args) -> dict:
    """Load, warm up and time one implementation; returns the cell fields."""
    import torch

    from sparse_attn.bench.harness import status_mib

    torch.set_num_threads(args.threads)
    vocab = _config_sizes(Path(args.model))["vocab"]
    feeds = _feeds(args.seq_len, vocab)
    t0 = time.perf_counter()
    if args.impl.endswith("_ort"):
        from sparse_attn.bench.impls import _ort_session

        sess = _ort_session(Path(args.onnx), args.threads)
        names = {i.name for i in sess.get_inputs()}
        feeds = {k: v for k, v in feeds.items() if k in names}
        out0 = sess.get_outputs()[0].name

        def fn():
            return sess.run([out0], feeds)
    else:
        from sparse_attn.models import checkpoint as ckpt

        if args.impl.startswith("ours_torch"):
            from sparse_attn.models import build_model

            model = build_model(
                args.model, max_seq_len=args.seq_len, warn=False, logits=args.logits
            )
        else:
            path = ckpt.resolve(args.model)
            config = ckpt.load_config(path)
            config._attn_implementation = HF_ATTN[args.impl]
            model = ckpt.load_model(path, config)
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation(HF_ATTN[args.impl])
        model.eval()
        if args.impl.endswith("_compiled"):
            model = torch.compile(model, dynamic=False)
        tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
        if args.logits == "last" and not args.impl.startswith("ours_torch"):
            tfeeds["logits_to_keep"] = 1  # batch 1, no padding: the last real token

        def fn():
            with torch.no_grad():
                return model(**tfeeds)

    load_s = time.perf_counter() - t0
    loaded_rss = status_mib("VmRSS")
    first_ms = None
    warmup = max(args.warmup, 1 if args.impl in COMPILING else 0)
    for i in range(warmup):
        t1 = time.perf_counter()
        fn()
        if i == 0:
            first_ms = (time.perf_counter() - t1) * 1e3
    times, cpu = [], []
    for _ in range(args.repeats):
        c0 = time.process_time()
        t1 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t1) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    med = statistics.median(times)
    return {
        "median_ms": med,
        "q1_ms": min(times) if len(times) < 4 else statistics.quantiles(times, n=4)[0],
        "q3_ms": max(times) if len(times) < 4 else statistics.quantiles(times, n=4)[2],
        "min_ms": min(times),
        "max_ms": max(times),
        "repeats": len(times),
        "warmup": warmup,
        "times_ms": [round(t, 2) for t in times],
        "cpu_median_ms": statistics.median(cpu),
        "first_call_ms": first_ms,
        "compile_s": (first_ms - med) / 1e3 if args.impl in COMPILING and first_ms else None,
        "load_s": load_s,
        "loaded_rss_mib": loaded_rss,
        "peak_mem_mib": status_mib("VmHWM"),
    }


def _export(args) -> None:
    from sparse_attn.models import export_onnx

    pattern, layers = ("dense()", "all") if args.dense else (None, None)
    export_onnx(
        args.onnx,
        model_dir=args.model,
        pattern=pattern,
        layers=layers,
        max_seq_len=args.seq_len,
        verbose=False,
        logits=args.logits,
    )


# ---------------------------------------------------------------------------- parent
def _code_hash() -> str:
    from sparse_attn.bench.impls import _export_code_hash

    h = hashlib.sha256(_export_code_hash("hf").encode())
    pkg = Path(__file__).resolve().parents[1] / "models"
    for f in sorted(pkg.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:10]


def _run_sub(argv: list[str], timeout_s: float, threads: int) -> tuple[int | None, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    try:
        p = subprocess.run(
            [sys.executable, "-m", "sparse_attn.bench.gemma", *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return None, ""
    return p.returncode, p.stdout + p.stderr


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(lines[-1].split())[:300] if lines else ""


def run_gemma_suite(
    *,
    workdir: Path,
    model: str = "gemma3-270m",
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    impls: Sequence[str] = IMPLS,
    repeats: int = 3,
    large_s: int = 8192,
    warmup: int = 1,
    threads: int = 2,
    max_gib: float | None = None,
    timeout_s: float = 900.0,
    export_timeout_s: float = 1800.0,
    log: Callable[[str], None] = print,
    logits: str = "last",
) -> list[dict]:
    """Prefill cells of ``model`` for each S and implementation (module docstring).

    Args:
        workdir: cache of exported ONNX files. model: checkpoint directory or built-in name.
        lengths: prefill lengths S (tokens). impls: subset of :data:`IMPLS`.
        repeats: timed calls per cell at S < ``large_s``; 1 at S >= ``large_s``.
        warmup: untimed calls before the timed ones (at most 1 at S >= ``large_s``; the
            :data:`COMPILING` implementations always get one, their compile call). Its first call is reported as
            ``first_call_ms``.
        threads: torch / ONNX Runtime intra-op threads. max_gib: cells estimated above this
            are n/a (default: 90 % of ``MemAvailable``). timeout_s / export_timeout_s: time
            budget of a cell / of one export, in seconds (exceeded: n/a).
        logits: ``"last"`` (the last position's logits, as a prefill for generation) or
            ``"all"`` (every position's).

    Returns:
        Cells (``suite="model"``, ``model``, ``impl``, ``variant``, ``seq_len``,
        ``status``, ``reason`` and the timing fields of :func:`_worker`).
    """
    from sparse_attn.bench.harness import mem_available_bytes
    from sparse_attn.models import checkpoint as ckpt

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cells: list[dict] = []
    try:
        model_dir = ckpt.resolve(model)
        sizes = _config_sizes(model_dir)
    except Exception as exc:  # noqa: BLE001 - a missing checkpoint makes every cell n/a
        reason = f"checkpoint {model!r} unavailable: {' '.join(str(exc).split())[:200]}"
        for s in lengths:
            for impl in impls:
                cells.append(_na(model, impl, s, reason, logits))
        log(f"[model] {model}: n/a ({reason})")
        return cells
    if max_gib is None:
        max_gib = 0.9 * (mem_available_bytes() or 8 * 2**30) / 2**30
    name = Path(model).name if model not in ckpt.BUILTIN else model
    code = _code_hash()
    for s in lengths:
        onnx_paths: dict[str, Path | str] = {}
        for impl in impls:
            est = estimate_gib(impl, s, sizes, logits)
            cell = _na(model, impl, s, None, logits)
            cell["est_gib"] = round(est, 2)
            if est > max_gib:
                cell["reason"] = f"estimated {est:.1f} GiB > {max_gib:.1f} GiB budget"
            elif impl.endswith("_ort"):
                tag = "dense" if impl == "dense_ort" else "sparse"
                if tag not in onnx_paths:
                    onnx_paths[tag] = _ensure_export(
                        workdir / f"{name}_{tag}_logits-{logits}_S{s}_{code}.onnx",
                        model_dir,
                        s,
                        tag == "dense",
                        export_timeout_s,
                        threads,
                        log,
                        logits,
                    )
                got = onnx_paths[tag]
                if isinstance(got, str):
                    cell["reason"] = got
            if cell["reason"] is None:
                big = s >= large_s
                argv = [
                    "worker",
                    "--impl",
                    impl,
                    "--model",
                    str(model_dir),
                    "--seq-len",
                    str(s),
                    "--repeats",
                    str(1 if big else repeats),
                    "--warmup",
                    str(min(warmup, 1) if big else warmup),
                    "--threads",
                    str(threads),
                    "--logits",
                    logits,
                ]
                if impl.endswith("_ort"):
                    argv += [
                        "--onnx",
                        str(onnx_paths["dense" if impl == "dense_ort" else "sparse"]),
                    ]
                t0 = time.perf_counter()
                rc, out = _run_sub(argv, timeout_s, threads)
                cell["cell_wall_s"] = time.perf_counter() - t0
                if rc is None:
                    cell["reason"] = f"over the {timeout_s:.0f} s time budget"
                else:
                    res = [ln for ln in out.splitlines() if ln.startswith(_RESULT_TAG)]
                    if rc == 0 and res:
                        cell.update(json.loads(res[-1][len(_RESULT_TAG) :]))
                        cell["status"] = "ok"
                    else:
                        cell["reason"] = f"error (exit {rc}): {_last_line(out)}"
            cells.append(cell)
            if cell["status"] == "ok":
                extra = f", compile {cell['compile_s']:.1f} s" if cell.get("compile_s") else ""
                log(
                    f"[model] {model} {impl:<10} S={s}: {cell['median_ms']:.0f} ms "
                    f"(CPU {cell['cpu_median_ms']:.0f} ms) x{cell['repeats']}, "
                    f"peak {cell['peak_mem_mib']:.0f} MiB{extra}"
                )
            else:
                log(f"[model] {model} {impl:<10} S={s}: n/a ({cell['reason']})")
    for c in cells:
        ref = next(
            (
                d
                for d in cells
                if d["seq_len"] == c["seq_len"] and d["impl"] == "hf_sdpa" and d["status"] == "ok"
            ),
            None,
        )
        dense = next(
            (
                d
                for d in cells
                if d["seq_len"] == c["seq_len"] and d["impl"] == "dense_ort" and d["status"] == "ok"
            ),
            None,
        )
        if c["status"] == "ok" and ref is not None:
            c["speedup_vs_hf_sdpa"] = ref["median_ms"] / c["median_ms"]
        if c["status"] == "ok" and dense is not None:
            c["speedup_vs_dense"] = dense["median_ms"] / c["median_ms"]
    return cells


def _na(model: str, impl: str, s: int, reason: str | None, logits: str = "last") -> dict:
    return {
        "suite": "model",
        "model": model,
        "impl": impl,
        "variant": LABELS.get(impl, impl),
        "seq_len": s,
        "logits": logits,
        "status": "n/a",
        "reason": reason,
    }


def _ensure_export(path, model_dir, s, dense, timeout_s, threads, log, logits) -> Path | str:
    """The cached export at ``path`` (made in a subprocess when missing), or the n/a reason."""
    if path.exists():
        return path
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.onnx")
    argv = ["export", "--model", str(model_dir), "--seq-len", str(s), "--onnx", str(tmp)]
    argv += ["--logits", logits]
    if dense:
        argv.append("--dense")
    log(f"[model] exporting {path.name} ...")
    t0 = time.perf_counter()
    try:
        rc, out = _run_sub(argv, timeout_s, threads)
        if rc is None:
            return f"export over the {timeout_s:.0f} s time budget"
        if rc != 0 or not tmp.exists():
            return f"export failed (exit {rc}): {_last_line(out)}"
        os.replace(tmp, path)
    finally:
        for f in tmp.parent.glob(tmp.name + "*"):
            f.unlink(missing_ok=True)
    log(f"[model] exported {path.name} in {time.perf_counter() - t0:.0f} s")
    return path


def markdown(cells: Sequence[dict]) -> str:
    """Markdown table of the prefill cells (wall and CPU time, peak memory, ratios)."""
    if not cells:
        return ""
    out = [
        "| model | implementation | S | wall ms (median) | CPU ms | n | x HF sdpa | "
        "x dense export | peak MiB | compile s |",
        "|---" * 10 + "|",
    ]
    f = lambda v, d=0: "" if v is None else f"{v:.{d}f}"  # noqa: E731
    for c in cells:
        if c["status"] != "ok":
            out.append(
                f"| {c['model']} | {c['variant']} | {c['seq_len']} | n/a ({c['reason']}) |"
                + " |" * 6
            )
            continue
        out.append(
            f"| {c['model']} | {c['variant']} | {c['seq_len']} | {f(c['median_ms'])} "
            f"| {f(c['cpu_median_ms'])} | {c['repeats']} | {f(c.get('speedup_vs_hf_sdpa'), 2)} "
            f"| {f(c.get('speedup_vs_dense'), 2)} | {f(c['peak_mem_mib'])} "
            f"| {f(c.get('compile_s'), 1)} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    from sparse_attn.models.family import LOGITS_MODES

    p = argparse.ArgumentParser(prog="python -m sparse_attn.bench.gemma")
    p.add_argument("mode", choices=("worker", "export"))
    p.add_argument("--impl", choices=IMPLS)
    p.add_argument("--model", required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--onnx")
    p.add_argument("--dense", action="store_true")
    p.add_argument("--logits", choices=LOGITS_MODES, default="last")
    args = p.parse_args(argv)
    if args.mode == "export":
        _export(args)
        return 0
    print(_RESULT_TAG + json.dumps(_worker(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
