"""Run a python-backend model repository under the Triton server that PyTriton bundles.

``nvidia-pytriton`` ships a Triton Inference Server build with the python backend only (no
onnxruntime or tensorrt backends) and a python-backend stub per Python version. This module
starts that server on a repository written by ``sparse-attn triton-repo --python-backend``,
so the generated ``model.py`` (``sparse_attn.Runtime`` inside Triton's python backend) is
served by a real Triton on this machine::

    python -m sparse_attn.serving.pytriton_app REPO --model NAME_python --http-port 8000

PyTriton pins ``numpy < 2``: run this with an interpreter whose environment has
``nvidia-pytriton``, ``onnxruntime``, ``tokenizers`` and sparse-attn (``make install`` builds
one in ``.venv-pytriton``). The server needs the interpreter's ``libpython`` on
``LD_LIBRARY_PATH``; :func:`server_env` sets it. Every endpoint binds 127.0.0.1 unless told
otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path


def _pytriton_root() -> Path:
    from sparse_attn.errors import UnsupportedEnvironmentError

    try:
        import pytriton
    except ImportError as exc:
        raise UnsupportedEnvironmentError(
            f"nvidia-pytriton is not installed in {sys.executable} ({exc}); use the "
            "environment made by `make install` (.venv-pytriton)"
        ) from exc
    return Path(pytriton.__file__).resolve().parent


def prepare_server(workdir: Path) -> Path:
    """Copy PyTriton's Triton build to ``workdir`` with this Python's backend stub.

    Returns:
        the ``tritonserver`` executable.

    Raises:
        UnsupportedEnvironmentError: PyTriton or a stub for this Python version is missing.
    """
    from sparse_attn.errors import UnsupportedEnvironmentError

    root = _pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise UnsupportedEnvironmentError(
            f"PyTriton has no python-backend stub for Python {version} ({stub})"
        )
    dst = Path(workdir) / "tritonserver"
    shutil.copytree(root, dst, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy2(stub, dst / "backends" / "python" / "triton_python_backend_stub")
    return dst / "bin" / "tritonserver"


def server_env() -> dict[str, str]:
    """Environment for the server: libpython and PyTriton's libraries on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")]
    extra = _pytriton_root().parent / "nvidia_pytriton.libs"
    if extra.is_dir():
        libs.append(str(extra))
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def server_command(
    binary: Path,
    repo: Path,
    *,
    models: list[str] | None = None,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    exit_timeout_s: int = 10,
) -> list[str]:
    """The ``tritonserver`` command line (HTTP and gRPC on ``host``, no metrics server)."""
    cmd = [
        str(binary),
        f"--model-repository={repo}",
        f"--backend-directory={binary.parent.parent / 'backends'}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        f"--exit-timeout-secs={exit_timeout_s}",
        "--log-verbose=0",
    ]
    if models:
        cmd.append("--model-control-mode=explicit")
        cmd += [f"--load-model={m}" for m in models]
    return cmd


def main(argv: list[str] | None = None) -> int:
    """Serve REPO with PyTriton's Triton until SIGTERM / Ctrl-C; returns its exit code."""
    p = argparse.ArgumentParser(prog="python -m sparse_attn.serving.pytriton_app")
    p.add_argument("repo", type=Path, help="model repository (sparse-attn triton-repo)")
    p.add_argument("--model", action="append", help="model(s) to load (default: all)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    args = p.parse_args(argv)
    if not args.repo.is_dir():
        print(f"sparse-attn: error: {args.repo} is not a folder", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sparse-attn-triton-") as tmp:
        binary = prepare_server(Path(tmp))
        cmd = server_command(
            binary,
            args.repo.resolve(),
            models=args.model,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
        )
        proc = subprocess.Popen(cmd, env=server_env())

        def forward(signum, frame):
            proc.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
