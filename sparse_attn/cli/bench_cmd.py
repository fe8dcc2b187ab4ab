"""``sparse-attn bench [--quick] [--out DIR] [...] [--json]``: benchmarks against the alternatives.

Thin: parses options into a :class:`sparse_attn.bench.BenchConfig`, calls
:func:`sparse_attn.bench.run_bench`, prints the markdown report (or the JSON with
``--json``). Progress lines go to stderr so that stdout stays machine-readable.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from sparse_attn import limits
from sparse_attn.bench.gemma import IMPLS as PREFILL_IMPLS
from sparse_attn.bench.impls import IMPLS
from sparse_attn.cli._common import BLOCK_SIZE, HEAD_DIM, NUM_HEADS, BoundedInt
from sparse_attn.errors import InvalidInputError
from sparse_attn.models.family import LOGITS_MODES


def _int_list(name: str, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    vals = tuple(
        limits.parse_int(x, f"--{name}", 1, limits.MAX_SEQ_LEN)
        for x in text.replace(" ", "").split(",")
        if x
    )
    if not vals or min(vals) < 1:
        raise InvalidInputError(f"--{name} needs integers >= 1, got {text!r}")
    return vals


def _name_list(name: str, text: str | None, known) -> tuple[str, ...] | None:
    if text is None:
        return None
    vals = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [v for v in vals if v not in known]
    if bad or not vals:
        raise InvalidInputError(
            f"--{name}: unknown name(s) {bad or [text]}; choose from {', '.join(known)}"
        )
    return vals


@click.command("bench")
@click.option("--quick", is_flag=True, help="Smoke run in under 2 minutes (S=1024, few repeats).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("artifacts/bench"),
    show_default=True,
    help="Output folder: bench.json, bench.md, attention_time_vs_S.png, models/.",
)
@click.option(
    "--models-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Cache of exported ONNX models (default OUT/models); reused across runs.",
)
@click.option("--sizes", help="Comma-separated sequence lengths (default 1024,...,16384).")
@click.option(
    "--pattern",
    "patterns",
    multiple=True,
    help="Pattern spec or preset (repeatable); default: the reference config and 4 presets.",
)
@click.option("--causal", is_flag=True, help="Apply the causal modifier to every --pattern.")
@click.option(
    "--impls",
    help="Comma-separated implementations (default: all): " + ", ".join(IMPLS) + ".",
)
@click.option(
    "--suites",
    help="Comma-separated suites: attention,model,layout,serve,generate (default: all but "
    "serve and generate).",
)
@click.option("--num-heads", type=NUM_HEADS, help="Heads H (default 8).")
@click.option("--head-dim", type=HEAD_DIM, help="Head dim D (default 64).")
@click.option("--block-size", type=BLOCK_SIZE, help="Layout block size (default 64).")
@click.option(
    "--threads", type=BoundedInt(1, 256), help="Intra-op threads of torch and ORT (default 2)."
)
@click.option("--max-cell-gib", type=float, help="Skip cells estimated above this (default 6).")
@click.option(
    "--repeats",
    type=BoundedInt(1, 10000),
    help="Minimum timed repeats per cell (default 3; quick 2).",
)
@click.option(
    "--long-layers", type=BoundedInt(1, 64), help="Layers of the long encoder (default 2)."
)
@click.option("--gen-lengths", help="generate suite: prompt lengths (default 512,2048,8192).")
@click.option("--gen-model", help="generate suite: checkpoint or built-in (default gemma3-270m).")
@click.option(
    "--gen-new-tokens", type=BoundedInt(1, 100000), help="generate suite: new tokens (default 32)."
)
@click.option(
    "--prefill-lengths",
    help="model suite: Gemma prefill lengths (default 2048,8192,32768; quick 512; 0 = none).",
)
@click.option(
    "--prefill-impls",
    help="model suite: prefill implementations (default all): " + ", ".join(PREFILL_IMPLS) + ".",
)
@click.option("--prefill-model", help="model suite: checkpoint or built-in (default gemma3-270m).")
@click.option(
    "--prefill-repeats",
    type=BoundedInt(1, 1000),
    help="model suite: timed prefills per cell below S=8192 (default 3; 1 at larger S).",
)
@click.option(
    "--prefill-logits",
    type=click.Choice(LOGITS_MODES),
    help="model suite: logits of the last position (default, a generation prefill) or of all.",
)
@click.option("--no-plot", is_flag=True, help="Do not write the PNG plot.")
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON instead of markdown.")
def command(
    quick,
    out_dir,
    models_dir,
    sizes,
    patterns,
    causal,
    impls,
    suites,
    num_heads,
    head_dim,
    block_size,
    threads,
    max_cell_gib,
    repeats,
    long_layers,
    gen_lengths,
    gen_model,
    gen_new_tokens,
    prefill_lengths,
    prefill_impls,
    prefill_model,
    prefill_repeats,
    prefill_logits,
    no_plot,
    as_json,
):
    """Benchmark sparse attention against SDPA, FlexAttention and ONNX Runtime.

    Prints a markdown table (median ms, spread, speedup over dense SDPA, fraction of the
    ideal, GFLOP/s against the measured GEMM ceiling, peak memory) and writes JSON,
    markdown and a log-log plot of time against S to --out. Timings depend on the load of
    the machine: the load average is recorded in the JSON.
    """
    from sparse_attn.bench import SUITES, BenchConfig, run_bench

    cfg = BenchConfig.quick_config() if quick else BenchConfig.full()
    upd: dict = {}
    if (s := _int_list("sizes", sizes)) is not None:
        upd["sizes"] = s
    if patterns:
        upd["patterns"] = tuple((p, bool(causal)) for p in patterns)
        upd["layout_patterns"] = tuple(patterns)
    elif causal:
        raise InvalidInputError("--causal applies to --pattern; give at least one --pattern")
    if (i := _name_list("impls", impls, list(IMPLS))) is not None:
        upd["impls"] = i
    if (su := _name_list("suites", suites, SUITES)) is not None:
        upd["suites"] = su
    if (gl := _int_list("gen-lengths", gen_lengths)) is not None:
        upd["generate_lengths"] = gl
    if prefill_lengths is not None and prefill_lengths.strip() == "0":
        upd["prefill_lengths"] = ()
    elif (pl := _int_list("prefill-lengths", prefill_lengths)) is not None:
        upd["prefill_lengths"] = pl
    if (pi := _name_list("prefill-impls", prefill_impls, PREFILL_IMPLS)) is not None:
        upd["prefill_impls"] = pi
    if prefill_model is not None:
        upd["prefill_model"] = prefill_model
    if prefill_repeats is not None:
        upd["prefill_repeats"] = prefill_repeats
    if prefill_logits is not None:
        upd["prefill_logits"] = prefill_logits
    if gen_model is not None:
        upd["generate_model"] = gen_model
    if gen_new_tokens is not None:
        if gen_new_tokens < 1:
            raise InvalidInputError(f"--gen-new-tokens must be >= 1, got {gen_new_tokens}")
        upd["generate_new_tokens"] = gen_new_tokens
    for key, val in (
        ("num_heads", num_heads),
        ("head_dim", head_dim),
        ("block_size", block_size),
        ("threads", threads),
        ("long_layers", long_layers),
    ):
        if val is not None:
            if val < 1:
                raise InvalidInputError(f"--{key.replace('_', '-')} must be >= 1, got {val}")
            upd[key] = val
    if max_cell_gib is not None:
        if not max_cell_gib > 0 or max_cell_gib == float("inf"):
            raise InvalidInputError(f"--max-cell-gib must be > 0, got {max_cell_gib}")
        upd["max_cell_gib"] = max_cell_gib
    cfg = replace(cfg, **upd)
    if repeats is not None:
        if repeats < 1:
            raise InvalidInputError(f"--repeats must be >= 1, got {repeats}")
        cfg = replace(
            cfg,
            policy=replace(
                cfg.policy, min_repeats=repeats, max_repeats=max(repeats, cfg.policy.max_repeats)
            ),
        )

    def log(msg: str) -> None:
        click.echo(msg, err=True)

    result = run_bench(cfg, out_dir, log=log, plot=not no_plot, models_dir=models_dir)
    if as_json:
        click.echo(json.dumps(result, default=str))
    else:
        from sparse_attn.bench.report import markdown_report

        click.echo(markdown_report(result))
        click.echo(
            f"\nwrote {out_dir / 'bench.json'}, {out_dir / 'bench.md'}"
            + (f", {result['plot']}" if result.get("plot") else "")
        )
