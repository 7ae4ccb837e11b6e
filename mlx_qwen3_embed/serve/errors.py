"""Errors the server answers with, each in the error shape of the API dialect the request was made in.

ApiError carries a status and OpenAI's error fields; `error_response(path, ...)` renders it for the dialect that
owns `path`, so app-wide limits (401, 413, 429, timeouts) answer every client in the shape its SDK parses.
"""

from typing import Optional

from fastapi.responses import JSONResponse

# TEI's routes; `POST /` is where huggingface_hub's InferenceClient(model=<url>) posts
TEI_PATHS = ("/", "/embed", "/tokenize", "/info", "/rerank")
# TEI's error_type for each status it answers (its ErrorType -> StatusCode table, read backwards)
TEI_ERROR_TYPES = {400: "Empty", 413: "Validation", 422: "Tokenizer", 424: "Backend", 429: "Overloaded",
                   503: "Unhealthy"}


class ApiError(Exception):
    """An answer other than 200: `status` with OpenAI's error body (4xx for the client's mistakes)."""

    def __init__(self, message: str, param: Optional[str] = None, code: Optional[str] = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = message, param, code, status, kind


def dialect(path: str) -> str:
    """The API dialect a request path belongs to: "ollama" (/api/*), "tei" (TEI_PATHS) or "openai"."""
    if path.startswith("/api/"):
        return "ollama"
    if path in TEI_PATHS:
        return "tei"
    return "openai"


def error_response(path: str, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                   kind: str = "invalid_request_error", headers: Optional[dict] = None) -> JSONResponse:
    """The error body of `path`'s dialect. OpenAI: {"error": {"message", "type", "param", "code"}};
    Ollama: {"error": message}; TEI: {"error": message, "error_type": Validation|Empty|Overloaded|...}."""
    name = dialect(path)
    if name == "ollama":
        body = {"error": message}
    elif name == "tei":
        if status == 400 and code != "empty_input":
            # TEI answers 400 only for empty input; a malformed body is a 422 there (axum's Json extractor)
            status, error_type = 422, "Validation"
        else:
            error_type = TEI_ERROR_TYPES.get(status, "Backend" if status >= 500 else "Validation")
        body = {"error": message, "error_type": error_type}
    else:
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)
