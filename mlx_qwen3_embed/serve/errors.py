"""Errors the server answers with, each in the error shape of the API dialect the request was made in.

ApiError carries a status and OpenAI's error fields; `error_response(path, ...)` renders it for the dialect that
owns `path`, so app-wide limits (401, 413, 429, timeouts) answer every client in the shape its SDK parses. A
server fault is "internal error" and a reference to the traceback in the server's log (internal_error): what
failed inside is no client's business.
"""

import logging
import secrets
from typing import Optional

from fastapi.responses import JSONResponse

from ..checks import without_addresses

log = logging.getLogger("mlx_qwen3_embed.serve")

COHERE_PATHS = ("/v1/rerank", "/v2/rerank")  # Cohere's (and Jina's) rerank API
# TEI's routes; `POST /` is where huggingface_hub's InferenceClient(model=<url>) posts
TEI_RERANK_PATH = "/rerank"
TEI_PATHS = ("/", "/embed", "/tokenize", "/info", TEI_RERANK_PATH)
# TEI's error_type for a status (its ErrorType -> StatusCode table, read backwards; 400 is Empty or Validation)
TEI_ERROR_TYPES = {401: "Unauthorized", 408: "Validation", 413: "Validation", 422: "Tokenizer", 424: "Backend",
                   429: "Overloaded", 503: "Unhealthy"}


class ApiError(Exception):
    """An answer other than 200: `status` with OpenAI's error body (4xx for the client's mistakes)."""

    def __init__(self, message: str, param: Optional[str] = None, code: Optional[str] = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = message, param, code, status, kind


def dialect(path: str) -> str:
    """The API dialect a request path belongs to: "cohere", "ollama" (/api/*), "tei" (TEI_PATHS) or "openai"."""
    if path in COHERE_PATHS:
        return "cohere"
    if path.startswith("/api/"):
        return "ollama"
    if path in TEI_PATHS:
        return "tei"
    return "openai"


def error_response(path: str, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                   kind: str = "invalid_request_error", headers: Optional[dict] = None) -> JSONResponse:
    """The error body of `path`'s dialect. OpenAI: {"error": {"message", "type", "param", "code"}}; Cohere:
    {"message"} (its SDK raises BadRequestError & co. by status); Ollama: {"error": message}; TEI: {"error",
    "error_type": Validation|Empty|Overloaded|...}. No message carries a heap address ("<... at 0x7f...>")."""
    message = without_addresses(message)
    shape = dialect(path)
    if shape == "cohere":
        body = {"message": message}
    elif shape == "ollama":
        body = {"error": message}
    elif shape == "tei":
        error_type = TEI_ERROR_TYPES.get(status, "Backend" if status >= 500 else "Validation")
        body = {"error": message, "error_type": "Empty" if code == "empty_input" else error_type}
    else:
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def internal_error(path: str, method: str, e: BaseException) -> JSONResponse:
    """A 500 for a fault of ours: the traceback goes to the server's log under a reference, the client gets
    only the reference (internal exception text can hold paths, object reprs, the model's internals)."""
    reference = secrets.token_hex(6)
    log.error("internal error %s on %s %s", reference, method, path, exc_info=e)
    return error_response(path, 500, f"internal error (reference {reference} in the server's log)",
                          code="internal_error", kind="server_error")
