"""``sparse-attn export``: export a model family with sparse attention to ONNX (SPEC section 3).

Common options are declared here; family-specific ones (``--num-heads``/``--head-dim`` for
``attention``, ...) come from the family module's ``CLI_OPTIONS`` and are passed through
to its ``export_onnx`` (see ``sparse_attn/export/__init__.py``).
"""

from __future__ import annotations

import importlib

import click

from sparse_attn.errors import InvalidInputError
from sparse_attn.export import FAMILIES

_TYPES = {"int": int, "float": float, "str": str}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_family_options(args: list[str], options: dict, family: str) -> dict:
    """Parse ``--opt value`` / ``--opt=value`` / ``--flag`` / ``--no-flag`` for one family.

    Args:
        args: the command-line tokens click did not consume.
        options: the family's ``CLI_OPTIONS``.
        family: family name (for messages).

    Returns:
        ``{python_name: value}`` for the options given (defaults are the family's).

    Raises:
        click.UsageError: unknown option, missing or badly typed value (exit code 2).
    """
    flags = {_flag(k): k for k in options}
    negs = {"--no-" + _flag(k)[2:]: k for k, spec in options.items() if spec.get("type") == "bool"}
    out: dict = {}
    i = 0
    while i < len(args):
        tok = args[i]
        name, eq, inline = tok.partition("=")
        if name in negs and not eq:
            out[negs[name]] = False
            i += 1
            continue
        if name not in flags:
            known = ", ".join(sorted(flags)) or "none"
            raise click.UsageError(
                f"option {tok!r} is not known for --model {family} (its options: {known})"
            )
        key = flags[name]
        kind = options[key].get("type", "str")
        if kind == "bool" and not eq:
            out[key] = True
            i += 1
            continue
        if eq:
            raw = inline
            i += 1
        else:
            if i + 1 >= len(args):
                raise click.UsageError(f"option {name} needs a value")
            raw = args[i + 1]
            i += 2
        try:
            if kind == "bool":
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(raw)
                out[key] = raw.lower() in ("1", "true", "yes")
            else:
                out[key] = _TYPES[kind](raw)
        except ValueError:
            raise click.UsageError(f"option {name} expects a {kind} value, got {raw!r}") from None
    return out


def _family_help() -> str:
    lines = []
    for name, module in FAMILIES.items():
        try:
            opts = getattr(importlib.import_module(module), "CLI_OPTIONS", {})
        except Exception:  # noqa: BLE001 - help must not fail because one family is broken
            lines.append(f"  {name}: (not available)")
            continue
        parts = []
        for key, spec in opts.items():
            flag = _flag(key)
            if spec.get("type") == "bool":
                flag = f"{flag}/--no-{flag[2:]}"
            else:
                flag = f"{flag} {spec.get('type', 'str').upper()}"
            parts.append(f"{flag}: {spec.get('help', '')}")
        lines.append(f"  {name}: " + ("; ".join(parts) if parts else "no extra options"))
    return "\n".join(lines)


class _ExportCommand(click.Command):
    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        formatter.write_text("Family options (after the common ones):")
        with formatter.indentation():
            for line in _family_help().splitlines():
                formatter.write_text(line.strip())


@click.command(
    "export",
    cls=_ExportCommand,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.option(
    "--model",
    "model_name",
    type=click.Choice(list(FAMILIES)),
    default="attention",
    show_default=True,
    help="Model family to export.",
)
@click.option("--pattern", default=None, help="Pattern spec or preset name (SPEC section 1).")
@click.option("--block-size", type=int, default=None, help="Kernel block size (tokens).")
@click.option(
    "--max-seq-len",
    type=int,
    default=None,
    help="Maximum sequence length; S is dynamic in 1..max (family default if omitted).",
)
@click.option("--causal", is_flag=True, help="Intersect the pattern with j <= i.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="Graph precision (softmax/accumulation stay fp32 inside the op).",
)
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx file."
)
@click.pass_context
def command(ctx, model_name, pattern, block_size, max_seq_len, causal, dtype, output):
    """Export a model with sparse attention to one ONNX file.

    The file carries sparse_attn::BlockSparseAttention nodes (mapped by TensorRT onto the
    plugin) plus a block-sparse function body of standard ops (run by ONNX Runtime and
    onnx.reference). Export-time checks: onnx.checker, strict shape inference, symbolic
    batch/seq_len dims, and an ONNX Runtime run compared with PyTorch (one line).
    """
    from sparse_attn.export import get_family

    family = get_family(model_name)
    extra = parse_family_options(list(ctx.args), getattr(family, "CLI_OPTIONS", {}), model_name)
    if block_size is None:
        raise InvalidInputError("--block-size is required (e.g. --block-size 64)")
    path = family.export_onnx(
        output,
        pattern=pattern,
        block_size=block_size,
        max_seq_len=max_seq_len,
        dtype=dtype,
        causal=causal,
        **extra,
    )
    click.echo(f"wrote {path}")
