"""``sparse-attn serve MODEL``: an HTTP inference server (v2 protocol, dynamic batching).

Thin: checks the options, builds :func:`sparse_attn.serving.create_app`, runs it under
uvicorn (:func:`sparse_attn.serving.run_server`), or deploys it on Ray Serve with ``--ray``
(:mod:`sparse_attn.serving.ray_app`). See ``docs/serving.md``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click

from sparse_attn.errors import InvalidInputError
from sparse_attn.runtime.runtime import BACKENDS


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port (0: any free port, printed on startup).",
)
@click.option("--name", help="Served model name (default: the model file's stem).")
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Most rows merged into one model call (1: no batching).",
)
@click.option(
    "--max-delay-ms",
    type=click.FloatRange(0, 60_000),
    default=5.0,
    show_default=True,
    help="Longest wait of a queued request for others to join its batch (ms).",
)
@click.option(
    "--max-padding",
    type=click.FloatRange(min=0),
    default=0.1,
    show_default=True,
    help="Most padding per merged call, as a fraction of its real tokens.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Most requests waiting; more are answered 503.",
)
@click.option(
    "--max-request-mb",
    type=click.FloatRange(min=0.001),
    default=64.0,
    show_default=True,
    help="Largest request body (MiB); larger ones are answered 413.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Batches run at once (threads).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="ONNX Runtime intra-op threads per batch (default OMP_NUM_THREADS).",
)
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option(
    "--graceful-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Longest wait for accepted requests at shutdown (s).",
)
@click.option("--ray", "use_ray", is_flag=True, help="Deploy on Ray Serve instead of uvicorn.")
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Ray Serve replicas (with --ray).",
)
@click.option(
    "--max-replicas",
    type=click.IntRange(min=1),
    help="Autoscale between --replicas and this many replicas (with --ray).",
)
@click.option(
    "--ray-address",
    help="Join a running Ray cluster (e.g. 'auto' after `ray start`); default: start one.",
)
def command(
    model,
    host,
    port,
    name,
    max_batch_size,
    max_delay_ms,
    max_padding,
    max_queue,
    max_request_mb,
    workers,
    threads,
    backend,
    graceful_timeout,
    use_ray,
    replicas,
    max_replicas,
    ray_address,
):
    """Serve MODEL (.onnx or engine) over HTTP: KServe/Triton v2 protocol, /v1/embeddings for
    text encoders, Prometheus /metrics. Binds 127.0.0.1 unless --host says otherwise.
    """
    from sparse_attn.serving.batching import BatchPolicy

    if not use_ray and (replicas != 1 or max_replicas is not None or ray_address):
        raise InvalidInputError("--replicas, --max-replicas and --ray-address need --ray")
    if max_replicas is not None and max_replicas < replicas:
        raise InvalidInputError(
            f"--max-replicas {max_replicas} is below --replicas {replicas}; give a larger one"
        )
    if not _is_loopback(host):
        click.echo(
            f"sparse-attn: warning: listening on {host}, reachable from other machines; the "
            "server has no authentication: put it behind your own gateway",
            err=True,
        )
    policy = BatchPolicy(
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        max_queue=max_queue,
        workers=workers,
        max_padding=max_padding,
    )
    max_bytes = int(max_request_mb * (1 << 20))
    if use_ray:
        from sparse_attn.serving.ray_app import serve_on_ray

        code = serve_on_ray(
            model,
            name=name,
            host=host,
            port=port,
            policy=policy,
            backend=backend,
            threads=threads,
            max_request_bytes=max_bytes,
            replicas=replicas,
            max_replicas=max_replicas,
            address=ray_address,
        )
        if code == 130:
            raise KeyboardInterrupt
        return code
    from sparse_attn.serving.app import create_app
    from sparse_attn.serving.server import run_server

    app = create_app(
        model,
        name=name,
        policy=policy,
        backend=backend,
        threads=threads,
        max_request_bytes=max_bytes,
    )
    code = run_server(app, host, port, graceful_s=graceful_timeout)
    if code == 130:
        raise KeyboardInterrupt
    return code
