"""Run the application under uvicorn: in the foreground (the CLI) or in a thread (tests, bench).

Graceful shutdown (SIGTERM, or the first Ctrl-C): the server stops accepting connections and
marks itself not ready, lets every accepted request finish (the batcher drains its queue),
then exits. A second Ctrl-C forces the exit. :func:`run_server` returns 0 after SIGTERM and
130 after Ctrl-C, and reports how many requests were answered.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

from sparse_attn.errors import InvalidInputError

#: Loopback only unless the user asks for another address.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class _Terminated(Exception):
    """Raised by our SIGTERM handler after uvicorn finished its graceful shutdown."""


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server that flags the app as draining as soon as shutdown starts."""

        on_started: Callable[[Server], None] | None = None

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started and self.on_started is not None:
                self.on_started(self)

        async def shutdown(self, sockets=None) -> None:
            state = getattr(getattr(self.config.app, "state", None), "serving", None)
            if state is not None:
                state.draining = True
            await super().shutdown(sockets)

        @property
        def port(self) -> int | None:
            for srv in self.servers:
                for sock in srv.sockets:
                    return int(sock.getsockname()[1])
            return None

    return Server


def _config(app, host: str, port: int, graceful_s: float | None, log_level: str):
    import uvicorn

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidInputError(f"port must be between 0 and 65535, got {port!r}")
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=graceful_s,
        timeout_keep_alive=5,
        # HTTP/1.1 keeps connections; many concurrent clients are expected.
        backlog=2048,
    )


def run_server(
    app,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    graceful_s: float | None = 30.0,
    log_level: str = "warning",
    announce: Callable[[str], None] | None = None,
) -> int:
    """Serve ``app`` in the foreground until SIGTERM or Ctrl-C.

    Args:
        app: from :func:`sparse_attn.serving.create_app`.
        host, port: where to listen (``port=0``: any free port, printed on startup).
        graceful_s: longest wait for in-flight requests at shutdown (``None``: no limit).
        log_level: uvicorn's log level.
        announce: called with one line once listening (default: print to stderr).

    Returns:
        0 after SIGTERM, 130 after Ctrl-C.
    """
    Server = _server_class()
    server = Server(_config(app, host, port, graceful_s, log_level))
    say = announce or (lambda line: print(line, file=sys.stderr, flush=True))

    def started(srv) -> None:
        state = app.state.serving
        say(
            f"sparse-attn serve: model {state.name!r} ({state.runtime.backend}) on "
            f"http://{host}:{srv.port} (v2 protocol; /metrics); Ctrl-C or SIGTERM to stop"
        )

    server.on_started = started

    def on_term(signum, frame):  # runs after uvicorn re-raises the captured SIGTERM
        raise _Terminated

    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, on_term)
    code = 0
    try:
        server.run()
    except _Terminated:
        code = 0
    except KeyboardInterrupt:
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    state = app.state.serving
    b = state.batcher
    say(
        f"sparse-attn serve: stopped; accepted {b.accepted} model requests, completed "
        f"{b.completed}; answered {state.stats['answered']}, refused {state.stats['refused']}, "
        f"failed {state.stats['failed']}"
    )
    return code


class ServerThread:
    """Run the application in a background thread (tests and benchmarks).

    ``with ServerThread(app) as srv: srv.url`` -> ``http://127.0.0.1:<port>``. Leaving the
    block shuts the server down gracefully (accepted requests finish first).

    Raises:
        RuntimeError: if the server does not start within ``start_timeout`` seconds.
    """

    def __init__(
        self,
        app,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        graceful_s: float | None = 30.0,
        start_timeout: float = 30.0,
    ) -> None:
        Server = _server_class()
        self.app = app
        self.host = host
        self.server = Server(_config(app, host, port, graceful_s, "warning"))
        self.start_timeout = start_timeout
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        return int(self.server.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _main(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # noqa: BLE001 - reported by start()/stop()
            self._error = exc

    def start(self) -> ServerThread:
        import time

        self._thread = threading.Thread(target=self._main, name="sparse-attn-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"the server did not start: {self._error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {self.start_timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful shutdown; waits for the thread (at most ``timeout`` seconds)."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
