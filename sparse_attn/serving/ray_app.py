"""The serving application as a Ray Serve deployment: replicas, autoscaling, multi-node.

Each replica loads the model and runs the same ASGI application as ``sparse-attn serve``
(:func:`sparse_attn.serving.create_app`, with its own dynamic batcher); Ray Serve's HTTP proxy
spreads requests over the replicas. Two ways to start it:

* ``sparse-attn serve MODEL --ray --replicas N [--max-replicas M]`` (starts a local Ray
  instance, or joins one with ``--ray-address auto``);
* ``serve run sparse_attn.serving.ray_app:app_builder model=MODEL replicas=2`` (Ray's own
  CLI; every ``key=value`` is an argument of :func:`app_builder`).

Ray quirks on a machine whose name resolves to a routable address: this module sets
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` unless the environment sets it (otherwise Ray may
bind its services to the machine's interface address instead of 127.0.0.1), and puts Ray's
session files under a temporary folder (``_temp_dir``) and sets ``RAY_AUTH_MODE=disabled``
unless set, so nothing is written to ``~/.ray``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from ray import serve

from sparse_attn.errors import InvalidInputError
from sparse_attn.serving.batching import BatchPolicy

#: Name of the Ray Serve application and deployment.
APP_NAME = "sparse-attn"


def ray_environment() -> None:
    """Environment defaults that keep a local Ray on loopback (see the module docstring)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray 2.60 otherwise writes a token to ~/.ray/auth_token; a loopback-only local
    # instance needs none. A cluster that wants token auth sets RAY_AUTH_MODE itself.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@serve.ingress()
class SparseAttnIngress:
    """One replica: a :class:`sparse_attn.Runtime` behind the v2-protocol application.

    Args: as :func:`sparse_attn.serving.create_app` (``policy`` as a dict of
    :class:`BatchPolicy` fields).
    """

    def __init__(
        self,
        model: str,
        name: str | None = None,
        policy: dict | None = None,
        backend: str = "auto",
        threads: int | None = None,
        max_request_bytes: int | None = None,
    ) -> None:
        from sparse_attn.serving.app import DEFAULT_MAX_REQUEST_BYTES, create_app

        self._app = create_app(
            model,
            name=name,
            policy=BatchPolicy(**(policy or {})),
            backend=backend,
            threads=threads,
            max_request_bytes=max_request_bytes or DEFAULT_MAX_REQUEST_BYTES,
        )

    def __serve_build_asgi_app__(self):
        return self._app


def build_deployment(
    model: str | os.PathLike,
    *,
    name: str | None = None,
    policy: BatchPolicy | None = None,
    backend: str = "auto",
    threads: int | None = None,
    max_request_bytes: int | None = None,
    replicas: int = 1,
    max_replicas: int | None = None,
    replica_cpus: float = 1.0,
):
    """A bound Ray Serve application (``serve.run`` it) serving ``model``.

    Args:
        model: model path (must be readable at the same path on every node).
        replicas: fixed number of replicas, or the minimum when ``max_replicas`` is given.
        max_replicas: autoscale between ``replicas`` and this (target: one full batch of
            ongoing requests per replica).
        replica_cpus: CPUs Ray reserves per replica.
        others: as :func:`sparse_attn.serving.create_app`.

    Raises:
        InvalidInputError: bad replica counts or a missing model file.
    """
    from pathlib import Path

    from sparse_attn.serving.app import default_model_name

    p = Path(model).resolve()
    if not p.is_file():
        raise InvalidInputError(f"model file {model} does not exist; check the path")
    if not isinstance(replicas, int) or replicas < 1:
        raise InvalidInputError(f"replicas must be an integer >= 1, got {replicas!r}")
    if max_replicas is not None and max_replicas < replicas:
        raise InvalidInputError(f"max_replicas {max_replicas} is below replicas {replicas}")
    if not replica_cpus > 0:
        raise InvalidInputError(f"replica_cpus must be > 0, got {replica_cpus!r}")
    pol = policy or BatchPolicy()
    options: dict[str, Any] = {
        "name": APP_NAME,
        "ray_actor_options": {"num_cpus": float(replica_cpus)},
        # each replica batches: let it hold a full queue of its own, and shed load beyond it
        "max_ongoing_requests": pol.max_queue + pol.max_batch_size * pol.workers,
        "max_queued_requests": pol.max_queue,
    }
    if max_replicas is not None and max_replicas > replicas:
        options["autoscaling_config"] = {
            "min_replicas": replicas,
            "initial_replicas": replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": max(1, pol.max_batch_size),
        }
    else:
        options["num_replicas"] = replicas
    deployment = serve.deployment(SparseAttnIngress).options(**options)
    return deployment.bind(
        str(p),
        name=name or default_model_name(p),
        policy={
            "max_batch_size": pol.max_batch_size,
            "max_delay_ms": pol.max_delay_ms,
            "max_queue": pol.max_queue,
            "workers": pol.workers,
            "max_padding": pol.max_padding,
        },
        backend=backend,
        threads=threads,
        max_request_bytes=max_request_bytes,
    )


