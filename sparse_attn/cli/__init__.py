"""``sparse-attn`` command line (docs/spec.md). Thin: parse, call the library, print.

Each subcommand lives in its own module ``sparse_attn.cli.<name>_cmd`` exposing a click
command named ``command``; modules are imported only when their command runs, so
``sparse-attn layout`` does not pay for torch or onnx imports it does not need.

Errors: one line on stderr; exit code 2 for bad input, 1 for the environment, 130 on
Ctrl-C (:func:`main` is the one error boundary). The contract is in docs/spec.md.
"""

from __future__ import annotations

import contextlib
import importlib
import sys

import click

from sparse_attn.errors import SparseAttnError

#: command name -> (module, one-line help)
COMMANDS = {
    "layout": (
        "sparse_attn.cli.layout_cmd",
        "Compile a pattern to a block layout; stats, mask, plot.",
    ),
    "export": ("sparse_attn.cli.export_cmd", "Export a model with sparse attention to ONNX."),
    "engine": (
        "sparse_attn.cli.engine_cmd",
        "Build a TensorRT engine or an ONNX Runtime optimised model.",
    ),
    "run": ("sparse_attn.cli.run_cmd", "Run an exported model or engine on texts or inputs."),
    "check": (
        "sparse_attn.cli.check_cmd",
        "Check a model's accuracy against the PyTorch reference.",
    ),
    "bench": ("sparse_attn.cli.bench_cmd", "Benchmark sparse attention against the alternatives."),
    "serve": ("sparse_attn.cli.serve_cmd", "Serve a model over HTTP (v2 protocol, batching)."),
    "triton-repo": (
        "sparse_attn.cli.triton_repo_cmd",
        "Write a Triton Inference Server model repository.",
    ),
    "generate": ("sparse_attn.cli.generate_cmd", "Generate text with a generation export."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return super().get_command(ctx, name)
        module = importlib.import_module(COMMANDS[name][0])
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(k, v[1]) for k, v in COMMANDS.items()])


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sparse-attn")
def cli() -> None:
    """sparse-attn: block-sparse attention from PyTorch to ONNX, TensorRT and serving."""


def _fail(message: str, code: int) -> int:
    text = " ".join(str(message).split())
    if len(text) > 2000:
        text = text[:2000] + "..."
    click.echo(f"sparse-attn: error: {text}", err=True)
    return code


class _Interrupted:
    """Records a SIGINT so that an error it caused (e.g. a half-finished import) reads as one."""

    seen = False

    @classmethod
    def handler(cls, signum, frame):  # noqa: ARG003 - signal handler signature
        cls.seen = True
        raise KeyboardInterrupt


