"""``sparse-attn engine MODEL.onnx [--backend tensorrt|onnxruntime] -o OUT`` (docs/spec.md)."""

from __future__ import annotations

import click

from sparse_attn import limits
from sparse_attn.cli._common import SEQ_LEN
from sparse_attn.errors import InvalidInputError


def _parse_batch(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3:
        raise InvalidInputError(
            f"--batch must be MIN,OPT,MAX (e.g. 1,1,8), got {limits.shorten(text, 40)}"
        )
    lo, opt, hi = (limits.parse_int(p.strip(), "--batch", 1, 1 << 16) for p in parts)
    if not lo <= opt <= hi:
        raise InvalidInputError(f"--batch needs MIN <= OPT <= MAX, got {text!r}")
    return lo, opt, hi


@click.command(name="engine", epilog="Contract: docs/spec.md.")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Engine file to write: .engine/.plan/.trt (TensorRT) or .onnx (ONNX Runtime); a "
    "JSON description goes to OUTPUT.json.",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "tensorrt", "onnxruntime"]),
    default="auto",
    show_default=True,
    help="tensorrt: TensorRT engine with the sparse-attn plugin (needs TensorRT and a GPU); "
    "onnxruntime: ONNX Runtime optimised model; auto: tensorrt when available.",
)
@click.option(
    "--batch",
    default="1,1,8",
    show_default=True,
    help="TensorRT profile batch sizes MIN,OPT,MAX.",
)
@click.option(
    "--seq-opt",
    type=SEQ_LEN,
    default=None,
    help="TensorRT profile 'opt' sequence length (default max_seq_len/2; min is 1, max from "
    "the model's metadata).",
)
@click.option(
    "--jit-plugin",
    is_flag=True,
    help="TensorRT: use the plugin's JIT (Python) implementation instead of the AOT PTX one.",
)
@click.option(
    "--opt-level",
    type=click.Choice(["basic", "extended", "all"]),
    default="extended",
    show_default=True,
    help="ONNX Runtime graph optimisation level.",
)
def command(model, output, backend, batch, seq_opt, jit_plugin, opt_level):
    """Build a TensorRT engine or an ONNX Runtime optimised model from an exported model."""
    from sparse_attn.engines import build_engine, default_backend, tensorrt_unavailable_reason
    from sparse_attn.errors import UnsupportedEnvironmentError

    if backend == "tensorrt":
        reason = tensorrt_unavailable_reason()
        if reason:
            raise UnsupportedEnvironmentError(
                f"--backend tensorrt: {reason}; use --backend onnxruntime"
            )
    chosen = default_backend() if backend == "auto" else backend
    if chosen == "tensorrt":
        opts = {"batch": _parse_batch(batch), "seq_opt": seq_opt, "aot": not jit_plugin}
    else:
        opts = {"opt_level": opt_level}
    info = build_engine(model, output, backend=chosen, **opts)
    what = (
        f"TensorRT {info.get('tensorrt_version')} engine on {info.get('gpu')}"
        if chosen == "tensorrt"
        else f"ONNX Runtime {info.get('onnxruntime_version')} optimised model"
    )
    click.echo(f"wrote {output} ({what}, {info.get('build_seconds')} s) and {output}.json")
