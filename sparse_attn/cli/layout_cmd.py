"""``sparse-attn layout SPEC --seq-len S --block-size B ...`` (docs/spec.md). Thin wrapper."""

from __future__ import annotations

import json

import click

from sparse_attn import limits
from sparse_attn.cli._common import BLOCK_SIZE, NUM_HEADS, SEQ_LEN
from sparse_attn.errors import InvalidInputError

#: Largest ``H * S * S`` (bytes of the boolean mask) ``--save-mask`` writes.
MAX_MASK_BYTES = limits.MAX_TOKEN_MASK_BYTES


def _help_epilog() -> str:
    from sparse_attn.patterns import ATOMS, PRESETS

    lines = ["\b", "Atoms (V(i, j): key j visible from query i; positions 0-based):"]
    for a in ATOMS.values():
        lines.append(f"  {a.usage():44s} {a.formula}")
    lines += ["  causal" + " " * 39 + "modifier: intersect the union with j <= i", ""]
    lines += ["\b", "Presets (name or name(param=value, ...); defaults shown):"]
    for p in PRESETS.values():
        lines.append(f"  {p.defaults()}")
        lines.append(f"      {p.summary}")
        lines.append(f"      = {p()}")
    lines += [
        "",
        "\b",
        "Examples:",
        "  sparse-attn layout 'band(w=256) | global(n=64)' --seq-len 8192 --block-size 64",
        "  sparse-attn layout bigbird --seq-len 4096 --block-size 64 --json",
        "  sparse-attn layout 'sliding_window(w=512)' --seq-len 2048 --block-size 64 --plot sw.png",
        "",
        "\b",
        f"Limits: seq_len <= {limits.MAX_SEQ_LEN}, block_size <= {limits.MAX_BLOCK_SIZE}, "
        f"num_heads <= {limits.MAX_HEADS}, nQB <= {limits.MAX_BLOCKS}; the full contract and",
        "limits table: docs/spec.md",
    ]
    return "\n".join(lines)


class _LazyEpilogCommand(click.Command):
    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.epilog = _help_epilog()
        super().format_epilog(ctx, formatter)


@click.command(
    "layout",
    cls=_LazyEpilogCommand,
    context_settings={"max_content_width": 120},
)
@click.argument("spec", required=False)
@click.option(
    "--seq-len", "seq_len", type=SEQ_LEN, default=None, help="Sequence length S (tokens)."
)
@click.option(
    "--block-size",
    "block_size",
    type=BLOCK_SIZE,
    default=None,
    help="Kernel block size B (tokens).",
)
@click.option(
    "--model",
    "model",
    default=None,
    help="Per-layer patterns of a checkpoint directory or built-in model (instead of SPEC).",
)
@click.option(
    "--max-seq-len", "max_seq_len", type=SEQ_LEN, default=None, help="With --model: max_seq_len."
)
@click.option("--num-heads", "num_heads", type=NUM_HEADS, default=1, show_default=True)
@click.option("--causal", is_flag=True, help="Intersect with j <= i (same as '| causal').")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the statistics.")
@click.option(
    "--save-mask",
    "save_mask",
    type=click.Path(dir_okay=False),
    help="Write the boolean token mask [H, S, S] with numpy.save (a .npy file).",
)
@click.option(
    "--plot",
    "plot",
    type=click.Path(dir_okay=False),
    help="Write a PNG heatmap of the block layout per head (full / partial / empty; .png).",
)
def command(
    spec, seq_len, block_size, model, max_seq_len, num_heads, causal, as_json, save_mask, plot
):
    """Compile pattern SPEC to a block layout; print statistics, save the mask, plot it.

    SPEC is a spec string such as 'band(w=256) | global(n=64) | causal' or a preset name with
    optional overrides such as 'bigbird(r=2)'. The expanded spec is printed. With --model
    PATH|NAME instead of SPEC it prints the model's per-layer patterns (nothing exported).
    """
    from sparse_attn.fileio import atomic_output, check_output_path
    from sparse_attn.layout import compile_layout, plot_layout
    from sparse_attn.patterns import parse_pattern

    if model is not None:
        if spec is not None or save_mask or plot or causal:
            raise InvalidInputError(
                "--model takes no SPEC, --causal, --save-mask or --plot; use sparse-attn "
                "layout --model PATH [--max-seq-len S] [--block-size B] [--json]"
            )
        from sparse_attn.cli.models_cli import layout_of_model

        layout_of_model(
            model, max_seq_len=max_seq_len or seq_len, block_size=block_size, as_json=as_json
        )
        return
    if spec is None:
        raise InvalidInputError("missing SPEC (or --model PATH); see sparse-attn layout --help")
    for name, v in (("--seq-len", seq_len), ("--block-size", block_size)):
        if v is None:
            raise InvalidInputError(f"{name} is required with a SPEC")

    pattern = parse_pattern(spec)
    if save_mask is not None:
        check_output_path(save_mask, what="--save-mask", suffixes=(".npy",))
    if plot is not None:
        check_output_path(plot, what="--plot", suffixes=(".png",))
        nb = -(-seq_len // block_size)
        if nb > limits.MAX_PLOT_BLOCKS:
            raise InvalidInputError(
                f"--plot draws at most {limits.MAX_PLOT_BLOCKS} blocks per side, the layout has "
                f"{nb}: use a larger --block-size or a shorter --seq-len"
            )
    if save_mask is not None:
        need = num_heads * seq_len * seq_len
        if need > MAX_MASK_BYTES:
            raise InvalidInputError(
                f"--save-mask would write a {need / 2**30:.1f} GiB mask (H*S*S bytes) and needs as "
                f"much memory; the limit is {MAX_MASK_BYTES / 2**30:.0f} GiB: use a shorter "
                "--seq-len or fewer --num-heads"
            )
    layout = compile_layout(pattern, seq_len, block_size, num_heads=num_heads, causal=causal)
    st = layout.stats()
    st["preset"] = pattern.name
    try:
        if save_mask is not None:
            import numpy as np

            with atomic_output(save_mask) as tmp, open(tmp, "wb") as f:
                np.save(f, layout.token_mask())
            st["mask_file"] = str(save_mask)
        if plot is not None:
            plot_layout(layout, plot)
            st["plot_file"] = str(plot)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot write {exc.filename or save_mask or plot}: {exc.strerror or exc}; "
            "check the output path"
        ) from None
    if as_json:
        click.echo(json.dumps(st))
        return
    _print_summary(st)


def _print_summary(st: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sparse-attn layout", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    if st.get("preset"):
        table.add_row("preset", st["preset"])
    table.add_row("spec", st["spec"])
    for k in ("seq_len", "block_size", "num_heads", "num_blocks"):
        table.add_row(k, str(st[k]))
    table.add_row("density_tokens", f"{st['density_tokens']:.6f}")
    table.add_row("density_blocks", f"{st['density_blocks']:.6f}")
    for k in ("full_blocks", "partial_blocks", "num_masks", "causal", "requires_static_seq_len"):
        table.add_row(k, str(st[k]))
    for k in ("mask_file", "plot_file"):
        if k in st:
            table.add_row(k, st[k])
    Console(width=120).print(table)
