"""The OpenAI dialect: `POST /v1/embeddings` (also `/embeddings`) and `GET /v1/models`.

Handlers check and tokenize each request (so `usage.prompt_tokens` is real and over-long input is refused before it
queues), then hand the ids to the one BatchWorker.
"""

import base64
import json
from typing import Any, Literal, Optional

import numpy as np
from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool

from ..embedder import Embedder
from .errors import ApiError
from . import jobs, quantized
from .worker import BatchWorker

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
EMBEDDING_PATHS = ("/v1/embeddings", "/embeddings")
INLINE_CHARS = 20_000  # requests with more characters than this are tokenized in a worker thread
# LangChain's OpenAIEmbeddings (check_embedding_ctx_length=True by default) sends tiktoken ids, not Qwen ids
FOREIGN_IDS_FIX = ("token ids from another tokenizer (LangChain's OpenAIEmbeddings sends tiktoken ids by default) "
                   "give wrong vectors: send text instead (OpenAIEmbeddings(..., check_embedding_ctx_length=False))")


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, plus `instruction`, `prompt_name`, `truncate`, `precision` and `ranges` (OpenAI's
    schema lacks them)."""
    input: Any = Field(..., description="a string, a list of strings, a list of token ids, or a list of such lists")
    model: Optional[StrictStr] = None
    dimensions: Optional[StrictInt] = Field(None, description="Matryoshka size: first values, re-normalised")
    encoding_format: Literal["float", "base64"] = "float"
    user: Optional[StrictStr] = None
    instruction: Optional[StrictStr] = Field(None, description='query task: "Instruct: {instruction}\\nQuery:{text}"')
    prompt_name: Optional[StrictStr] = Field(None, description='a named prompt of the checkpoint, e.g. "query"')
    truncate: StrictBool = Field(False, description="cut over-long input to max_length instead of answering 400")
    precision: Optional[StrictStr] = Field(None, description="float32|float16|int8|uint8|binary|ubinary "
                                                             "(sentence-transformers' quantize_embeddings)")
    ranges: Optional[list[list[float]]] = Field(None, description="int8/uint8: [[min...], [max...]] per dimension")



def add_routes(app: FastAPI, embedder: Embedder, worker: BatchWorker, metrics, *, model_id: str, max_inputs: int,
               started: int, allow_remote_images: bool = False):
    """Register the OpenAI routes on `app`; `metrics` counts inputs and tokens.
    allow_remote_images: Qwen3-VL items may carry http(s) image URLs, downloaded by the server (serve/items.py)."""

    async def embeddings(body: EmbeddingRequest):
        dim = jobs.check_dimensions(body.dimensions, embedder.dim)
        # a few short texts tokenize in microseconds; only a big request is worth a thread hop off the event loop
        if hasattr(embedder, "embed_prepared"):  # Qwen3-VL: items with images (serve/items.py), decoded off the loop
            sequences = await run_in_threadpool(_prepare_items, embedder, body, max_inputs, allow_remote_images)
        elif _size(body.input) > INLINE_CHARS:
            sequences = await run_in_threadpool(_tokenize, embedder, body, max_inputs)
        else:
            sequences = _tokenize(embedder, body, max_inputs)
        bounds = quantized.check(body.precision, body.ranges, dim, len(sequences))
        vectors = await jobs.run(worker, sequences, dim)
        tokens = sum(len(s) for s in sequences)
        metrics.embedded(len(sequences), tokens)
        codes, bounds = quantized.quantize(vectors, body.precision, bounds)
        extra = {} if body.precision is None else {"precision": body.precision}
        extra |= {} if bounds is None else {"ranges": bounds.tolist()}
        return Response(_encode(codes, body.encoding_format, model_id, tokens, extra),
                        media_type="application/json")

    for path in EMBEDDING_PATHS:
        app.post(path)(embeddings)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": started,
                                            "owned_by": "mlx-embed", "dimensions": embedder.dim,
                                            "max_length": embedder.max_length}]}


def _size(given: Any) -> int:
    """Characters (or token ids) in `input`, to decide where to tokenize; a wrong shape counts as small."""
    if isinstance(given, str):
        return len(given)
    if isinstance(given, list):
        return sum(len(x) if isinstance(x, (str, list)) else 1 for x in given)
    return 0


def _tokenize(embedder: Embedder, body: EmbeddingRequest, max_inputs: int) -> list[list[int]]:
    """The request's `input` -> finished token ids (each ends in one <|endoftext|>), or an ApiError."""
    given = body.input
    if isinstance(given, str) or (isinstance(given, list) and given and _is_ids(given)):
        data = [given]  # one string, or one list of token ids, is one input
    elif isinstance(given, list):
        data = given
    else:
        raise ApiError(f"input must be a string, a list of strings or a list of token-id lists, got "
                       f"{type(given).__name__}", "input", "invalid_type")
    if not data:
        raise ApiError("input is empty: send at least one string or token list", "input", "empty_input")
    if len(data) > max_inputs:
        raise ApiError(f"input has {len(data)} items, more than the limit of {max_inputs}: split the request",
                       "input", "too_many_inputs")
    if all(isinstance(x, str) for x in data):
        return _tokenize_texts(embedder, body, data)
    if all(_is_ids(x) for x in data):
        return _finish_ids(embedder, body, data)
    # the first item unlike the first one: a wrong type, or a string among token lists (or the reverse)
    kind = isinstance(data[0], str)
    bad = next(i for i, x in enumerate(data) if not (isinstance(x, str) or _is_ids(x)) or isinstance(x, str) != kind)
    raise ApiError(f"input[{bad}] is {json.dumps(data[bad])[:40]}: every item must be a string, or every item "
                   "a list of token ids (ints), not a mix", "input", "invalid_type")


