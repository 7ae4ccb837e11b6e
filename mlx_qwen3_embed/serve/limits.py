"""HTTP limits every API dialect shares, as one ASGI middleware in front of the app.

- a body cap enforced while reading: 413 (in the dialect's error shape) as soon as Content-Length or the bytes
  read so far pass it, and the connection is closed, so the rest is never buffered;
- a deadline for the whole body: a client that trickles it gets 408 after `body_timeout` seconds;
- a client that hangs up while its request is being worked on cancels the request's task, which cancels its
  worker job (the worker then drops its queued and remaining chunks);
- HEAD wherever GET works (the answer without its body), and a trailing slash is the same path (no redirect);
- a request with both Content-Length and Transfer-Encoding is a 400 and its connection is closed (RFC 9112 6.1:
  the two framings disagree, and a proxy in front may have read the other one);
- a JSON body is UTF-8 (RFC 8259 8.1; Python's json also takes UTF-16 and UTF-32): Utf8JsonRoute.
"""

import asyncio
import json
from typing import Callable, Optional

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.datastructures import Headers

from .errors import error_response


class BodyRefused(Exception):
    """Raised into the app's body read when the body passes the cap or the deadline; the middleware answers."""


class RequestLimits:
    """ASGI middleware: see the module docstring. `count(path, status)` records the answers it gives itself."""

    def __init__(self, app, *, max_request_bytes: int, body_timeout: float,
                 count: Optional[Callable[[str, int], None]] = None):
        self.app, self.max_request_bytes, self.body_timeout = app, max_request_bytes, body_timeout
        self.count = count or (lambda path, status: None)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            scope = dict(scope, path=path.rstrip("/") or "/")
        head = scope["method"] == "HEAD"
        if head:
            scope = dict(scope, method="GET")
        headers = Headers(scope=scope)
        length = headers.get("content-length", "")
        if length and "transfer-encoding" in headers:
            return await self._refuse(scope, receive, send, 400, "a request with both Content-Length and "
                                      "Transfer-Encoding is ambiguous (RFC 9112 6.1): send one of them")
        if length.isdigit() and int(length) > self.max_request_bytes:
            return await self._refuse(scope, receive, send, 413, self._too_large(int(length)))
        await _Exchange(self, scope, receive, send, head).run()

    def _too_large(self, size: int) -> str:
        return (f"request body of {size} bytes or more is over the limit of {self.max_request_bytes} bytes: "
                "split the request")

    async def _refuse(self, scope, receive, send, status: int, message: str):
        code = {400: "ambiguous_body_length", 413: "request_too_large", 408: "request_timeout"}[status]
        # Connection: close, so the server stops reading a body it will never use
        response = error_response(scope["path"], status, message, code=code, headers={"Connection": "close"})
        self.count(scope["path"], status)
        await response(scope, receive, send)


class _Exchange:
    """One request through RequestLimits: counts and times the body, watches for the client hanging up."""

    def __init__(self, limits: RequestLimits, scope, receive, send, head: bool):
        self.limits, self.scope, self.receive, self.send, self.head = limits, scope, receive, send, head
        self.received = 0
        self.deadline = asyncio.get_running_loop().time() + limits.body_timeout
        self.body_done = self.reading = self.late = False
        self.refused: Optional[tuple[int, str]] = None
        self.started = self.responded = False
        self.gone = asyncio.Event()
        self.watcher: Optional[asyncio.Task] = None

    async def run(self):
        task = asyncio.current_task()
        # one timer per request for the body's deadline: asyncio.wait_for around each read costs a task and a
        # timer per read (Python < 3.12)
        timer = asyncio.get_running_loop().call_at(self.deadline, self.expire, task)
        try:
            await self.limits.app(self.scope, self.read, self.write)
        except asyncio.CancelledError:
            if not (self.gone.is_set() or self.late):
                raise
            if hasattr(task, "uncancel"):  # 3.11+ counts cancellations; 3.10 has no count to take back
                task.uncancel()  # we cancelled it: the client left (nothing to answer) or its body is late (408)
            if self.gone.is_set():
                return
        except Exception:
            if self.refused is None:
                raise
        finally:
            timer.cancel()
            if self.watcher is not None:
                self.watcher.cancel()
        if self.refused is not None and not self.started:
            await self.limits._refuse(self.scope, self.receive, self.send, *self.refused)

    async def read(self):
        if self.body_done:  # the app listens for a disconnect: only the watcher reads from now on
            await self.gone.wait()
            return {"type": "http.disconnect"}
        if asyncio.get_running_loop().time() >= self.deadline:
            self.refused = self._late_body()
            raise BodyRefused(self.refused[1])
        self.reading = True  # while it is set, the deadline's timer cancels this task (expire)
        try:
            message = await self.receive()
        finally:
            self.reading = False
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limits.max_request_bytes:
                self.refused = (413, self.limits._too_large(self.received))
                raise BodyRefused(self.refused[1])
            if not message.get("more_body", False):
                self.body_done = True
                self.watcher = asyncio.ensure_future(self.watch(asyncio.current_task()))
        else:
            self.body_done = True
            self.gone.set()
        return message

    def expire(self, task: asyncio.Task):
        """The body's deadline passed: a read still waiting is cancelled, and run answers 408."""
        if self.reading:
            self.late, self.refused = True, self._late_body()
            task.cancel()

    def _late_body(self) -> tuple[int, str]:
        return (408, f"the request body did not arrive within {self.limits.body_timeout:g} s "
                     f"({self.received} bytes came): send it at once")

    async def watch(self, task: asyncio.Task):
        """After the body, the server's next message is http.disconnect: the client left, or we answered."""
        message = await self.receive()
        if message["type"] == "http.disconnect" and not self.responded:
            self.gone.set()
            task.cancel()

    async def write(self, message):
        if self.refused is not None:
            return  # the app's answer to the failed read; ours follows
        if message["type"] == "http.response.start":
            self.started = True
        elif message["type"] == "http.response.body":
            if not message.get("more_body", False):
                self.responded = True  # before sending: the server's disconnect for a finished answer is no hang-up
            if self.head:
                message = dict(message, body=b"")
        await self.send(message)


class Utf8Request(Request):
    """A request whose JSON body must be UTF-8: json.loads(bytes) would guess UTF-16 or UTF-32 from the zero
    bytes and take it. A leading BOM is allowed (RFC 8259 lets a parser ignore it)."""

    async def json(self):
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as e:
                raise json.JSONDecodeError(f"the body is not UTF-8 (byte {e.start} is not): send UTF-8 JSON",
                                           "", 0) from None
            if "\x00" in text:  # a NUL is never in JSON text; UTF-16 and UTF-32 are full of them
                raise json.JSONDecodeError("the body is not UTF-8 (it has NUL bytes: UTF-16 or UTF-32?): send "
                                           "UTF-8 JSON", "", 0)
            self._json = json.loads(text.removeprefix("\ufeff"))
        return self._json


class Utf8JsonRoute(APIRoute):
    """FastAPI's route, with its body read through Utf8Request: a body that is not UTF-8 is the same 400
    (invalid_json, in the dialect's shape) as one that is not JSON."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def utf8_only(request: Request):
            return await handler(Utf8Request(request.scope, request.receive))

        return utf8_only
