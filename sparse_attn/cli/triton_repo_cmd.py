"""``sparse-attn triton-repo MODEL -o REPO``: a Triton Inference Server model repository.

Thin: calls :func:`sparse_attn.serving.triton_repo.write_repository` and prints what it
wrote. See ``docs/serving.md``.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("triton-repo")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "repo",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Repository folder (created; other models in it are kept).",
)
@click.option("--name", help="Model name in the repository (default: the file's stem).")
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Rows per batch of Triton's dynamic batcher.",
)
@click.option(
    "--max-delay-ms",
    type=click.FloatRange(0, 60_000),
    default=5.0,
    show_default=True,
    help="Longest queue delay of the dynamic batcher (ms).",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Most queued requests (more are rejected).",
)
@click.option(
    "--instances",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Model instances (instance_group count).",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "gpu"]),
    default="cpu",
    show_default=True,
    help="Instance kind of ONNX models (engines always run on the GPU).",
)
@click.option(
    "--python-backend",
    is_flag=True,
    help="Also write <name>_python: Triton's python backend over sparse_attn.Runtime.",
)
@click.option("--force", is_flag=True, help="Replace existing model folders of the same name.")
def command(
    model,
    repo,
    name,
    max_batch_size,
    max_delay_ms,
    max_queue,
    instances,
    device,
    python_backend,
    force,
):
    """Write REPO/<name>/config.pbtxt and 1/model.onnx (or 1/model.plan for an engine)."""
    from sparse_attn.serving.triton_repo import write_repository

    written = write_repository(
        model,
        repo,
        name=name,
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        max_queue=max_queue,
        instances=instances,
        device=device,
        python_backend=python_backend,
        force=force,
    )
    for cfg in written:
        files = sorted(p.relative_to(repo) for p in cfg.parent.rglob("*") if p.is_file())
        click.echo(f"wrote {', '.join(str(f) for f in files)} in {repo}")
