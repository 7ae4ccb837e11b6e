"""What the server's answers declare: the headers every embedding response carries (what was done to its inputs),
and each route's `responses=` for the OpenAPI document (/openapi.json, /docs): its 200 body with those headers,
and its dialect's error shape (errors.error_response) for the statuses it can answer.

The headers go on every dialect's embedding answer, since not every dialect's body has room for them (TEI's is a
bare list of vectors): which inputs were cut to max_length (Ollama truncates by default, so a client would not
know otherwise), the pooling, the vectors' width and the model that made them.
"""

from typing import Optional

from pydantic import BaseModel, ConfigDict

from .errors import dialect

MODEL = "X-Model"
POOLING = "X-Pooling"
DIMENSIONS = "X-Dimensions"
NORMALIZED = "X-Normalized"
TRUNCATED = "X-Truncated-Inputs"
TRUNCATED_COUNT = "X-Truncated-Count"
# what a browser's script may read across origins (app.py's CORS)
EXPOSED = (MODEL, POOLING, DIMENSIONS, NORMALIZED, TRUNCATED, TRUNCATED_COUNT, "Retry-After")


def said(model_id: str, pooling: str, dim: int, cut: list[int], normalized: bool = True) -> dict[str, str]:
    """The headers of an embedding answer; the truncation pair only when `cut` (indices of inputs cut) has some."""
    headers = {MODEL: model_id, POOLING: pooling, DIMENSIONS: str(dim), NORMALIZED: str(normalized).lower()}
    if cut:
        headers |= {TRUNCATED: runs(cut), TRUNCATED_COUNT: str(len(cut))}
    return headers


def runs(indices: list[int]) -> str:
    """Sorted indices as comma-separated runs: [0, 1, 2, 5] -> "0-2,5" (2048 cut inputs stay one short header,
    under the 8 KiB per header line that aiohttp and nginx read)."""
    parts, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            parts.append(str(index) if index == start else f"{start}-{index}")
            start = None
    return ",".join(parts)


def _header(description: str, required: bool = True, kind: str = "string") -> dict:
    return {"description": description, "required": required, "schema": {"type": kind}}


HEADERS = {
    MODEL: _header("the served name of the model that made the vectors"),
    POOLING: _header("how token states became one vector: last (Qwen3-Embedding's), mean, first or max"),
    DIMENSIONS: _header("the vectors' width (the request's dimensions, else the model's; binary precisions pack "
                        "8 to a byte)", kind="integer"),
    NORMALIZED: _header("true when the vectors are unit length"),
    TRUNCATED: _header('indices of the inputs cut to the model\'s max_length, as runs ("0,3", "5-9"); only when '
                       "some were", required=False),
    TRUNCATED_COUNT: _header("how many inputs were cut; only when some were", required=False, kind="integer"),
}

ERRORS = {
    400: "bad input: a malformed body or a value the model refuses; the message names it",
    401: "missing or wrong API key (a server started with --api-key)",
    404: "a model that is not served here (several models; the message lists them), or no reranker",
    408: "the body did not arrive within --body-timeout",
    413: "a body over --max-request-bytes (TEI: also inputs too long or too many)",
    429: "the queue is full: retry after Retry-After seconds",
}
EMBED_ERRORS = (400, 401, 404, 408, 413, 429)  # what an embedding or rerank route can answer
BODY_ERRORS = (400, 401, 404, 408, 413)        # a small POST's (/api/show, /tokenize)


class Answer(BaseModel):
    """A response body as documented: a field the handler adds but the model lacks fails tests/test_openapi.py."""
    model_config = ConfigDict(extra="forbid")


class OpenAIErrorDetail(Answer):
    message: str
    type: str
    param: Optional[str]
    code: Optional[str]


class OpenAIError(Answer):
    """OpenAI's error body; also that of /health, /metrics and unknown paths."""
    error: OpenAIErrorDetail


class CohereError(Answer):
    """Cohere's error body (its SDK raises by status)."""
    message: str


class OllamaError(Answer):
    error: str


class TeiError(Answer):
    error: str
    error_type: str  # Validation, Empty, Tokenizer, Backend, Overloaded, Unhealthy, Unauthorized


ERROR_MODELS = {"openai": OpenAIError, "cohere": CohereError, "ollama": OllamaError, "tei": TeiError}


def responses(path: str, model: Optional[type], errors: tuple[int, ...] = (401,), *, embeds: bool = False,
              media_type: Optional[str] = None) -> dict:
    """A route's `responses=`: 200 with `model` (None: the route's response_model's), or `media_type` text; the
    embedding headers when `embeds`; each of `errors` and any other status ("default", 5xx: the server's own
    faults) in `path`'s error shape. Declaring them keeps FastAPI's 422 out: the app answers validation errors as
    400s in the dialect's shape."""
    error = {"model": ERROR_MODELS[dialect(path)]}
    ok: dict = {} if model is None else {"model": model}
    ok |= {} if media_type is None else {"content": {media_type: {"schema": {"type": "string"}}}}
    ok |= {"headers": HEADERS} if embeds else {}
    declared = {200: ok}
    declared |= {status: error | {"description": ERRORS[status]} for status in errors}
    if 429 in errors:
        declared[429]["headers"] = {"Retry-After": _header("seconds to wait", kind="integer")}
    declared["default"] = error | {"description": "any other failure (5xx: the server's own fault), same shape"}
    return declared
