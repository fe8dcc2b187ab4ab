"""Reports of ``sparse-attn bench``: markdown tables, the targets check and the log-log plot.

All functions take the JSON-serialisable result dict of :func:`sparse_attn.bench.run_bench`
(schema ``SCHEMA``) and never re-measure anything.
"""

from __future__ import annotations

import math
from pathlib import Path

from sparse_attn.bench.attention import REFERENCE_SPEC
from sparse_attn.bench.impls import IMPLS

SCHEMA = "sparse-attn-bench/1"

#: The targets table: median ms on the reference machine kind for REFERENCE_SPEC,
#: fp32, B=1, H=8, D=64, 2 threads. None = n/a there.
TARGETS_MS = {
    4096: {"sdpa_dense": 227, "flex_compiled": 78, "ort_dense": 324, "ideal": 34},
    8192: {"sdpa_dense": 917, "flex_compiled": 149, "ort_dense": 1120, "ideal": 70},
    16384: {"sdpa_dense": 3735, "flex_compiled": 355, "ort_dense": None, "ideal": 145},
}


def _fmt(x, digits: int = 1, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and abs(x) >= 1000:
        return f"{x:,.0f}{suffix}"
    return f"{x:.{digits}f}{suffix}"


def _cells(result: dict) -> list[dict]:
    return list(result.get("attention", {}).get("cells", []))


def _patterns(cells: list[dict]) -> list[str]:
    seen: list[str] = []
    for c in cells:
        if c["pattern"] not in seen:
            seen.append(c["pattern"])
    return seen


def summary_table(result: dict) -> str:
    """Compact markdown table per pattern: rows S, columns implementations (median ms)."""
    cells = _cells(result)
    out = []
    for pat in _patterns(cells):
        pc = [c for c in cells if c["pattern"] == pat]
        impls = [n for n in IMPLS if any(c["impl"] == n for c in pc)]
        sizes = sorted({c["seq_len"] for c in pc})
        causal = any(c.get("causal") for c in pc)
        out.append(f"#### `{pat}`{' (causal)' if causal else ''}: median ms\n")
        out.append(
            "| S | density | "
            + " | ".join(IMPLS[n].label for n in impls)
            + " | ideal = SDPA dense x density |"
        )
        out.append("|---" * (len(impls) + 3) + "|")
        for s in sizes:
            row = {c["impl"]: c for c in pc if c["seq_len"] == s}
            dens = next((c.get("density_tokens") for c in row.values()), None)
            ideal = next((c.get("ideal_ms") for c in row.values() if c.get("ideal_ms")), None)
            vals = []
            for n in impls:
                c = row.get(n)
                if c is None:
                    vals.append("")
                elif c["status"] == "ok":
                    vals.append(_fmt(c["median_ms"]))
                else:
                    vals.append("n/a")
            out.append(f"| {s} | {_fmt(dens, 3)} | " + " | ".join(vals) + f" | {_fmt(ideal)} |")
        out.append("")
    return "\n".join(out)


def detail_table(result: dict) -> str:
    """Full markdown table: one row per cell with every derived figure, n/a reasons."""
    cells = _cells(result)
    head = (
        "| pattern | S | implementation | median ms | IQR ms | min-max ms | n | CPU ms "
        "| speedup vs dense | fraction of ideal | GFLOP/s | % GEMM | peak MiB | max abs diff |"
    )
    out = [head, "|---" * 14 + "|"]
    for c in cells:
        if c["status"] != "ok":
            out.append(
                f"| `{c['pattern']}` | {c['seq_len']} | {c['label']} | n/a ({c['reason']}) "
                "| | | | | | | | | | |"
            )
            continue
        gf = c.get("gemm_fraction")
        diff = c.get("max_abs_diff")
        out.append(
            f"| `{c['pattern']}` | {c['seq_len']} | {c['label']}{' *' if c.get('shared') else ''} "
            f"| {_fmt(c['median_ms'], 2)} | {_fmt(c['q3_ms'] - c['q1_ms'], 2)} "
            f"| {_fmt(c['min_ms'], 1)}-{_fmt(c['max_ms'], 1)} | {c['repeats']} "
            f"| {_fmt(c.get('cpu_median_ms'), 1)} "
            f"| {_fmt(c.get('speedup_vs_dense'), 2)} | {_fmt(c.get('fraction_of_ideal'), 2)} "
            f"| {_fmt(c.get('gflops'), 1)} | {_fmt(None if gf is None else 100 * gf, 0)} "
            f"| {_fmt(c.get('peak_mem_mib'), 0)} "
            f"| {'-' if diff is None else f'{diff:.1e}'} |"
        )
        if c.get("note"):
            out[-1] = out[-1].replace(f"| {c['label']}", f"| {c['label']} ({c['note']})", 1)
    out.append(
        "\n`*` = pattern-independent baseline measured once per S and repeated in each "
        "pattern's rows. CPU ms = median CPU time of the process per call (all threads; about "
        "threads x median on unshared cores, less when other processes took the cores). "
        "GFLOP/s counts `4 S^2 D H` for dense work and `4 S^2 D H x density` "
        "for the pattern's useful work (see docs/bench.md)."
    )
    return "\n".join(out)


def targets_check(result: dict) -> dict:
    """Compare the reference configuration with the targets table and claims.

    Returns ``{"rows": [...], "claims": [...]}``; each claim has ``text``, ``status``
    (``"met"``, ``"not met"`` or ``"not measured"``) and ``detail``.
    """
    cells = [c for c in _cells(result) if c["pattern"] == REFERENCE_SPEC]
    by = {(c["seq_len"], c["impl"]): c for c in cells}

    def ms(s, n, key="median_ms"):
        c = by.get((s, n))
        return c.get(key) if c and c["status"] == "ok" else None

    keys = ("sdpa_dense", "flex_compiled", "ort_dense", "ours_torch", "ours_torch_pure")
    keys += ("ours_onnx_ort",)
    rows = []
    for s in sorted({c["seq_len"] for c in cells}):
        ideal = next(
            (c.get("ideal_ms") for c in cells if c["seq_len"] == s and c.get("ideal_ms")), None
        )
        rows.append(
            {
                "seq_len": s,
                "measured": {
                    "sdpa_dense": ms(s, "sdpa_dense"),
                    "flex_compiled": ms(s, "flex_compiled"),
                    "ort_dense": ms(s, "ort_dense"),
                    "ideal": ideal,
                    "ours_torch": ms(s, "ours_torch"),
                    "ours_torch_pure": ms(s, "ours_torch_pure"),
                    "ours_onnx_ort": ms(s, "ours_onnx_ort"),
                },
                "target": TARGETS_MS.get(s),
            }
        )
        dense_cpu = ms(s, "sdpa_dense", "cpu_equiv_ms")
        dens = next((c.get("density_tokens") for c in cells if c["seq_len"] == s), None)
        rows[-1]["measured_cpu_equiv"] = {k: ms(s, k, "cpu_equiv_ms") for k in keys}
        rows[-1]["measured_cpu_equiv"]["ideal"] = (
            dense_cpu * dens if dense_cpu is not None and dens is not None else None
        )
    claims = _claims(rows, ms, "median_ms", "measured")
    for wall, cpu in zip(
        claims, _claims(rows, ms, "cpu_equiv_ms", "measured_cpu_equiv"), strict=True
    ):
        wall["status_cpu_equiv"], wall["detail_cpu_equiv"] = cpu["status"], cpu["detail"]
    return {"rows": rows, "claims": claims}


def _claims(rows: list[dict], ms, key: str, view: str) -> list[dict]:
    """The benchmark's claims evaluated on one view (``median_ms`` or ``cpu_equiv_ms``)."""
    claims = []
    a, b = ms(4096, "ours_onnx_ort", key), ms(4096, "ort_dense", key)
    claims.append(
        {
            "text": "exported sparse attention in ORT at S=4096 >= 3x faster than ORT dense",
            "status": "not measured"
            if a is None or b is None
            else ("met" if b / a >= 3 else "not met"),
            "detail": "" if a is None or b is None else f"{b:.1f} / {a:.1f} ms = {b / a:.2f}x",
        }
    )
    for s in (4096, 8192, 16384):
        ours = [x for n, impl in IMPLS.items() if impl.ours and (x := ms(s, n, key)) is not None]
        flex = ms(s, "flex_compiled", key)
        ideal = next((r[view]["ideal"] for r in rows if r["seq_len"] == s and view in r), None)
        best = min(ours) if ours else None
        if best is None or flex is None:
            st, det = "not measured", ""
        else:
            st = "met" if best < flex else "not met"
            det = f"best ours {best:.1f} ms vs FlexAttention {flex:.1f} ms"
        claims.append(
            {
                "text": f"S={s}: our best CPU path faster than FlexAttention",
                "status": st,
                "detail": det,
            }
        )
        if best is None or ideal is None:
            st, det = "not measured", ""
        else:
            st = "met" if best <= 1.5 * ideal else "not met"
            det = f"best ours {best:.1f} ms vs ideal {ideal:.1f} ms = {best / ideal:.2f}x"
        claims.append(
            {
                "text": f"S={s}: our best CPU path within 1.5x of the ideal",
                "status": st,
                "detail": det,
            }
        )
    return claims


def targets_table(result: dict) -> str:
    """Markdown: measured vs target (in parentheses) for the reference configuration."""
    chk = result.get("targets") or targets_check(result)
    cols = [
        "sdpa_dense",
        "flex_compiled",
        "ort_dense",
        "ideal",
        "ours_torch",
        "ours_torch_pure",
        "ours_onnx_ort",
    ]
    names = [
        "SDPA dense",
        "FlexAttention",
        "ORT dense",
        "ideal",
        "ours torch",
        "ours torch (pure PyTorch)",
        "ours ORT",
    ]
    out = [
        f"Reference config `{REFERENCE_SPEC}`: measured median ms (target in parentheses)\n",
        "| S | " + " | ".join(names) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for r in chk["rows"]:
        vals = []
        for col in cols:
            m = _fmt(r["measured"].get(col))
            t = (r["target"] or {}).get(col, "absent")
            vals.append(m if t == "absent" else f"{m} ({'n/a' if t is None else t})")
        out.append(f"| {r['seq_len']} | " + " | ".join(vals) + " |")
    out += [
        "",
        "Same cells, CPU time per call / threads (ms): the cost with the cores to itself, a "
        "lower bound of the idle wall time (an implementation that keeps fewer threads busy "
        "looks up to threads x too fast here); use it when the load average was high\n",
        "| S | " + " | ".join(names) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for r in chk["rows"]:
        cpu = r.get("measured_cpu_equiv") or {}
        out.append(f"| {r['seq_len']} | " + " | ".join(_fmt(cpu.get(c)) for c in cols) + " |")
    out.append("")
    for c in chk["claims"]:
        out.append(
            f"- {c['text']}: **{c['status']}** {c['detail']}; CPU-time view: "
            f"**{c.get('status_cpu_equiv', 'not measured')}** {c.get('detail_cpu_equiv', '')}"
        )
    return "\n".join(out)


def model_table(result: dict) -> str:
    """Markdown table of the model-level suite (empty string when absent)."""
    rows = result.get("model", {}).get("cells", [])
    if not rows:
        return ""
    out = [
        "| model | variant | S | median ms | IQR ms | min-max ms | n | speedup vs dense | peak MiB |",
        "|---" * 9 + "|",
    ]
    for c in rows:
        if c["status"] != "ok":
            out.append(
                f"| {c['model']} | {c['variant']} | {c.get('seq_len', '')} | n/a ({c['reason']}) | | | | | |"
            )
            continue
        out.append(
            f"| {c['model']} | {c['variant']} | {c['seq_len']} | {_fmt(c['median_ms'], 1)} "
            f"| {_fmt(c['q3_ms'] - c['q1_ms'], 1)} | {_fmt(c['min_ms'], 1)}-{_fmt(c['max_ms'], 1)} "
            f"| {c['repeats']} | {_fmt(c.get('speedup_vs_dense'), 2)} | {_fmt(c.get('peak_mem_mib'), 0)} |"
        )
    return "\n".join(out)


def layout_table(result: dict) -> str:
    """Markdown table of the layout-compile suite (empty string when absent)."""
    rows = result.get("layout_compile", {}).get("cells", [])
    if not rows:
        return ""
    out = [
        "| pattern | S | block | compile s | peak MiB | density (tokens) | stored blocks |",
        "|---" * 7 + "|",
    ]
    for c in rows:
        if c["status"] != "ok":
            out.append(
                f"| `{c['pattern']}` | {c['seq_len']} | {c.get('block_size', '')} | n/a ({c['reason']}) | | | |"
            )
            continue
        out.append(
            f"| `{c['pattern']}` | {c['seq_len']} | {c['block_size']} | {_fmt(c['compile_s'], 3)} "
            f"| {_fmt(c.get('peak_mem_mib'), 0)} | {_fmt(c.get('density_tokens'), 4)} "
            f"| {c.get('stored_blocks', '-')} |"
        )
    return "\n".join(out)


def markdown_report(result: dict) -> str:
    """The whole report as markdown (what ``bench`` prints and writes to ``bench.md``)."""
    m = result.get("machine", {})
    g = result.get("gemm") or {}
    parts = [
        "# sparse-attn bench",
        "",
        f"- machine: {m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} CPUs, "
        f"{result.get('threads', '?')} threads; torch {m.get('torch_version')}, "
        f"onnxruntime {m.get('onnxruntime_version')}; {m.get('time_utc', '')}",
        f"- load average (1, 5, 15 min) at start {m.get('loadavg_start')}, at end "
        f"{result.get('loadavg_end')}: other processes shared the CPUs when this is > 0",
        f"- fp32 GEMM ceiling (torch.mm {g.get('n', '?')}^2): {_fmt(g.get('gflops'))} GFLOP/s "
        f"wall clock, {_fmt(g.get('gflops_cpu'))} GFLOP/s from CPU time / threads",
        f"- peak memory: {result.get('memory_method', '')}",
        f"- wall time {_fmt(result.get('duration_s'), 0)} s (estimated "
        f"{_fmt(result.get('expected_duration_s'), 0)} s){'; --quick' if result.get('quick') else ''}",
        "",
    ]
    if _cells(result):
        parts += ["## Attention level", "", targets_table(result), "", summary_table(result)]
        parts += ["### All cells", "", detail_table(result), ""]
    mt = model_table(result)
    parts += [
        "## Model level",
        "",
        mt or f"n/a ({result.get('model', {}).get('reason', 'not run')})",
        "",
    ]
    lt = layout_table(result)
    parts += [
        "## Layout compile",
        "",
        lt or f"n/a ({result.get('layout_compile', {}).get('reason', 'not run')})",
        "",
    ]
    if result.get("serve"):
        from sparse_attn.bench.serve import markdown_table as serve_table

        parts += [
            "## Serving (MiniLM, requests/s and latency)",
            "",
            serve_table(result["serve"]),
            "",
        ]
    return "\n".join(parts)


def plot(result: dict, path: Path, view: str = "wall") -> Path | None:
    """Log-log PNG of time against S, one panel per pattern, one line per implementation.

    Args:
        view: ``"wall"`` (median wall-clock ms) or ``"cpu"`` (CPU time per call / threads,
            the CPU-time view).

    The dotted black line is the ideal (SDPA dense x token density, in the same view).
    Returns the path, or None when there is nothing to plot.
    """
    key = "median_ms" if view == "wall" else "cpu_equiv_ms"
    cells = [c for c in _cells(result) if c["status"] == "ok" and c.get(key) is not None]
    if not cells:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pats = _patterns(cells)
    ncol = min(3, len(pats))
    nrow = math.ceil(len(pats) / ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(max(9.0, 5.2 * ncol), 4.2 * nrow + 0.8), squeeze=False
    )
    palette = plt.get_cmap("tab10").colors
    colors = {name: palette[i % len(palette)] for i, name in enumerate(IMPLS)}
    for ax, pat in zip(axes.ravel(), pats, strict=False):
        pc = [c for c in cells if c["pattern"] == pat]
        for name, impl in IMPLS.items():
            pts = sorted((c["seq_len"], c[key]) for c in pc if c["impl"] == name)
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(
                    xs,
                    ys,
                    marker="o" if impl.ours else "s",
                    ms=6 if impl.ours else 4,
                    color=colors[name],
                    lw=2.2 if impl.ours else 1.2,
                    ls="-" if impl.ours else "--",
                    label=impl.label,
                )
        dense = {c["seq_len"]: c[key] for c in pc if c["impl"] == "sdpa_dense"}
        ideal = sorted(
            {
                (c["seq_len"], dense[c["seq_len"]] * c["density_tokens"])
                for c in pc
                if c["seq_len"] in dense
            }
        )
        if ideal:
            xs, ys = zip(*ideal, strict=True)
            ax.plot(
                xs, ys, color="black", ls=":", marker="x", lw=1.5, label="ideal (dense x density)"
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length S (tokens)")
        ax.set_ylabel("median time (ms)" if view == "wall" else "CPU time / threads (ms)")
        ax.set_title(pat if len(pat) < 40 else pat[:37] + "...", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.ravel()[len(pats) :]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    for ax in axes.ravel()[1 : len(pats)]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    cfg = result.get("attention", {}).get("config", {})
    fig.suptitle(
        ("Wall clock" if view == "wall" else "CPU-time view")
        + f": attention fp32, B={cfg.get('batch')}, H={cfg.get('num_heads')}, D={cfg.get('head_dim')}, "
        f"block {cfg.get('block_size')}, {result.get('threads')} threads "
        f"(load average at start {_fmt(result.get('machine', {}).get('loadavg_start', [None])[0])})"
    )
    fig.tight_layout(rect=(0, 0.06 + 0.035 * math.ceil(len(labels) / 4), 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
