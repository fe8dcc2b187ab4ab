"""``sparse-attn check MODEL [--backend B] [--json] [--save-outputs F]`` (docs/spec.md).

Runs the backend and the PyTorch reference (the eager model rebuilt from the file's
metadata) on the same inputs and reports, per output, max abs/rel error, mismatch fraction,
cosine similarity, the worst element and the per-dtype tolerance (see
:mod:`sparse_attn.runtime.compare`). Exit code 0 when every output passes, 1 (one stderr line) when one fails,
2 for bad input.

``--save-outputs F`` writes the reference outputs as Polygraphy ``RunResults`` JSON and the
inputs next to it (``F`` with ``.inputs.json``), so Polygraphy can check the model itself::

    polygraphy run MODEL.onnx --onnxrt --load-inputs F.inputs.json --load-outputs F
"""

from __future__ import annotations

from pathlib import Path

import click

from sparse_attn.cli._common import SEED
from sparse_attn.errors import CheckFailedError
from sparse_attn.runtime.runtime import BACKENDS


@click.command("check", epilog="Contract and tolerances: docs/spec.md.")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="Backend under test (auto: ONNX Runtime for .onnx, TensorRT for an engine).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--save-outputs",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the reference outputs in Polygraphy's JSON format (inputs to F.inputs.json).",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of random inputs.")
@click.option(
    "--text", "texts", multiple=True, help="Text models: a text to check on (repeatable)."
)
@click.option(
    "--input-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Text models: texts to check on, one per line or JSON lines.",
)
def command(model, backend, as_json, save_outputs, seed, texts, input_file):
    """Check MODEL's accuracy on BACKEND against the PyTorch reference.

    A checkpoint export (sparse-attn export --model PATH) is checked against the unmodified
    Hugging Face model (transformers' eager attention and its own masks), by default on a long
    text cut beyond the model's largest window.
    """
    from sparse_attn.fileio import atomic_output, check_output_path
    from sparse_attn.runtime.compare import (
        check_model,
        dumps,
        format_report,
        polygraphy_inputs_path,
        save_polygraphy_inputs,
        save_polygraphy_outputs,
    )

    if save_outputs is not None:
        check_output_path(save_outputs, what="--save-outputs", suffixes=(".json",), inputs=[model])
        check_output_path(
            polygraphy_inputs_path(save_outputs), what="--save-outputs inputs", inputs=[model]
        )
    all_texts = list(texts)
    if input_file is not None:
        from sparse_attn.runtime.text import read_text_file

        all_texts += read_text_file(input_file)
    report, feeds, _, reference = check_model(model, backend, seed=seed, texts=all_texts or None)
    if save_outputs is not None:
        out_path, in_path = Path(save_outputs), polygraphy_inputs_path(save_outputs)
        with atomic_output(out_path, suffix=".json") as tmp_out:
            save_polygraphy_outputs(reference, tmp_out)
            with atomic_output(in_path, suffix=".json") as tmp_in:
                save_polygraphy_inputs(feeds, tmp_in)
        tol = next(iter(report["outputs"].values()), {}).get("tolerance", {})
        report["saved_outputs"] = str(out_path)
        report["saved_inputs"] = str(in_path)
        report["polygraphy_command"] = (
            f"polygraphy run {model} --onnxrt --load-inputs {in_path} --load-outputs {out_path}"
            + (f" --atol {tol['atol']:g} --rtol {tol['rtol']:g}" if tol else "")
        )
    if as_json:
        click.echo(dumps(report))
    else:
        click.echo(format_report(report))
        if save_outputs is not None:
            click.echo(f"reference outputs: {report['saved_outputs']}")
            click.echo(f"compare with: {report['polygraphy_command']}")
    if not report["passed"]:
        failed = [k for k, v in report["outputs"].items() if not v.get("passed")]
        raise CheckFailedError(
            f"accuracy check failed: output(s) {failed} of {model} on {report['backend']} are "
            f"outside the {report['dtype']} tolerance of the reference ({report['reference']})"
        )
