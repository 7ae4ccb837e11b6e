"""Errors the server answers with: ApiError carries a status and OpenAI's error fields."""

from typing import Optional

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An answer other than 200: `status` with OpenAI's error body (4xx for the client's mistakes)."""

    def __init__(self, message: str, param: Optional[str] = None, code: Optional[str] = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = message, param, code, status, kind


def error_response(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                   kind: str = "invalid_request_error", headers: Optional[dict] = None) -> JSONResponse:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)

