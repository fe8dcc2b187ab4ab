"""Smoke tests of ``sparse-attn bench``: tiny sizes, schema/table/plot, no timings.

Nothing here asserts a timing. What is checked: the outputs exist and follow the schema,
the statistics are ordered, unavailable cells become ``n/a (reason)`` instead of crashing,
and every implementation that computes the pattern agrees with dense masked SDPA (the
accuracy column is itself a correctness test of the alternatives' set-up).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from sparse_attn.bench import BenchConfig, run_bench
from sparse_attn.bench.attention import TimingPolicy, run_attention_suite
from sparse_attn.bench.harness import PeakRSS, time_callable
from sparse_attn.bench.impls import IMPLS, Impl
from sparse_attn.bench.report import REFERENCE_SPEC, targets_check
from sparse_attn.cli import main

TINY_PATTERNS = (("band(w=16) | global(n=4)", False), ("band(w=40) | causal", False))
FAST_IMPLS = (
    "sdpa_dense",
    "sdpa_causal",
    "sdpa_mask",
    "ours_torch",
    "ours_torch_pure",
    "ort_dense",
    "ort_mha",
    "ort_sparse",
)
CELL_KEYS = {"suite", "impl", "label", "pattern", "seq_len", "status", "reason", "median_ms"}
OK_KEYS = {"q1_ms", "q3_ms", "min_ms", "max_ms", "repeats", "peak_mem_mib", "gflops"}


def _tiny_config(**kw) -> BenchConfig:
    cfg = BenchConfig(
        sizes=(96, 128),
        patterns=TINY_PATTERNS,
        impls=FAST_IMPLS,
        num_heads=2,
        head_dim=16,
        block_size=16,
        policy=TimingPolicy(warmup=1, min_repeats=2, max_repeats=2, budget_s=0.01),
        suites=("attention", "layout"),
        layout_seq_len=1024,
        layout_patterns=("band(w=16) | global(n=4)", "sliding_window(w=64)"),
        gemm_n=128,
        quick=True,
    )
    return replace(cfg, **kw)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = run_bench(_tiny_config(), out, log=lambda m: None)
    return out, result


def test_outputs_written_and_schema(tiny_run):
    out, result = tiny_run
    data = json.loads((out / "bench.json").read_text())
    assert data["schema"] == "sparse-attn-bench/1"
    for key in ("machine", "gemm", "config", "attention", "model", "layout_compile", "targets"):
        assert key in data, key
    assert len(data["machine"]["loadavg_start"]) == 3
    assert data["gemm"]["gflops"] > 0
    cells = data["attention"]["cells"]
    # 2 sizes x (2 patterns) x impls, causal-only impls only on the causal pattern
    assert len(cells) == 2 * (len(FAST_IMPLS) - 2) + 2 * len(FAST_IMPLS)
    for c in cells:
        assert CELL_KEYS <= set(c), set(CELL_KEYS) - set(c)
        if c["status"] == "ok":
            assert OK_KEYS <= set(c), OK_KEYS - set(c)
            assert c["min_ms"] <= c["q1_ms"] <= c["median_ms"] <= c["q3_ms"] <= c["max_ms"]
            assert c["repeats"] == 2
        else:
            assert c["status"] == "n/a" and c["reason"], c
    md = (out / "bench.md").read_text()
    assert "| S | density |" in md and "## Layout compile" in md
    assert not (out / "bench.partial.json").exists()  # checkpoint removed after a full run
    png = out / "attention_time_vs_S.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "attention_cpu_time_vs_S.png").read_bytes()[:4] == b"\x89PNG"
    layouts = data["layout_compile"]["cells"]
    assert [c["status"] for c in layouts] == ["ok", "ok"], layouts


def test_derived_figures_consistent(tiny_run):
    _, result = tiny_run
    cells = [c for c in result["attention"]["cells"] if c["status"] == "ok"]
    for c in cells:
        dense = next(d for d in cells if d["impl"] == "sdpa_dense" and d["seq_len"] == c["seq_len"])
        exp_speedup = dense["median_ms"] / c["median_ms"]
        assert math.isclose(c["speedup_vs_dense"], exp_speedup, rel_tol=1e-9)
        assert math.isclose(c["ideal_ms"], dense["median_ms"] * c["density_tokens"], rel_tol=1e-9)
        assert 0 < c["density_tokens"] <= 1


def test_pattern_implementations_agree_with_masked_sdpa(tiny_run):
    """Every pattern cell (and ORT SparseAttention vs its block-causal mask) matches fp32 SDPA."""
    _, result = tiny_run
    checked = 0
    for c in result["attention"]["cells"]:
        if c["status"] != "ok" or c.get("max_abs_diff") is None:
            continue
        checked += 1
        assert c["max_abs_diff"] < 1e-4, (
            f"{c['impl']} on {c['pattern']} S={c['seq_len']}: max abs diff {c['max_abs_diff']} "
            f"at index {c.get('worst_index')} vs {c.get('diff_reference')}"
        )
    assert checked >= 8


def test_time_callable_orders_statistics():
    calls = []
    timing, first = time_callable(
        lambda: calls.append(1) or len(calls), warmup=2, min_repeats=3, max_repeats=4, budget_s=0
    )
    assert first == 1  # the first call's result is returned
    assert len(calls) == 2 + timing.repeats and timing.repeats == 3
    assert timing.min_ms <= timing.q1_ms <= timing.median_ms <= timing.q3_ms <= timing.max_ms
    calls.clear()
    slow, _ = time_callable(lambda: calls.append(1), warmup=3, min_repeats=3, slow_call_s=0.0)
    assert slow.repeats == 1 and len(calls) == 2  # a slow first call: one timed call only
    with pytest.raises(ValueError, match="warmup"):
        time_callable(lambda: None, warmup=0)


def test_peak_rss_sees_a_large_allocation():
    with PeakRSS() as probe:
        pass
    if probe.peak_mib is None:
        pytest.skip("this kernel does not allow resetting VmHWM (/proc/self/clear_refs)")
    with PeakRSS() as peak:
        a = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        a.sum()
        del a
    assert peak.peak_mib is not None and peak.peak_mib > 150, peak.peak_mib


def test_unavailable_cells_are_reported_not_raised(tmp_path):
    res = run_attention_suite(
        sizes=[64],
        patterns=[("band(w=8)", False)],
        impls=["sdpa_dense", "sdpa_mask"],
        num_heads=1,
        head_dim=16,
        block_size=16,
        policy=TimingPolicy(1, 1, 1, 0.0),
        max_cell_gib=1e-6,  # below every estimate: all cells skipped for memory
        workdir=tmp_path,
        log=lambda m: None,
    )
    by = {c["impl"]: c for c in res["cells"]}
    assert by["sdpa_dense"]["status"] == "n/a" and "GiB" in by["sdpa_dense"]["reason"]
    res = run_attention_suite(
        sizes=[64],
        patterns=[("band(w=8)", False), ("not_a_preset", False)],
        impls=["sdpa_mask"],
        num_heads=1,
        head_dim=16,
        block_size=16,
        policy=TimingPolicy(1, 1, 1, 0.0),
        workdir=tmp_path,
        log=lambda m: None,
    )
    by = {c["pattern"]: c for c in res["cells"]}
    assert by["band(w=8)"]["status"] == "ok"
    assert by["not_a_preset"]["status"] == "n/a" and "layout failed" in by["not_a_preset"]["reason"]


def test_prepare_error_becomes_na(tmp_path):
    def broken(case):
        raise RuntimeError("boom")

    IMPLS["_broken"] = Impl(
        "_broken", "broken", False, "pattern", False, lambda c: 0, broken, lambda o, c: o
    )
    try:
        res = run_attention_suite(
            sizes=[64],
            patterns=[("band(w=8)", False)],
            impls=["_broken"],
            num_heads=1,
            head_dim=16,
            block_size=16,
            policy=TimingPolicy(1, 1, 1, 0.0),
            workdir=tmp_path,
            log=lambda m: None,
        )
    finally:
        del IMPLS["_broken"]
    (cell,) = res["cells"]
    assert cell["status"] == "n/a" and cell["reason"] == "error: RuntimeError: boom"


def test_targets_check_logic():
    def cell(s, impl, ms, ideal=None):
        return {
            "pattern": REFERENCE_SPEC,
            "seq_len": s,
            "impl": impl,
            "status": "ok",
            "median_ms": ms,
            "ideal_ms": ideal,
        }

    cells = [
        cell(4096, "ours_onnx_ort", 100.0, 40.0),
        cell(4096, "ort_dense", 320.0, 40.0),
        cell(4096, "flex_compiled", 80.0, 40.0),
        cell(4096, "ours_torch", 55.0, 40.0),
        cell(8192, "ours_torch", 200.0, 70.0),
        cell(8192, "flex_compiled", 150.0, 70.0),
    ]
    chk = targets_check({"attention": {"cells": cells}})
    st = {c["text"]: c["status"] for c in chk["claims"]}
    assert st["exported sparse attention in ORT at S=4096 >= 3x faster than ORT dense"] == "met"
    assert st["S=4096: our best CPU path faster than FlexAttention"] == "met"
    assert st["S=4096: our best CPU path within 1.5x of the ideal"] == "met"
    assert st["S=8192: our best CPU path faster than FlexAttention"] == "not met"
    assert st["S=8192: our best CPU path within 1.5x of the ideal"] == "not met"
    assert st["S=16384: our best CPU path faster than FlexAttention"] == "not measured"


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--sizes", "12x"],
        ["bench", "--impls", "nope"],
        ["bench", "--suites", "attention,nope"],
        ["bench", "--causal"],
        ["bench", "--threads", "0"],
    ],
)
def test_cli_bad_input_exit_2(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparse-attn: error:") and err.count("\n") == 1


def test_cli_json_run(tmp_path, capsys):
    rc = main(
        [
            "bench",
            "--sizes",
            "64",
            "--pattern",
            "band(w=8)",
            "--impls",
            "sdpa_dense,sdpa_mask",
            "--suites",
            "attention",
            "--num-heads",
            "1",
            "--head-dim",
            "16",
            "--block-size",
            "16",
            "--repeats",
            "1",
            "--no-plot",
            "--json",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["impl"] for c in data["attention"]["cells"]] == ["sdpa_dense", "sdpa_mask"]
    assert (tmp_path / "bench.json").is_file() and (tmp_path / "bench.md").is_file()


@pytest.mark.slow
def test_flex_and_export_cells(tmp_path):
    """FlexAttention compiles (seconds per shape) and our ONNX export: slow, run by test-slow."""
    res = run_attention_suite(
        sizes=[128],
        patterns=[("band(w=16) | global(n=4)", False)],
        impls=["sdpa_mask", "flex_compiled", "ours_onnx_ort"],
        num_heads=2,
        head_dim=16,
        block_size=16,
        policy=TimingPolicy(1, 1, 1, 0.0),
        workdir=tmp_path,
        log=lambda m: None,
    )
    for c in res["cells"]:
        if c["status"] != "ok":
            pytest.skip(f"{c['impl']}: {c['reason']}")
        assert c["max_abs_diff"] < 1e-4, c


@pytest.mark.slow
def test_model_suite_minilm_sparse_and_dense(tmp_path):
    """MiniLM sparse export vs the dense Hugging Face export, both in ORT (exports: slow)."""
    from sparse_attn.bench.model import run_model_suite

    res = run_model_suite(
        workdir=tmp_path,
        models=("minilm",),
        minilm_seq_len=64,
        min_repeats=1,
        max_repeats=1,
        budget_s=0.0,
        log=lambda m: None,
    )
    cells = {c["variant"]: c for c in res["cells"]}
    assert set(cells) == {"sparse (ours)", "dense (HF export)"}
    for c in cells.values():
        assert c["status"] == "ok", c
        assert c["min_ms"] <= c["median_ms"] <= c["max_ms"]
    assert cells["dense (HF export)"]["speedup_vs_dense"] == 1.0


def test_memory_estimates_refuse_dense_scores_at_16k():
    """ORT's dense graph at S=16384 (8.6 GiB of fp32 scores per copy) is refused up front."""
    import torch

    from sparse_attn.bench.impls import Case
    from sparse_attn.layout import compile_layout

    s = 16384
    q = torch.empty((1, 8, s, 64), device="meta")
    lay = compile_layout("band(w=256) | global(n=64)", s, 64, num_heads=8)
    case = Case(q, q, q, lay, "band(w=256) | global(n=64)", False, 0.05, workdir=None)
    gib = 2**30
    assert IMPLS["ort_dense"].estimate_bytes(case) > 8 * gib
    assert IMPLS["sdpa_dense"].estimate_bytes(case) < 0.5 * gib  # a few [B, H, S, D] buffers
    # the block-sparse paths scale with the stored tiles, not with S^2
    assert IMPLS["ours_torch"].estimate_bytes(case) < 2 * gib


