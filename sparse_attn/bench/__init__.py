"""``sparse-attn bench``: sparse attention measured side by side with the alternatives.

Three suites (see ``docs/bench.md`` for every definition):

* ``attention`` (:mod:`sparse_attn.bench.attention`): one attention call, fp32,
  ``[B, H, S, D]``, for each pattern and S, ours (torch backend, exported op in ONNX
  Runtime) against SDPA (dense, causal, boolean mask), compiled FlexAttention and ONNX
  Runtime (dense graph, MultiHeadAttention, SparseAttention).
* ``model`` (:mod:`sparse_attn.bench.model`, :mod:`sparse_attn.bench.gemma`): whole
  encoders in ONNX Runtime, our sparse export against a dense export; and a decoder's
  prefill (Gemma 3 270M): our ONNX and PyTorch paths against Hugging Face eager, sdpa,
  flex_attention and a dense export, each in a fresh process.
* ``layout`` (:mod:`sparse_attn.bench.layout_suite`): layout compile time and memory at
  S = 65,536.
* ``serve`` (:mod:`sparse_attn.bench.serve`, only when named): MiniLM served in-process, over
  HTTP (``sparse-attn serve``) and on Ray Serve, batching on and off, 1/8/32 clients.

:func:`run_bench` returns one JSON-serialisable dict (schema
:data:`sparse_attn.bench.report.SCHEMA`) and writes ``bench.json``, ``bench.md`` and
``attention_time_vs_S.png`` into the output folder. Nothing here asserts a timing.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sparse_attn.bench.attention import (
    DEFAULT_IMPLS,
    DEFAULT_PATTERNS,
    DEFAULT_SIZES,
    REFERENCE_SPEC,
    TimingPolicy,
)

SUITES = ("attention", "model", "layout", "serve", "generate")
#: Suites run when none is named (``serve`` starts servers and Ray, ``generate`` exports and
#: runs a real checkpoint: ask for them).
DEFAULT_SUITES = ("attention", "model", "layout")


def _prefill_impls() -> tuple[str, ...]:
    """Every prefill implementation (:data:`sparse_attn.bench.gemma.IMPLS`), imported when a
    config is made: the gemma module also runs as ``python -m`` (its worker), so the package
    must not import it on load."""
    from sparse_attn.bench.gemma import IMPLS

    return IMPLS


@dataclass
class BenchConfig:
    """Everything a run depends on. ``full()`` and ``quick()`` are the two presets.

    Attributes:
        sizes: sequence lengths S of the attention suite (tokens).
        patterns: ``(spec, causal)`` pairs of the attention suite.
        impls: implementation names (:data:`sparse_attn.bench.impls.IMPLS`).
        num_heads, head_dim, block_size, batch: attention problem shape and layout block.
        threads: torch and ONNX Runtime intra-op threads.
        policy: warm-up / repeats per attention cell.
        max_cell_gib: attention cells estimated above this are n/a.
        suites: which of ``SUITES`` run.
        minilm_seq_len, long_seq_len, long_layers, model_repeats: model suite sizes.
        prefill_model, prefill_lengths, prefill_impls, prefill_repeats, prefill_timeout_s,
        prefill_logits:
            model suite, decoder prefill (:mod:`sparse_attn.bench.gemma`; repeats drop to 1
            at S >= 8192; a cell over the timeout is n/a; ``prefill_logits`` ``"last"`` or
            ``"all"`` positions' logits). ``prefill_lengths=()`` skips it.
        layout_seq_len, layout_patterns: layout suite.
        gemm_n: size of the square matmul measuring the fp32 GEMM ceiling.
    """

    sizes: tuple[int, ...] = DEFAULT_SIZES
    patterns: tuple[tuple[str, bool], ...] = DEFAULT_PATTERNS
    impls: tuple[str, ...] = DEFAULT_IMPLS
    num_heads: int = 8
    head_dim: int = 64
    block_size: int = 64
    batch: int = 1
    threads: int = 2
    policy: TimingPolicy = field(default_factory=TimingPolicy)
    max_cell_gib: float = 6.0
    suites: tuple[str, ...] = DEFAULT_SUITES
    minilm_seq_len: int = 512
    long_seq_len: int = 4096
    long_layers: int = 2
    models: tuple[str, ...] = ("minilm", "long_encoder")
    model_repeats: int = 3
    layout_seq_len: int = 65536
    layout_patterns: tuple[str, ...] = tuple(p for p, _ in DEFAULT_PATTERNS)
    gemm_n: int = 2048
    quick: bool = False
    generate_model: str = "gemma3-270m"
    generate_lengths: tuple[int, ...] = (512, 2048, 8192)
    generate_new_tokens: int = 32
    prefill_model: str = "gemma3-270m"
    prefill_lengths: tuple[int, ...] = (2048, 8192, 32768)
    prefill_impls: tuple[str, ...] = field(default_factory=_prefill_impls)
    prefill_repeats: int = 3
    prefill_timeout_s: float = 900.0
    prefill_logits: str = "last"

    @classmethod
    def full(cls) -> BenchConfig:
        """The full run (about 15-25 minutes on 2 idle cores)."""
        return cls()

    @classmethod
    def quick_config(cls) -> BenchConfig:
        """Smoke run in under 2 minutes: S=1024, two patterns, few repeats, MiniLM at S=128."""
        return cls(
            sizes=(1024,),
            patterns=((REFERENCE_SPEC, False), ("sliding_window(w=256)", False)),
            policy=TimingPolicy(warmup=1, min_repeats=2, max_repeats=4, budget_s=0.25),
            minilm_seq_len=128,
            long_seq_len=512,
            long_layers=1,
            models=("minilm",),
            model_repeats=2,
            layout_seq_len=8192,
            layout_patterns=(REFERENCE_SPEC, "sliding_window"),
            gemm_n=1024,
            prefill_lengths=(512,),
            prefill_repeats=1,
            prefill_timeout_s=300.0,
            quick=True,
        )

    def as_dict(self) -> dict:
        d = asdict(self)
        d["patterns"] = [list(p) for p in self.patterns]
        return d


def estimate_duration_s(cfg: BenchConfig, gemm_gflops: float = 150.0) -> float:
    """Rough wall-clock estimate of a run on idle cores (seconds), printed before it starts.

    Model: dense-work cells run at 80 % of the GEMM rate, masked SDPA at 60 %, pattern
    cells do ``density`` (assumed 0.25) of the dense work at 25 % of the GEMM rate;
    ``warmup + clamp(budget / t)`` calls each; plus 6 s of compilation per FlexAttention
    cell and ``6 + 2 S / 1024`` s per export; models and layouts as measured once.
    """
    from sparse_attn.bench.impls import IMPLS

    rate = max(gemm_gflops, 1.0) * 1e9
    pol = cfg.policy
    total = 0.0
    for s in cfg.sizes if "attention" in cfg.suites else ():
        dense = 4.0 * cfg.batch * cfg.num_heads * s * s * cfg.head_dim
        for i, (_spec, _causal) in enumerate(cfg.patterns):
            for name in cfg.impls:
                impl = IMPLS[name]
                if impl.pattern_independent and i > 0:
                    continue
                if impl.causal_only:
                    continue
                if impl.computes == "dense":
                    t = dense / (0.8 * rate)
                elif name == "sdpa_mask":
                    t = dense / (0.6 * rate)
                else:
                    t = dense * 0.25 / (0.25 * rate)
                calls = pol.warmup + min(
                    pol.max_repeats, max(pol.min_repeats, math.ceil(pol.budget_s / t))
                )
                total += calls * t
                if name == "flex_compiled":
                    total += 6.0
                if name == "ours_onnx_ort":
                    total += 6.0 + 2.0 * s / 1024
    if "model" in cfg.suites:
        total += sum(
            len(cfg.prefill_impls) * (60.0 + 4.0 * s / 1024 * (cfg.prefill_repeats + 1))
            for s in cfg.prefill_lengths
        )
        total += 30.0 * ("minilm" in cfg.models) + (60.0 + 30.0 * cfg.long_layers) * (
            "long_encoder" in cfg.models
        )
    if "layout" in cfg.suites:
        total += 5.0 * len(cfg.layout_patterns)
    if "serve" in cfg.suites:
        total += 60.0 if cfg.quick else 300.0
    return total


def run_bench(
    cfg: BenchConfig,
    out_dir: Path,
    *,
    log: Callable[[str], None] = print,
    plot: bool = True,
    models_dir: Path | None = None,
) -> dict:
    """Run the configured suites; write ``bench.json``, ``bench.md`` and the PNG plot.

    Args:
        cfg: what to run. out_dir: output folder (created). log: one-line progress
            messages. plot: write the PNG. models_dir: cache of exported models (default
            ``out_dir/models``; files are keyed by layout and export-code hash).

    Returns:
        The result dict written to ``bench.json`` (keys ``schema``, ``machine``, ``gemm``,
        ``config``, ``attention``, ``model``, ``layout_compile``, ``targets``, ...).

    Raises:
        InvalidInputError: unknown suite or implementation names, non-positive sizes.
    """
    import torch

    from sparse_attn.bench import report
    from sparse_attn.bench.attention import run_attention_suite
    from sparse_attn.bench.harness import PeakRSS, gemm_ceiling, machine_info
    from sparse_attn.errors import InvalidInputError

    bad = [s for s in cfg.suites if s not in SUITES]
    if bad:
        raise InvalidInputError(f"unknown suite(s) {bad}; choose from {', '.join(SUITES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(models_dir) if models_dir is not None else out_dir / "models"
    t_start = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    torch.set_num_threads(cfg.threads)
    result: dict = {
        "schema": report.SCHEMA,
        "quick": cfg.quick,
        "threads": cfg.threads,
        "config": cfg.as_dict(),
        "machine": machine_info(),
        "memory_method": PeakRSS.method,
    }
    gemm = gemm_ceiling(cfg.gemm_n)
    result["gemm"] = gemm
    log(
        f"fp32 GEMM ceiling: {gemm['gflops']:.1f} GFLOP/s (torch.mm {cfg.gemm_n}^2, "
        f"{gemm['threads']} threads); load average {result['machine']['loadavg_start']}"
    )
    est = estimate_duration_s(cfg, gemm["gflops"])
    result["expected_duration_s"] = est
    load = result["machine"]["loadavg_start"][0]
    slow = max(1.0, (load + cfg.threads) / max(1, os.cpu_count() or 1)) ** 0.5
    result["expected_duration_loaded_s"] = est * slow
    log(
        f"expected duration: about {est / 60:.1f} min on idle cores; at the current load "
        f"average {load:.1f} perhaps {est * slow / 60:.1f} min"
    )
    if "attention" in cfg.suites:
        t_suite = time.perf_counter()
        result["attention"] = run_attention_suite(
            sizes=cfg.sizes,
            patterns=cfg.patterns,
            impls=cfg.impls,
            num_heads=cfg.num_heads,
            head_dim=cfg.head_dim,
            block_size=cfg.block_size,
            batch=cfg.batch,
            policy=cfg.policy,
            max_cell_gib=cfg.max_cell_gib,
            threads=cfg.threads,
            workdir=workdir,
            gemm_gflops=gemm["gflops"],
            gemm_gflops_cpu=gemm.get("gflops_cpu"),
            log=log,
            on_progress=lambda cells: _checkpoint(out_dir, result, cells),
        )
        result["attention"]["duration_s"] = time.perf_counter() - t_suite
        result["targets"] = report.targets_check(result)
    else:
        result["attention"] = {"cells": [], "reason": "suite not selected"}
    if "model" in cfg.suites:
        from sparse_attn.bench.model import run_model_suite

        t_suite = time.perf_counter()
        result["model"] = run_model_suite(
            workdir=workdir,
            minilm_seq_len=cfg.minilm_seq_len,
            long_seq_len=cfg.long_seq_len,
            long_layers=cfg.long_layers,
            models=cfg.models,
            threads=cfg.threads,
            min_repeats=cfg.model_repeats,
            max_repeats=max(cfg.model_repeats, 5),
            budget_s=cfg.policy.budget_s,
            log=log,
        )
        if cfg.prefill_lengths:
            from sparse_attn.bench.gemma import run_gemma_suite

            prefill = run_gemma_suite(
                workdir=workdir,
                model=cfg.prefill_model,
                lengths=cfg.prefill_lengths,
                impls=cfg.prefill_impls,
                repeats=cfg.prefill_repeats,
                threads=cfg.threads,
                timeout_s=cfg.prefill_timeout_s,
                log=log,
                logits=cfg.prefill_logits,
            )
            result["model"]["cells"] += prefill
            result["model"]["config"]["prefill"] = {
                "model": cfg.prefill_model,
                "lengths": list(cfg.prefill_lengths),
                "impls": list(cfg.prefill_impls),
                "repeats": cfg.prefill_repeats,
                "logits": cfg.prefill_logits,
            }
        result["model"]["duration_s"] = time.perf_counter() - t_suite
    else:
        result["model"] = {"cells": [], "reason": "suite not selected"}
    if "layout" in cfg.suites:
        from sparse_attn.bench.layout_suite import run_layout_suite

        t_suite = time.perf_counter()
        result["layout_compile"] = run_layout_suite(
            patterns=cfg.layout_patterns,
            seq_len=cfg.layout_seq_len,
            block_size=cfg.block_size,
            num_heads=cfg.num_heads,
            log=log,
        )
        result["layout_compile"]["duration_s"] = time.perf_counter() - t_suite
    else:
        result["layout_compile"] = {"cells": [], "reason": "suite not selected"}
    if "serve" in cfg.suites:
        from sparse_attn.bench import serve as serve_suite

        t_suite = time.perf_counter()
        result["serve"] = serve_suite.run_serve_suite(
            workdir=workdir, threads=cfg.threads, quick=cfg.quick, log=log
        )
        result["serve"]["duration_s"] = time.perf_counter() - t_suite
        if plot:
            png = serve_suite.plot(result["serve"], out_dir / "serve_throughput.png")
            result["serve"]["plot"] = str(png) if png else None
    if "generate" in cfg.suites:
        from sparse_attn.bench.generate import run_generate_suite

        t_suite = time.perf_counter()
        result["generate"] = run_generate_suite(
            workdir=workdir,
            model=cfg.generate_model,
            lengths=cfg.generate_lengths,
            new_tokens=cfg.generate_new_tokens,
            threads=cfg.threads,
            log=log,
        )
        result["generate"]["duration_s"] = time.perf_counter() - t_suite
    result["loadavg_end"] = list(os.getloadavg())
    result["duration_s"] = time.perf_counter() - t_start
    result["plot"] = result["plot_cpu"] = None
    if plot:
        png = report.plot(result, out_dir / "attention_time_vs_S.png")
        result["plot"] = str(png) if png else None
        png = report.plot(result, out_dir / "attention_cpu_time_vs_S.png", view="cpu")
        result["plot_cpu"] = str(png) if png else None
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1, default=_json_default))
    md = report.markdown_report(result)
    if "generate" in result:
        from sparse_attn.bench.generate import markdown as generate_markdown

        md += "\n" + generate_markdown(result["generate"])
    prefill_cells = [c for c in result["model"]["cells"] if "impl" in c]
    if prefill_cells:
        from sparse_attn.bench.gemma import markdown as prefill_markdown

        md += "\n## Prefill (model suite)\n\n" + prefill_markdown(prefill_cells) + "\n"
    (out_dir / "bench.md").write_text(md)
    (out_dir / "bench.partial.json").unlink(missing_ok=True)
    return result


def _checkpoint(out_dir: Path, result: dict, cells: list[dict]) -> None:
    """Write the cells so far to ``bench.partial.json`` (an interrupted run keeps its data)."""
    part = dict(result, attention={"cells": cells}, partial=True)
    (out_dir / "bench.partial.json").write_text(json.dumps(part, default=_json_default))


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


__all__ = ["SUITES", "BenchConfig", "estimate_duration_s", "run_bench"]