def _prepare_items(embedder, body: EmbeddingRequest, max_inputs: int, allow_remote: bool) -> list:
    from .items import prepare_items

    if body.prompt_name is not None or body.truncate:
        raise ApiError("prompt_name and truncate are for Qwen3 text models; use instruction", "prompt_name",
                       "invalid_value")
    return prepare_items(embedder, body.input, body.instruction, max_inputs, allow_remote)


def _is_ids(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def _tokenize_texts(embedder: Embedder, body: EmbeddingRequest, texts: list[str]) -> list[list[int]]:
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        raise ApiError(f"input[{empty}] is an empty string: send text", "input", "empty_input")
    if body.instruction is not None and body.prompt_name is not None:
        raise ApiError("give instruction or prompt_name, not both", "prompt_name", "invalid_value")
    if body.prompt_name is not None and body.prompt_name not in embedder.prompts:
        raise ApiError(f"unknown prompt_name {body.prompt_name!r}: this model has "
                       f"{', '.join(sorted(embedder.prompts))}", "prompt_name", "invalid_value")
    try:
        return embedder.tokenize(texts, instruction=body.instruction, prompt_name=body.prompt_name,
                                 truncate=body.truncate)
    except UnicodeError as e:  # a lone surrogate: app.py answers 400 naming the input
        raise e from None
    except ValueError as e:  # the only ValueError left is an over-long input without truncate
        raise _too_long(e) from None


def _finish_ids(embedder: Embedder, body: EmbeddingRequest, sequences: list[list[int]]) -> list[list[int]]:
    if body.instruction is not None or body.prompt_name is not None:
        param = "instruction" if body.instruction is not None else "prompt_name"
        raise ApiError(f"{param} applies to text input only: put the prompt's tokens in the ids yourself",
                       param, "invalid_value")
    vocab = embedder.args.vocab_size
    finished = []
    for i, ids in enumerate(sequences):
        if not ids:
            raise ApiError(f"input[{i}] is an empty token list", "input", "empty_input")
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise ApiError(f"input[{i}] holds {bad}, not a token id in 0..{vocab - 1}; {FOREIGN_IDS_FIX}", "input",
                           "invalid_value")
        try:
            finished.append(embedder.tokenizer.finish(ids, embedder.max_length, body.truncate, i))
        except ValueError as e:
            raise _too_long(e) from None
    foreign = _foreign(embedder, [ids[:-1] for ids in finished])
    if foreign is not None:
        raise ApiError(f"input[{foreign}] is not this model's token ids: decoded and encoded again it gives other "
                       f"ids; {FOREIGN_IDS_FIX}", "input", "foreign_token_ids")
    return finished


def _foreign(embedder: Embedder, sequences: list[list[int]]):
    """The index of the first id list that decode -> encode does not give back unchanged, else None.

    What passes is exactly this tokenizer's own tokenization of some text, embedded as that text. Another
    tokenizer's ids, read as Qwen ids, mostly decode to a string that Qwen's BPE splits differently, but not
    always: a single id passes whenever its token encodes back to itself (most of the vocabulary does), and so
    may a short list of whole-word tokens. Such inputs cannot be told from real Qwen ids. A request is refused
    as a whole as soon as one of its lists fails, so LangChain's tiktoken ids slip through only when every list
    of the call round-trips: in practice, calls whose texts are all a token or two long.
    """
    again = embedder.tokenizer.encode([embedder.tokenizer.decode(ids) for ids in sequences], 2**62)
    return next((i for i, (ids, back) in enumerate(zip(sequences, again)) if back[:-1] != ids), None)


def _too_long(e: ValueError) -> ApiError:
    return ApiError(f"{e} (send \"truncate\": true to cut it)", "input", "context_length_exceeded")


def _encode(vectors: np.ndarray, encoding_format: str, model_id: str, tokens: int, extra: dict) -> bytes:
    """(N, width) rows -> OpenAI's response JSON (+ `extra` top-level fields). base64 is always OpenAI's: the
    little-endian float32 bytes of each row, also for compact `precision` rows (their values as float32): the
    openai SDK asks for base64 by default and decodes float32, so raw int8/float16 bytes would decode to wrong
    numbers without an error."""
    if encoding_format == "base64":
        rows = [base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    else:
        rows = vectors.tolist()
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    body = {"object": "list", "data": data, "model": model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, **extra}
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()  # allow_nan=False: no NaN leaves