# ------------------------------------------------------------------ model suite: decoder prefill
PREFILL_OK_KEYS = {
    "median_ms",
    "cpu_median_ms",
    "q1_ms",
    "q3_ms",
    "min_ms",
    "max_ms",
    "repeats",
    "peak_mem_mib",
    "loaded_rss_mib",
    "times_ms",
}


@pytest.fixture(scope="module")
def tiny_gemma_dir(tmp_path_factory):
    """A tiny random Gemma 3 (2 sliding layers, W=16, then a full one) saved as safetensors."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    d = tmp_path_factory.mktemp("tiny_gemma3")
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=16,
        layer_types=["sliding_attention"] * 2 + ["full_attention"],
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    Gemma3ForCausalLM(cfg).eval().save_pretrained(str(d))
    return d


@pytest.mark.slow  # two fresh Python processes (torch + transformers imports each)
def test_prefill_cells_schema_on_a_tiny_checkpoint(tiny_gemma_dir, tmp_path):
    from sparse_attn.bench.gemma import markdown, run_gemma_suite

    cells = run_gemma_suite(
        workdir=tmp_path,
        model=str(tiny_gemma_dir),
        lengths=(40,),
        impls=("ours_ort", "ours_torch", "hf_sdpa"),
        repeats=2,
        threads=1,
        timeout_s=300,
        log=lambda m: None,
    )
    assert [c["impl"] for c in cells] == ["ours_ort", "ours_torch", "hf_sdpa"]
    assert [p.name.split("_S")[0] for p in tmp_path.glob("*.onnx")] == [
        f"{tiny_gemma_dir.name}_sparse_logits-last"
    ]
    for c in cells:
        assert c["status"] == "ok", c
        assert c["suite"] == "model" and c["seq_len"] == 40 and c["reason"] is None
        assert c["logits"] == "last"
        assert PREFILL_OK_KEYS <= set(c), set(c) ^ PREFILL_OK_KEYS
        assert c["repeats"] == 2 and len(c["times_ms"]) == 2
        assert c["min_ms"] <= c["median_ms"] <= c["max_ms"]
        assert c["peak_mem_mib"] >= c["loaded_rss_mib"] > 0
    assert cells[2]["speedup_vs_hf_sdpa"] == pytest.approx(1.0)
    json.dumps(cells)
    table = markdown(cells)
    assert table.count("\n") == 4 and "Hugging Face sdpa" in table


def test_prefill_cells_over_budget_are_na_not_run(tiny_gemma_dir, tmp_path):
    from sparse_attn.bench.gemma import IMPLS, run_gemma_suite

    cells = run_gemma_suite(
        workdir=tmp_path,
        model=str(tiny_gemma_dir),
        lengths=(40, 64),
        max_gib=1e-6,
        log=lambda m: None,
    )
    assert len(cells) == 2 * len(IMPLS)
    assert all(c["status"] == "n/a" and "GiB" in c["reason"] for c in cells)
    assert not list(tmp_path.glob("*.onnx"))  # nothing exported for cells that cannot run
    missing = run_gemma_suite(
        workdir=tmp_path, model=str(tmp_path / "nope"), lengths=(40,), log=lambda m: None
    )
    assert all(c["status"] == "n/a" and "unavailable" in c["reason"] for c in missing)


def test_machine_info_records_the_isa():
    from sparse_attn.bench.harness import machine_info

    isa = machine_info()["cpu_isa"]
    assert isa["summary"] in ("AMX", "AVX-512", "AVX2", "none")
    assert set(isa["flags"]) <= {
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    }
    assert isinstance(isa["kernel"], str) and isa["kernel"]