@contextlib.contextmanager
def _user_output():
    """Library code logs; within the CLI its warnings go to stderr, one line each, and
    third-party warnings and log records below ERROR are hidden (they are not the user's to
    act on). Logging and warning settings are restored afterwards (``main`` may run in-process).
    """
    import logging
    import warnings

    from sparse_attn.errors import SparseAttnWarning

    quiet_third_party()
    root, ours = logging.getLogger(), logging.getLogger("sparse_attn")
    saved = (root.level, ours.level, ours.propagate)
    handler = logging.StreamHandler(_StderrProxy())
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("sparse-attn: %(levelname)s: %(message)s"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", category=SparseAttnWarning)
        warnings.showwarning = _show_warning
        root.setLevel(logging.ERROR)
        ours.addHandler(handler)
        ours.setLevel(logging.WARNING)
        ours.propagate = False
        try:
            yield
        finally:
            ours.removeHandler(handler)
            root.setLevel(saved[0])
            ours.setLevel(saved[1])
            ours.propagate = saved[2]


@contextlib.contextmanager
def show_info(logger_name: str):
    """Within the block, INFO records of ``logger_name`` are printed on stdout as they are
    (e.g. the export check line); warnings keep going to stderr."""
    import logging

    class _Stdout:
        def write(self, text: str) -> int:
            return sys.stdout.write(text)

        def flush(self) -> None:
            sys.stdout.flush()

    lg = logging.getLogger(logger_name)
    handler = logging.StreamHandler(_Stdout())
    handler.addFilter(lambda r: r.levelno == logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old = lg.level
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        lg.removeHandler(handler)
        lg.setLevel(old)


class _StderrProxy:
    """Writes to whatever ``sys.stderr`` is at the time (test capture replaces it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def quiet_third_party() -> None:
    """Hide third-party progress bars and chatter (Hugging Face downloads and weight loading,
    transformers' advice); set before those packages are imported, and again after."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    click.echo(f"sparse-attn: warning: {' '.join(str(message).split())}", err=True)


def exit_code_for(exc: BaseException) -> tuple[int, str]:
    """The CLI's exit code and one-line message for an exception (the error boundary).

    2: bad input (:class:`~sparse_attn.errors.InvalidInputError`, usage errors, a missing or
    unreadable input file); 1: the environment or an internal failure; 130: Ctrl-C;
    128 + N: terminated by signal N.
    """
    from sparse_attn.fileio import Terminated

    if isinstance(exc, KeyboardInterrupt) or (
        _Interrupted.seen and not isinstance(exc, Terminated)
    ):
        return 130, "interrupted"
    if isinstance(exc, Terminated):
        return exc.code, f"terminated by signal {exc.signum}"
    if Terminated.received is not None:  # the signal's exception was replaced on its way out
        return 128 + Terminated.received, f"terminated by signal {Terminated.received}"
    if isinstance(exc, click.exceptions.Exit):
        return int(exc.exit_code), ""
    if isinstance(exc, click.exceptions.Abort):
        return 130, "aborted"
    if isinstance(exc, click.UsageError):
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        return 2, exc.format_message() + hint
    if isinstance(exc, click.ClickException):
        return exc.exit_code or 1, exc.format_message()
    if isinstance(exc, SparseAttnError):
        return exc.exit_code, str(exc)
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return 2, f"{exc.strerror or exc}: {exc.filename or ''}; check the path"
    if isinstance(exc, PermissionError):
        return 2, f"permission denied: {exc.filename or exc}; check the path"
    if isinstance(exc, MemoryError):
        return 1, "out of memory; use smaller sizes (see the limits in docs/spec.md)"
    if isinstance(exc, OSError):
        return 1, f"{type(exc).__name__}: {exc}"
    return 1, (
        f"internal error {type(exc).__name__}: {exc} (please report it; set "
        "SPARSE_ATTN_TRACEBACK=1 to see the traceback)"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code.

    The error boundary: no traceback reaches the user (unless ``SPARSE_ATTN_TRACEBACK=1``);
    see :func:`exit_code_for` for the codes.
    """
    import os
    import signal
    import threading

    from sparse_attn.fileio import Terminated, terminate_as_exception

    args = list(sys.argv[1:] if argv is None else argv)
    main_thread = threading.current_thread() is threading.main_thread()
    old_int = signal.getsignal(signal.SIGINT) if main_thread else None
    _Interrupted.seen = False
    Terminated.received = None
    try:
        if main_thread:
            signal.signal(signal.SIGINT, _Interrupted.handler)
        with terminate_as_exception(), _user_output():
            with cli.make_context("sparse-attn", args) as ctx:
                rc = cli.invoke(ctx)
    except BaseException as exc:  # noqa: BLE001 - this is the boundary
        if isinstance(exc, SystemExit) and not hasattr(exc, "signum"):
            raise
        if os.environ.get("SPARSE_ATTN_TRACEBACK") and not isinstance(exc, click.ClickException):
            raise
        code, message = exit_code_for(exc)
        if message:
            _fail(message, code)
        return code
    finally:
        if main_thread and old_int is not None:
            signal.signal(signal.SIGINT, old_int)
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
