"""Writing output files safely: atomically, never over an input, with the right extension.

Every file sparse-attn writes (``layout --save-mask`` / ``--plot``, ``check --save-outputs``,
``run -o``, exported models, engines and their JSON descriptions) goes through
:func:`atomic_output`: the content is written to a temporary file in the destination's
directory and renamed over the destination only when it is complete (``os.replace`` is atomic
on one file system). If the writer fails or the process is interrupted (Ctrl-C, ``SIGTERM``,
``SIGHUP``), the temporary file is removed and the destination is left as it was.

:func:`check_output_path` refuses, before any work, an output that is one of the command's
inputs or whose extension does not match what is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from sparse_attn.errors import InvalidInputError

log = logging.getLogger(__name__)

#: Signals turned into an exception while a temporary file is open (so ``finally`` runs).
_CLEANUP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Terminated(SystemExit):
    """Raised in the main thread when a termination signal arrives (exit code 128 + signal).

    ``Terminated.received`` keeps the number of the last signal handled, because the exception
    can be replaced on its way out: a signal that lands inside a C extension's module
    initialisation (e.g. ``import onnxruntime``) surfaces as an ``ImportError``.
    """

    #: Number of the last termination signal handled, or None (reset by whoever owns the run).
    received: int | None = None

    def __init__(self, signum: int) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)


def _raise_terminated(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    Terminated.received = int(signum)
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """Within the block, ``SIGTERM``/``SIGHUP`` raise :class:`Terminated` instead of killing
    the process outright, so ``finally`` clauses (temporary-file cleanup) run.

    Only handlers left at the default are replaced, and only in the main thread (elsewhere
    Python cannot install handlers); the previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {}
    for sig in _CLEANUP_SIGNALS:
        try:
            if signal.getsignal(sig) is signal.SIG_DFL:
                saved[sig] = signal.signal(sig, _raise_terminated)
        except (ValueError, OSError):  # pragma: no cover - unusual platforms
            pass
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        return False
    return a.resolve() == b.resolve()


def check_output_path(
    path: str | os.PathLike,
    *,
    what: str,
    suffixes: Iterable[str] = (),
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Validate an output path before any work is done.

    Args:
        path: where the output will go.
        what: its name in messages, e.g. ``"--plot"``.
        suffixes: accepted extensions (lower case, with the dot, e.g. ``(".png",)``); empty
            accepts any. Double extensions such as ``".onnx.json"`` are compared as suffixes of
            the file name.
        inputs: files the command reads; the output may not be any of them (nor a file with
            the same inode, e.g. a hard or symbolic link).

    Returns:
        The path as a :class:`~pathlib.Path`.

    Raises:
        InvalidInputError: the output is an input, a directory, or has the wrong extension.
    """
    out = Path(path)
    name = out.name.lower()
    suffixes = tuple(suffixes)
    if not name:
        raise InvalidInputError(f"{what}: {str(path)!r} is not a file name")
    if out.is_dir():
        raise InvalidInputError(f"{what}: {out} is a directory; give a file name")
    if suffixes and not any(name.endswith(s) and len(name) > len(s) for s in suffixes):
        raise InvalidInputError(
            f"{what}: {out} must end with {' or '.join(suffixes)} (it holds that format); "
            f"e.g. {out.stem or 'out'}{suffixes[0]}"
        )
    for src in inputs:
        if src is not None and _same_file(out, Path(src)):
            raise InvalidInputError(
                f"{what}: {out} is one of this command's inputs; it is never overwritten: "
                "choose another output file"
            )
    return out


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    Args:
        path: final destination (its directory is created if missing).
        suffix: extension of the temporary file (default the destination's), for writers
            that choose a format from the name (numpy, matplotlib, onnx).

    The temporary file is ``.<name>.<pid>.<random>.tmp<suffix>`` in the destination's
    directory. On any exception, Ctrl-C, ``SIGTERM`` or ``SIGHUP`` it is removed and the
    destination is untouched.

    Raises:
        InvalidInputError: the destination directory cannot be created or written.
    """
    import tempfile

    out = Path(path)
    suffix = out.suffix if suffix is None else suffix
    with terminate_as_exception(), _signals_deferred() as release:
        # Signals are held until the cleanup below is armed: one landing between the
        # temporary file's creation and the ``try`` would otherwise leave the file behind.
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{out.name}.{os.getpid()}.", suffix=f".tmp{suffix}", dir=out.parent
            )
        except OSError as exc:
            raise InvalidInputError(
                f"cannot write {out}: {exc.strerror or exc}; check the output directory"
            ) from None
        tmp = Path(tmp_name)
        done = False
        try:
            os.close(fd)
            umask = os.umask(0)
            os.umask(umask)
            with contextlib.suppress(OSError):  # mkstemp makes 0600; give 0666 & ~umask
                os.chmod(tmp, 0o666 & ~umask)
            release()  # a signal that arrived meanwhile is raised here, inside the try
            yield tmp
            if not tmp.exists():
                raise FileNotFoundError(f"the writer did not create {tmp}")
            os.replace(tmp, out)
            done = True
        finally:
            if not done:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                log.debug("removed unfinished %s", tmp)


@contextlib.contextmanager
def _signals_deferred() -> Iterator:
    """Block Ctrl-C and the termination signals until ``release()`` (or the block's end).

    Yields ``release``; signals that arrive while blocked stay pending and are delivered
    (raised as Python exceptions) right after ``release()``. A no-op outside the main thread
    or where ``signal.pthread_sigmask`` does not exist.
    """
    sigs = {*_CLEANUP_SIGNALS, signal.SIGINT}
    blocked = []
    if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
        blocked.append(signal.pthread_sigmask(signal.SIG_BLOCK, sigs))

    def release() -> None:
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked.pop())

    try:
        yield release
    finally:
        release()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_output`)."""
    return write_bytes(path, text.encode("utf-8"))