def app_builder(args: dict[str, str]):
    """Entry of ``serve run sparse_attn.serving.ray_app:app_builder model=PATH [key=value...]``.

    Keys: ``model`` (required), ``name``, ``replicas``, ``max_replicas``, ``replica_cpus``,
    ``max_batch_size``, ``max_delay_ms``, ``max_queue``, ``workers``, ``max_padding``,
    ``backend``, ``threads``.

    Raises:
        InvalidInputError: missing ``model``, an unknown key or a malformed number.
    """
    known = {
        "model": str,
        "name": str,
        "replicas": int,
        "max_replicas": int,
        "replica_cpus": float,
        "max_batch_size": int,
        "max_delay_ms": float,
        "max_queue": int,
        "workers": int,
        "max_padding": float,
        "backend": str,
        "threads": int,
    }
    bad = sorted(set(args) - set(known))
    if bad:
        raise InvalidInputError(f"unknown argument(s) {bad}; known: {sorted(known)}")
    if "model" not in args:
        raise InvalidInputError("give the model file: model=PATH")
    try:
        vals = {k: known[k](v) for k, v in args.items()}
    except ValueError as exc:
        raise InvalidInputError(f"malformed argument: {exc}") from exc
    pol = {
        k: vals.pop(k)
        for k in ("max_batch_size", "max_delay_ms", "max_queue", "workers")
        if k in vals
    }
    model = vals.pop("model")
    return build_deployment(model, policy=BatchPolicy(**pol), **vals)


def start_ray(address: str | None = None, temp_dir: str | None = None, num_cpus: int | None = None):
    """Start (or join) Ray on this machine, loopback only; returns the temp dir used."""
    import ray

    ray_environment()
    if ray.is_initialized():
        return temp_dir
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        return temp_dir
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="ray-")
    ray.init(
        _temp_dir=temp_dir,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=num_cpus,
        log_to_driver=False,
        configure_logging=False,
    )
    return temp_dir


def deploy(app, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start Serve's HTTP proxy on ``host:port`` and run ``app`` (returns when it is up)."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)


def serve_on_ray(
    model,
    *,
    name: str | None,
    host: str,
    port: int,
    policy: BatchPolicy,
    backend: str,
    threads: int | None,
    max_request_bytes: int,
    replicas: int,
    max_replicas: int | None,
    address: str | None = None,
) -> int:
    """Foreground Ray Serve deployment for ``sparse-attn serve --ray`` (until Ctrl-C/SIGTERM)."""
    import signal
    import sys
    import threading

    import ray

    if port == 0:
        raise InvalidInputError("--ray needs a fixed --port (Ray's proxy does not report one)")
    app = build_deployment(
        model,
        name=name,
        policy=policy,
        backend=backend,
        threads=threads,
        max_request_bytes=max_request_bytes,
        replicas=replicas,
        max_replicas=max_replicas,
    )
    temp_dir = start_ray(address)
    stop = threading.Event()
    caught: list[int] = []

    def on_signal(signum, frame):
        caught.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        deploy(app, host, port)
        scaling = f"{replicas}..{max_replicas}" if max_replicas else str(replicas)
        print(
            f"sparse-attn serve: Ray Serve, {scaling} replica(s) of {model} on "
            f"http://{host}:{port} (v2 protocol; /metrics per replica); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
        if temp_dir and not address:
            import shutil

            shutil.rmtree(temp_dir, ignore_errors=True)
    return 130 if caught and caught[-1] == signal.SIGINT else 0
