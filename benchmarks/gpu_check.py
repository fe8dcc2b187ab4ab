#!/usr/bin/env python
"""GPU check of the Triton block-sparse kernel (``make gpu-check``): correctness, then speed.

Needs only a CUDA GPU with PyTorch and Triton (no TensorRT, nothing installed: the repository
root is put on ``sys.path``). Budget: under 8 minutes on one H100/H200-class GPU.

1. Correctness: ``block_sparse_attention(..., backend="triton")`` against the float64 dense
   reference over a grid of fp16/bf16 cases (ragged S, S < layout length, key padding with
   NaN/Inf behind it, causal and per-head patterns, empty rows, head dims 32..256 incl. 80,
   grouped-query K/V with H/Hkv = 2, 4, 8 (Hkv = 1 included), block sizes 16..128, fp16
   near overflow), with the project's comparator and "op" tolerances. The grouped-K/V and
   wide-head cases also run on the ``torch`` backend on the GPU. A case a backend declares
   it cannot take is reported as unsupported with the backend's reasons, not as a failure.
2. Speed at S = 4k..32k (B=1, H=16, D=64, fp16, ``band(w=256) | global(n=64)``, block 64):
   the Triton kernel (``triton_ms``: P @ V as two 16-bit products, V known finite;
   ``triton_fast_pv_ms``: FlashAttention's single product; ``triton_nonfinite_safe_ms``: the
   variant that handles NaN/Inf in V, as TensorRT engines use; ``triton_dispatch_ms``: through
   ``block_sparse_attention``, with validation and the isfinite(V) check), PyTorch SDPA dense (flash
   backend: the dense lower bound to beat), and
   FlexAttention (compiled) given the same token mask through ``mask_mod``. Median of CUDA
   event timings. Then the same at S = 4k..16k for grouped K/V with wide heads (H=8 over
   Hkv=2, D=256; ``--wide-seq-lens``), SDPA and FlexAttention with ``enable_gqa=True``.

Writes ``<out>/gpu_check.json`` and prints a table. Exit codes: 0 all correct, 3 a
correctness case failed, 1 no CUDA GPU (one line on stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BUDGET_S = 7 * 60


def _fail(msg: str, code: int) -> int:
    print(f"gpu_check: error: {msg}", file=sys.stderr)
    return code


def _layout(spec: str, s: int, bs: int, h: int, causal: bool = False):
    from sparse_attn.layout import compile_layout

    return compile_layout(spec, seq_len=s, block_size=bs, num_heads=h, causal=causal)


def correctness_cases(quick: bool) -> list[dict]:
    """The grid: each dict gives dtype, B, H, S (request), S_max (layout), D, Dv, block, spec."""
    cases = []
    for dt in ("float16", "bfloat16"):
        cases += [
            dict(dtype=dt, b=2, h=4, s=1000, smax=1024, d=64, dv=64, bs=64,
                 spec="band(w=100) | global(n=16)", causal=False, pad=True),
            dict(dtype=dt, b=1, h=2, s=777, smax=800, d=80, dv=80, bs=32,
                 spec="band(w=64)", causal=True, pad=False),
            dict(dtype=dt, b=2, h=3, s=257, smax=300, d=128, dv=128, bs=16,
                 spec="dilated(w=8, d=3) | global(n=1)", causal=False, pad=True),
            dict(dtype=dt, b=1, h=2, s=2048, smax=2048, d=32, dv=32, bs=128,
                 spec="block_local(b=256)", causal=True, pad=True),
            dict(dtype=dt, b=1, h=1, s=500, smax=512, d=64, dv=64, bs=64,
                 spec="band(w=1)", causal=False, pad=True, big=True),
            # grouped-query K/V and wide heads (Gemma 3: 4 query heads over 1 K/V head, D=256)
            dict(dtype=dt, b=2, h=4, hkv=1, s=1000, smax=1024, d=256, dv=256, bs=64,
                 spec="band(w=100) | global(n=16)", causal=True, pad=True),
            dict(dtype=dt, b=1, h=8, hkv=2, s=777, smax=800, d=128, dv=80, bs=32,
                 spec="band(w=64)", causal=False, pad=True),
            dict(dtype=dt, b=1, h=16, hkv=2, s=300, smax=300, d=64, dv=256, bs=16,
                 spec="dilated(w=8, d=3) | global(n=1)", causal=True, pad=False),
            dict(dtype=dt, b=1, h=8, hkv=2, s=1500, smax=2048, d=128, dv=128, bs=128,
                 spec="band(w=300)", causal=True, pad=True),
            dict(dtype=dt, b=2, h=6, hkv=6, s=129, smax=160, d=256, dv=40, bs=32,
                 spec="block_local(b=64)", causal=False, pad=True),
        ]  # fmt: skip
    cases = [{**c, "hkv": c.get("hkv", c["h"])} for c in cases]
    return [c for i, c in enumerate(cases) if i % 10 < 4 or c["hkv"] != c["h"]] if quick else cases


def is_wide_or_grouped(c: dict) -> bool:
    """Cases that also run on the ``torch`` backend: grouped K/V or a head dim over 128."""
    return c["hkv"] != c["h"] or max(c["d"], c["dv"]) > 128


def self_test_shrink(c: dict) -> dict:
    """A CPU-sized copy of a case (same features, small S) for ``--self-test``."""
    h = min(c["h"], 4)
    hkv = min(c.get("hkv", c["h"]), h)
    while h % hkv:
        hkv -= 1
    return {**c, "s": min(c["s"], 45), "smax": min(c["smax"], 50), "bs": min(c["bs"], 32),
            "b": min(c["b"], 2), "h": h, "hkv": hkv,
            "spec": c["spec"].replace("256", "16")}  # fmt: skip


def run_case(c: dict, dev: str = "cuda", backend: str = "triton") -> dict:
    import torch

    from sparse_attn import opspec
    from sparse_attn.errors import BackendNotSupportedError
    from sparse_attn.kernels import block_sparse_attention
    from sparse_attn.kernels.reference import reference_attention
    from sparse_attn.runtime.compare import compare_arrays

    dtype = getattr(torch, c["dtype"])
    g = torch.Generator(device="cpu").manual_seed(
        zlib.crc32(json.dumps(c, sort_keys=True).encode())
    )
    scale_in = 40.0 if c.get("big") else 1.0
    hkv = c.get("hkv", c["h"])
    q = (torch.randn(c["b"], c["h"], c["s"], c["d"], generator=g) * scale_in).to(dev, dtype)
    k = (torch.randn(c["b"], hkv, c["s"], c["d"], generator=g) * scale_in).to(dev, dtype)
    v = torch.randn(c["b"], hkv, c["s"], c["dv"], generator=g)
    if c.get("big"):
        v = v.sign() * 6.0e4
    v = v.to(dev, dtype)
    layout = _layout(c["spec"], c["smax"], c["bs"], c["h"], c["causal"])
    kpm = None
    if c["pad"]:
        kpm = torch.ones(c["b"], c["s"], dtype=torch.bool, device=dev)
        cut = max(1, c["s"] * 3 // 4)
        kpm[-1, cut:] = False
        k[-1, :, cut:] = float("nan")
        v[-1, :, cut:] = float("inf")
    t0 = time.perf_counter()
    try:
        out = block_sparse_attention(q, k, v, layout, kpm, backend=backend)
    except BackendNotSupportedError as exc:  # the backend declines: say why, do not fail
        reasons = [r for rs in exc.reasons.values() for r in rs] if exc.reasons else [str(exc)]
        return {**c, "backend": backend, "passed": True, "unsupported": reasons}
    _sync(dev)
    t_run = time.perf_counter() - t0
    ref = reference_attention(q.double(), k.double(), v.double(), layout, kpm)
    r = compare_arrays(out.cpu(), ref.cpu(), opspec.tolerance("op", c["dtype"]))
    worst = r.get("worst") or {}
    return {
        **c,
        "backend": backend,
        "passed": bool(r["passed"]),
        "max_abs_err": r.get("max_abs_err", math.inf),
        "mismatch_fraction": r.get("mismatch_fraction", 1.0),
        "worst_index": worst.get("index"),
        "worst_got": worst.get("got"),
        "worst_expected": worst.get("expected"),
        "first_call_s": round(t_run, 3),
    }


def _sync(dev: str) -> None:
    import torch

    if dev == "cuda":
        torch.cuda.synchronize()


def _time(fn, iters: int, dev: str = "cuda") -> float:
    """Median milliseconds of ``fn()`` over ``iters`` CUDA-event-timed calls (after warmup)."""
    import torch

    fn()
    _sync(dev)
    times = []
    for _ in range(iters):
        if dev != "cuda":  # --self-test on CPU: wall clock
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
            continue
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def run_timings(
    seq_lens,
    heads,
    head_dim,
    bs,
    band,
    glob,
    iters,
    deadline,
    dev="cuda",
    use_flex=True,
    kv_heads=None,
) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from sparse_attn.kernels import block_sparse_attention
    from sparse_attn.kernels.triton_kernel import attention_arrays

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        sdpa_kernel = None
    flex = None
    if use_flex:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            flex = torch.compile(flex_attention, dynamic=False)
        except Exception:  # noqa: BLE001 - FlexAttention missing in this torch
            flex = None

    def mask_mod(b, h, qi, kj):
        return ((qi - kj).abs() <= band) | (qi < glob) | (kj < glob)

    rows = []
    spec = f"band(w={band}) | global(n={glob})"
    hkv = kv_heads or heads
    gqa = {"enable_gqa": True} if hkv != heads else {}
    for s in seq_lens:
        if time.perf_counter() > deadline:
            rows.append({"seq_len": s, "skipped": "time budget"})
            continue
        row = {
            "seq_len": s,
            "heads": heads,
            "kv_heads": hkv,
            "head_dim": head_dim,
            "block_size": bs,
        }
        q = torch.randn(1, heads, s, head_dim, device=dev, dtype=torch.float16)
        k, v = (torch.randn(1, hkv, s, head_dim, device=dev, dtype=torch.float16) for _ in range(2))
        layout = _layout(spec, s, bs, heads)
        st = layout.stats()
        row["density_tokens"] = st["density_tokens"]
        row["density_blocks"] = st["density_blocks"]
        arr = [
            torch.from_numpy(a).to(dev)
            for a in (layout.row_ptr, layout.col_idx, layout.mask_idx, layout.masks)
        ]
        scale = head_dim**-0.5
        row["triton_ms"] = _time(
            lambda q=q, k=k, v=v, arr=arr, sc=scale: attention_arrays(
                q, k, v, *arr, None, bs, sc, assume_finite_v=True
            ),
            iters,
            dev,
        )
        row["triton_nonfinite_safe_ms"] = _time(
            lambda q=q, k=k, v=v, arr=arr, sc=scale: attention_arrays(
                q, k, v, *arr, None, bs, sc, assume_finite_v=False
            ),
            iters,
            dev,
        )
        row["triton_dispatch_ms"] = _time(
            lambda q=q, k=k, v=v, lay=layout: block_sparse_attention(
                q, k, v, lay, backend="triton"
            ),
            iters,
            dev,
        )
        row["triton_fast_pv_ms"] = _time(
            lambda q=q, k=k, v=v, arr=arr, sc=scale: attention_arrays(
                q, k, v, *arr, None, bs, sc, precise_pv=False, assume_finite_v=True
            ),
            iters,
            dev,
        )
        ideal_flops = 4.0 * heads * s * s * st["density_tokens"] * head_dim
        row["triton_tflops_useful"] = ideal_flops / row["triton_ms"] / 1e9
        if sdpa_kernel is not None:
            try:
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    row["sdpa_flash_dense_ms"] = _time(
                        lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, **gqa),
                        iters,
                        dev,
                    )
            except Exception as exc:  # noqa: BLE001 - record, keep going
                row["sdpa_flash_dense_error"] = str(exc)[:200]
        if flex is not None and time.perf_counter() < deadline:
            try:
                bm = create_block_mask(mask_mod, 1, 1, s, s, device="cuda", BLOCK_SIZE=128)
                row["flex_ms"] = _time(
                    lambda q=q, k=k, v=v, bm=bm: flex(q, k, v, block_mask=bm, **gqa), iters
                )
                if s == seq_lens[0]:
                    ot = attention_arrays(q, k, v, *arr, None, bs, scale).float()
                    of = flex(q, k, v, block_mask=bm, **gqa).float()
                    row["triton_vs_flex_max_abs"] = float((ot - of).abs().max())
            except Exception as exc:  # noqa: BLE001
                row["flex_error"] = str(exc)[:200]
        rows.append(row)
        print(
            f"S={s:>6} H={heads}/{hkv} D={head_dim}  triton {row['triton_ms']:8.3f} ms  "
            f"(P in one 16-bit product: {row['triton_fast_pv_ms']:8.3f} ms)  "
            f"sdpa-flash(dense) {row.get('sdpa_flash_dense_ms', float('nan')):8.3f} ms  "
            f"flex {row.get('flex_ms', float('nan')):8.3f} ms  "
            f"density {row['density_tokens']:.4f}",
            flush=True,
        )
        del q, k, v, arr
        if dev == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="artifacts/gpu-check", help="output directory")
    p.add_argument("--quick", action="store_true", help="smaller grid, S up to 8k")
    p.add_argument("--seq-lens", default="4096,8192,16384,32768")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--band", type=int, default=256)
    p.add_argument("--global-tokens", type=int, default=64)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument(
        "--wide-seq-lens",
        default="4096,16384",
        help="sequence lengths of the grouped-query, D=256 timings (H=8 over Hkv=2); '' skips",
    )
    p.add_argument(
        "--self-test",
        action="store_true",
        help="exercise this script on CPU under Triton's interpreter (tiny sizes, no timings "
        "worth reading, no FlexAttention); for CI without a GPU",
    )
    try:
        args = p.parse_args(argv)
        seq_lens = [int(x) for x in args.seq_lens.split(",") if x]
        wide_seq_lens = [int(x) for x in args.wide_seq_lens.split(",") if x]
    except SystemExit as exc:
        return int(exc.code or 0) and 2
    except ValueError:
        return _fail("--seq-lens / --wide-seq-lens must be comma-separated integers", 2)
    if not args.self_test:  # the compiled kernel: Triton must not start in interpreter mode
        os.environ.pop("TRITON_INTERPRET", None)
    try:
        import torch
    except ImportError as exc:
        return _fail(f"PyTorch is not installed ({exc}); gpu_check needs PyTorch with CUDA", 1)
    dev = "cuda"
    if args.self_test:
        os.environ["TRITON_INTERPRET"] = "1"
        dev = "cpu"
    elif not torch.cuda.is_available():
        return _fail(
            "no CUDA GPU (torch.cuda.is_available() is False); run gpu_check on a machine "
            "with an NVIDIA GPU, PyTorch and Triton",
            1,
        )
    try:
        import triton
    except ImportError as exc:
        return _fail(f"Triton is not installed ({exc}); gpu_check needs Triton", 1)
    start = time.perf_counter()
    deadline = start + BUDGET_S
    if args.quick:
        seq_lens = [s for s in seq_lens if s <= 8192]
        wide_seq_lens = [s for s in wide_seq_lens if s <= 8192]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu (self-test)",
        "compute_capability": (
            ".".join(map(str, torch.cuda.get_device_capability())) if dev == "cuda" else None
        ),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "correctness": [],
        "timings": [],
    }
    print(f"gpu_check on {report['device']} (torch {torch.__version__}, triton "
          f"{triton.__version__})", flush=True)  # fmt: skip
    cases = correctness_cases(args.quick)
    if args.self_test:
        first = cases[:2] + [cases[4]] + cases[5:7]
        cases = [self_test_shrink(c) for c in first]
        seq_lens = [128]
        wide_seq_lens = []
        args.heads = 2
    runs = [(c, "triton") for c in cases] + [(c, "torch") for c in cases if is_wide_or_grouped(c)]
    for c, backend in runs:
        try:
            r = run_case(c, dev, backend)
        except Exception as exc:  # noqa: BLE001 - record the failure, keep checking
            r = {**c, "backend": backend, "passed": False}
            r["error"] = f"{type(exc).__name__}: {exc}"[:500]
        report["correctness"].append(r)
        status = ("n/a " if "unsupported" in r else "ok  ") if r["passed"] else "FAIL"
        detail = "; ".join(r["unsupported"]) if "unsupported" in r else r.get("error", "")
        print(
            f"{status} {backend:6} {c['dtype']:8} B={c['b']} H={c['h']}/{c.get('hkv', c['h'])} "
            f"S={c['s']:>5}/{c['smax']:<5} D={c['d']:>3}/{c['dv']:<3} bs={c['bs']:>3} "
            f"{c['spec']}{' causal' if c['causal'] else ''}: "
            f"max_abs_err={r.get('max_abs_err', float('nan')):.3g} {detail}",
            flush=True,
        )
    report["timings"] = run_timings(
        seq_lens,
        args.heads,
        args.head_dim,
        args.block_size,
        args.band,
        args.global_tokens,
        args.iters if not args.self_test else 1,
        deadline,
        dev,
        use_flex=not args.self_test,
    )
    if wide_seq_lens:
        report["timings"] += run_timings(
            wide_seq_lens,
            8,
            256,
            args.block_size,
            args.band,
            args.global_tokens,
            args.iters,
            deadline,
            dev,
            use_flex=True,
            kv_heads=2,
        )
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    n_fail = sum(not r["passed"] for r in report["correctness"])
    n_na = sum("unsupported" in r for r in report["correctness"])
    print(
        f"{len(report['correctness']) - n_fail - n_na}/{len(report['correctness'])} correctness "
        f"runs passed, {n_na} declined by their backend; wrote {out_dir / 'gpu_check.json'} in "
        f"{report['wall_seconds']} s"
    )
    return 3 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
