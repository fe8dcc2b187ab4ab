"""``sparse-attn export``: export a model family with sparse attention to ONNX (docs/spec.md).

Common options are declared here; family-specific ones (``--num-heads``/``--head-dim`` for
``attention``, ...) come from each family module's ``CLI_OPTIONS`` and become ordinary click
options of this command (:func:`family_options`). An option of another family than the chosen
``--model`` is refused; only options given on the command line reach the family's
``export_onnx``, so its own defaults apply to the others.
"""

from __future__ import annotations

import importlib
import math

import click

from sparse_attn import limits
from sparse_attn.cli._common import BLOCK_SIZE, HEAD_DIM, NUM_HEADS, SEQ_LEN, BoundedInt
from sparse_attn.errors import InvalidInputError
from sparse_attn.export import FAMILIES
from sparse_attn.models.family import LOGITS_MODES

#: Bounded click types of family options by name (others: an integer in 0..MAX_INT).
_INT_TYPES = {
    "num_heads": NUM_HEADS,
    "num_kv_heads": NUM_HEADS,
    "head_dim": HEAD_DIM,
    "value_dim": HEAD_DIM,
}


class FiniteFloat(click.ParamType):
    """A float that is finite (no nan/inf), written in plain decimal or exponent notation."""

    name = "float"

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{limits.shorten(value, 40)} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return x


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _families_options() -> dict[str, dict]:
    """``{family: CLI_OPTIONS}`` of every family module that imports."""
    out = {}
    for name, module in FAMILIES.items():
        try:
            out[name] = dict(getattr(importlib.import_module(module), "CLI_OPTIONS", {}))
        except Exception:  # noqa: BLE001 - help must not fail because one family is broken
            out[name] = {}
    return out


def family_options() -> tuple[list[click.Option], dict[str, set[str]]]:
    """Click options for the union of the families' ``CLI_OPTIONS``.

    Returns:
        ``(options, owners)``: the options (default ``None`` = not given) and, per option's
        Python name, the families that take it.
    """
    owners: dict[str, set[str]] = {}
    specs: dict[str, dict] = {}
    for family, opts in _families_options().items():
        for key, spec in opts.items():
            owners.setdefault(key, set()).add(family)
            specs.setdefault(key, spec)
    options = []
    for key, spec in specs.items():
        kind = spec.get("type", "str")
        who = ", ".join(sorted(owners[key]))
        helptext = f"[{who}] {spec.get('help', '')}"
        if kind == "bool":
            decl = f"{_flag(key)}/--no-{_flag(key)[2:]}"
            options.append(click.Option([decl, key], default=None, help=helptext))
            continue
        ptype = {
            "int": _INT_TYPES.get(key, BoundedInt(0, limits.MAX_INT)),
            "float": FiniteFloat(),
        }.get(kind, click.STRING)
        options.append(click.Option([_flag(key), key], type=ptype, default=None, help=helptext))
    return options, owners


OPTIONS, OWNERS = family_options()


def _export_command(cmd: click.Command) -> click.Command:
    """Add the families' options after the common ones."""
    cmd.params.extend(OPTIONS)
    return cmd


@_export_command
@click.command("export", epilog="Family options are marked [family]. Contract: docs/spec.md.")
@click.option(
    "--model",
    "model_name",
    default="attention",
    show_default=True,
    help="Model family (" + ", ".join(f for f in FAMILIES if f != "hf") + "), built-in model "
    "(gemma3-270m) or a Hugging Face checkpoint directory (config.json, *.safetensors).",
)
@click.option("--pattern", default=None, help="Pattern spec or preset name (docs/patterns.md).")
@click.option(
    "--layers",
    default=None,
    help="Checkpoints: layers --pattern replaces: sliding, full, all (default) or 0-4,6.",
)
@click.option("--block-size", type=BLOCK_SIZE, default=None, help="Kernel block size (tokens).")
@click.option(
    "--max-seq-len",
    type=SEQ_LEN,
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
    "--task",
    type=click.Choice(["forward", "generate"]),
    default="forward",
    show_default=True,
    help="generate: a causal LM checkpoint as a directory with prefill + decode graphs and a "
    "window-bounded KV cache (docs/generation.md); -o is then a directory.",
)
@click.option(
    "--logits",
    type=click.Choice(LOGITS_MODES),
    default=None,
    help="Causal LM checkpoints: logits of every position (all, default) or of each row's "
    "last real token only (last: [batch, 1, vocab], a prefill's output).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help="Output .onnx file (--task generate: directory).",
)
@click.pass_context
def command(
    ctx,
    model_name,
    pattern,
    layers,
    block_size,
    max_seq_len,
    causal,
    dtype,
    task,
    logits,
    output,
    **family,
):
    """Export a model with sparse attention to one ONNX file.

    The file carries sparse_attn::BlockSparseAttention nodes (mapped by TensorRT onto the
    plugin) plus a block-sparse function body of standard ops (run by ONNX Runtime and
    onnx.reference). Export-time checks: onnx.checker, strict shape inference, symbolic
    batch/seq_len dims, and an ONNX Runtime run compared with PyTorch (one line).
    """
    from sparse_attn.cli import show_info

    ctx.with_resource(show_info("sparse_attn.export"))  # the export check line, on stdout
    from sparse_attn.export import get_family
    from sparse_attn.fileio import check_output_path

    given = {k: v for k, v in family.items() if v is not None}
    if task == "generate":
        from sparse_attn.cli.generate_cmd import export_for_generation

        if logits is not None:
            raise InvalidInputError(
                "--logits does not apply to --task generate (its prefill returns the last "
                "position's logits)"
            )
        export_for_generation(
            model_name, given, pattern, layers, block_size, max_seq_len, causal, dtype, output
        )
        return
    if model_name not in FAMILIES or model_name == "hf":
        from sparse_attn.cli.models_cli import export_checkpoint

        check_output_path(output, what="-o", suffixes=(".onnx",))
        path = export_checkpoint(
            model_name,
            given,
            pattern=pattern,
            layers=layers,
            block_size=block_size,
            max_seq_len=max_seq_len,
            causal=causal,
            dtype=dtype,
            output=output,
            logits=logits,
        )
        click.echo(f"wrote {path}")
        return
    if logits is not None:
        raise InvalidInputError(
            f"--logits applies to causal LM checkpoints, not to --model {model_name}"
        )
    if layers is not None:
        raise InvalidInputError(
            f"--layers applies to checkpoint exports, not to --model {model_name}"
        )
    foreign = sorted(k for k in given if model_name not in OWNERS.get(k, ()))
    if foreign:
        known = sorted(_flag(k) for k, fams in OWNERS.items() if model_name in fams)
        raise click.UsageError(
            f"option(s) {', '.join(_flag(k) for k in foreign)} are not known for --model "
            f"{model_name} (its options: {', '.join(known) or 'none'})",
            ctx,
        )
    if block_size is None:
        raise InvalidInputError("--block-size is required (e.g. --block-size 64)")
    check_output_path(output, what="-o", suffixes=(".onnx",))
    fam = get_family(model_name)
    path = fam.export_onnx(
        output,
        pattern=pattern,
        block_size=block_size,
        max_seq_len=max_seq_len,
        dtype=dtype,
        causal=causal,
        **given,
    )
    click.echo(f"wrote {path}")
