"""Listening for `mlx-embed serve`: the port is bound before the model loads, open connections are capped and
must send their headers in time, and SIGTERM/SIGINT answer what is in flight within a deadline, then exit 0.

The ASGI app cannot see a connection before its headers are complete, so these limits live in uvicorn's HTTP
protocol (a subclass of its h11 one); the body's limits live in limits.py.
"""

import contextlib
import signal
import socket
import threading
from typing import Callable, Optional

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_response
from ..checks import check_int

HEADER_TIMEOUT = 10.0      # seconds from a request's first byte (or the connection's start) to its last header
KEEP_ALIVE_TIMEOUT = 5.0   # seconds an idle keep-alive connection stays open (uvicorn's timeout_keep_alive)
SHUTDOWN_TIMEOUT = 30.0    # seconds SIGTERM waits for requests in flight


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or OSError naming the address: checked before the model loads."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}: check --host") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}: is another server using it? "
                      "stop it or pick another --port") from None
    sock.set_inheritable(True)
    return sock


def guarded_protocol(header_timeout: float, max_connections: Optional[int],
                     count: Callable[[int], None] = lambda status: None) -> type:
    """uvicorn's h11 protocol plus: 503 and close for a connection past `max_connections`; 408 and close when a
    request's headers are not complete `header_timeout` s after its first byte (or after the connection opened);
    a request that does not parse is answered 400 in the API's JSON shape, not uvicorn's plain text.
    `count(status)` records each refusal."""

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._header_timer = None
            if max_connections is not None and len(self.connections) > max_connections:
                self._refuse(503, f"more than {max_connections} open connections: retry shortly",
                             "too_many_connections")
                return
            self._arm()

        def data_received(self, data: bytes):
            if self._header_timer is None and self._between_requests():
                self._arm()  # the first bytes of the next request on a kept-alive connection
            super().data_received(data)
            if self._header_timer is not None and not self._between_requests():
                self._header_timer.cancel()  # the headers came: free the timer, so the next request arms its own
                self._header_timer = None

        def connection_lost(self, exc):
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def send_400_response(self, msg: str):
            # uvicorn's answer to bytes h11 cannot parse (its text/plain "Invalid HTTP request received.")
            self._refuse(400, "invalid HTTP request: the request line or a header does not parse as HTTP/1.1",
                         "invalid_http_request")

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self):
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late, self.cycle)

        def _headers_late(self, cycle_when_armed):
            self._header_timer = None
            # a new cycle means the headers came; it has its body deadline in limits.py
            if self.cycle is cycle_when_armed and self._between_requests() and not self.transport.is_closing():
                self._refuse(408, f"request headers did not arrive within {header_timeout:g} s", "request_timeout")

        def _refuse(self, status: int, message: str, code: str):
            """Answer without h11 (no request was parsed) and close: the bytes of `error_response`'s body
            (no path: OpenAI's shape, since "/" is TEI's route)."""
            body = error_response("", status, message, code=code).body
            reason = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}[status]
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
            self.transport.close()
            count(status)

    return GuardedH11Protocol


class GracefulServer(uvicorn.Server):
    """uvicorn's Server, except that after a SIGTERM/SIGINT shutdown it returns (exit 0) instead of re-raising
    the signal (death by signal); a second SIGINT still forces the exit."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def run(app, sock: socket.socket, *, header_timeout: float = HEADER_TIMEOUT,
        keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT, max_connections: Optional[int] = None,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT, log_level: str = "info"):
    """Serve `app` on the bound `sock` until SIGTERM/SIGINT; then stop accepting, answer what is in flight for up
    to `shutdown_timeout` s, stop the app, and return."""
    for name, value in (("header_timeout", header_timeout), ("keep_alive_timeout", keep_alive_timeout),
                        ("shutdown_timeout", shutdown_timeout)):
        if not value > 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if max_connections is not None:
        check_int("max_connections", max_connections)
    metrics = getattr(app.state, "metrics", None)
    count = (lambda status: metrics.count("connection", status)) if metrics else (lambda status: None)
    config = uvicorn.Config(app, http=guarded_protocol(header_timeout, max_connections, count),
                            timeout_keep_alive=keep_alive_timeout, timeout_graceful_shutdown=shutdown_timeout,
                            log_level=log_level)
    GracefulServer(config).run(sockets=[sock])
