"""Errors the server answers with, each in the error shape of the API dialect the request was made in.

ApiError carries a status and OpenAI's error fields; `error_response(path, ...)` renders it for the dialect that
owns `path`, so app-wide limits (401, 413, 429, timeouts) answer every client in the shape its SDK parses.
"""

from typing import Optional

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An answer other than 200: `status` with OpenAI's error body (4xx for the client's mistakes)."""

    def __init__(self, message: str, param: Optional[str] = None, code: Optional[str] = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = message, param, code, status, kind


def dialect(path: str) -> str:
    """The API dialect a request path belongs to: "openai" unless another dialect's routes own it."""
    return "openai"


def error_response(path: str, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                   kind: str = "invalid_request_error", headers: Optional[dict] = None) -> JSONResponse:
    """The error body of `path`'s dialect. OpenAI: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)
