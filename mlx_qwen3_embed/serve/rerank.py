"""The rerank dialects: Cohere's `POST /v1/rerank` and `/v2/rerank` (Jina's /v1/rerank has the same shape) and
TEI's `POST /rerank`. Each handler checks and tokenizes its request, then hands the pairs to the one BatchWorker.
Only /v1/rerank takes images and videos, in Jina's shape (documents and query as {"image": data URL or base64}
or {"video": frames or a video file's data URL}, with or without "text"; serve/items.py reads them, off the event
loop); /v2/rerank and /rerank are text APIs and refuse one naming /v1/rerank.
"""

import uuid
from typing import Any, Literal, Optional, Union

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool

from ..checks import best_first, check_top_n, sigmoid
from ..contracts import RerankModel
from . import jobs, schema
from .errors import COHERE_PATHS, TEI_RERANK_PATH, ApiError
from .items import VideoLimits, read_media
from .schema import Answer
from .worker import BatchWorker, shared_starts

RERANK_PATHS = COHERE_PATHS + (TEI_RERANK_PATH,)
MEDIA = ("image", "video")  # what Jina's /v1/rerank items may hold besides text


class CohereRequest(BaseModel):
    """Cohere's (and Jina's) rerank request, plus our `instruction` (what relevance means to the model)."""
    query: Union[StrictStr, dict[str, Any]] = Field(..., description='a string, or on /v1 {"image": ...} (Jina)')
    documents: list[Any] = Field(..., description='strings, or {"text": ...} (on /v1 also {"image": ...}) objects')
    model: Optional[StrictStr] = None
    top_n: Optional[StrictInt] = None
    return_documents: Optional[StrictBool] = Field(None, description="default: true on /v1 (Jina), false on /v2")
    max_tokens_per_doc: Optional[StrictInt] = Field(None, ge=1)  # Cohere v2; documents are cut to max_length here
    rank_fields: Optional[list[StrictStr]] = None   # Cohere v1 for JSON documents: only "text" is read
    instruction: Optional[StrictStr] = None


class TeiRequest(BaseModel):
    """TEI's rerank request, plus our `instruction`."""
    query: StrictStr
    texts: list[Any]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: Optional[StrictBool] = False
    # the card's template cuts the document's end (the pair's start holds the query): only TEI's default is possible
    truncation_direction: Literal["Right", "right"] = "Right"
    instruction: Optional[StrictStr] = None


class CohereResult(Answer):
    index: int
    relevance_score: float
    document: Optional[dict[str, Any]] = Field(None, description='{"text": ...}, or the request\'s image or video '
                                                                  "object; with return_documents")


class CohereUsage(Answer):
    total_tokens: int
    prompt_tokens: int


class ApiVersion(Answer):
    version: str


class BilledUnits(Answer):
    search_units: int


class MetaTokens(Answer):
    input_tokens: int
    output_tokens: int


class CohereMeta(Answer):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: MetaTokens


class CohereResponse(Answer):
    """Cohere's rerank answer (Jina's on /v1: `usage`), best first."""
    id: str
    results: list[CohereResult]
    model: str
    usage: CohereUsage
    meta: CohereMeta


class TeiRank(Answer):
    index: int
    score: float
    text: Optional[str] = None  # with return_text


def add_routes(app: FastAPI, reranker: Optional[RerankModel], worker: BatchWorker, metrics, *, model_id: str,
               max_inputs: int, max_chars: Optional[int] = None, allow_remote_images: bool = False,
               video_limits: VideoLimits = VideoLimits()):
    """Register the rerank routes on `app`; without a reranker they answer 404 naming the fix.
    allow_remote_images: /v1/rerank's images may be http(s) URLs, downloaded by the server (serve/items.py).
    video_limits: what decoding one request's videos (query and documents together) may cost."""

    def read(query: Any, documents: list) -> tuple[Any, list]:
        """The bytes and decoded videos the model reads, for /v1/rerank's items (in a worker thread)."""
        budget = video_limits.budget()  # shared by the query's and the documents' videos
        query = query if isinstance(query, str) else read_media(query, None, allow_remote_images, "query", budget)
        return query, [d if isinstance(d, str) else read_media(d, i, allow_remote_images, "documents", budget)
                       for i, d in enumerate(documents)]

    async def scores(query: Any, documents: list, instruction: Optional[str], truncate: bool,
                     param: str) -> tuple[np.ndarray, int]:
        """-> (yes - no logits (N,), tokens) through the worker, or an ApiError."""
        if reranker is None:
            raise ApiError("this server has no reranker: start it with `mlx-embed serve --reranker MODEL`",
                           code="no_reranker", status=404)
        jobs.check_count(len(documents), max_inputs, param)
        if max_chars is not None:  # the query is read once per document
            query_text = query if isinstance(query, str) else query.get("text") or ""
            jobs.check_work(documents, query_text + (instruction or ""), max_chars, param)
        def prepare() -> tuple[list, Optional[list[int]]]:  # in a thread: the worker's thread only runs the model
            prepared = reranker.prepare_pairs([(query, d) for d in documents], instruction=instruction,
                                              truncate=truncate)
            return prepared, shared_starts(reranker.heads(prepared))

        try:
            sequences, shared = await run_in_threadpool(prepare)
        except ValueError as e:
            if "max_length" not in str(e):  # an item without content, an unreadable image: the model's refusal
                raise _refused(e, param) from None
            # a query that does not fit (whichever pair found it: it is the request's), or (TEI without truncate)
            # an over-long pair
            message = str(e)
            if "the instruction and query" in message:
                message = "query: " + message.split(": ", 1)[1]
            raise ApiError(jobs.named(message, param), "query" if "query" in message else param,
                           "context_length_exceeded", status=413 if not truncate else 400) from None
        except (TypeError, FileNotFoundError) as e:  # an image for a text reranker
            raise _refused(e, param) from None
        logits = await jobs.run(worker, sequences, 1, kind="rerank", shared=shared)
        tokens = sum(len(s) for s in sequences)
        metrics.embedded(len(sequences), tokens)
        return logits[:, 0], tokens

    async def cohere(body: CohereRequest, version: str):
        top_n = _check_top_n(body.top_n)
        images = version == "1"  # Jina's shape; Cohere's v2 is text only
        documents = _documents(body.documents, "documents", images)
        query = _query(body.query, images)
        # the bytes and frames the model reads; the request's objects are what comes back
        if images and not all(isinstance(d, str) for d in [query, *documents]):
            query_read, documents_read = await run_in_threadpool(read, query, documents)
        else:
            query_read, documents_read = query, documents
        logits, tokens = await scores(query_read, documents_read, body.instruction, True, "documents")
        relevance = sigmoid(logits)
        keep = body.return_documents if body.return_documents is not None else version == "1"
        results = [{"index": i, "relevance_score": float(relevance[i]),
                    **({"document": _returned(documents[i])} if keep else {})} for i in best_first(relevance, top_n)]
        return {"id": str(uuid.uuid4()), "results": results, "model": model_id,
                "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
                "meta": {"api_version": {"version": version}, "billed_units": {"search_units": 1},
                         "tokens": {"input_tokens": tokens, "output_tokens": 0}}}

    @app.post("/v1/rerank", responses=schema.responses("/v1/rerank", CohereResponse, schema.EMBED_ERRORS))
    async def cohere_v1(body: CohereRequest):
        return await cohere(body, "1")

    @app.post("/v2/rerank", responses=schema.responses("/v2/rerank", CohereResponse, schema.EMBED_ERRORS))
    async def cohere_v2(body: CohereRequest):
        return await cohere(body, "2")

    @app.post(TEI_RERANK_PATH, responses=schema.responses(TEI_RERANK_PATH, list[TeiRank], schema.EMBED_ERRORS))
    async def tei(body: TeiRequest):
        media = [(i, k) for i, t in enumerate(body.texts) if isinstance(t, dict) for k in MEDIA if k in t]
        if media:
            i, kind = media[0]
            raise ApiError(f"texts[{i}] has {_a(kind)}: TEI's /rerank ranks text; send {kind} documents to "
                           f'/v1/rerank (Jina\'s shape: {{"{kind}": "<data URL or base64>"}})', "texts",
                           "invalid_value")
        texts = _texts(body.texts, "texts", objects=False)
        logits, _ = await scores(body.query, texts, body.instruction, bool(body.truncate), "texts")
        values = logits if body.raw_scores else sigmoid(logits)
        return [{"index": i, "score": float(values[i]), **({"text": texts[i]} if body.return_text else {})}
                for i in best_first(values)]


def _check_top_n(top_n: Optional[int]) -> Optional[int]:
    try:
        return check_top_n(top_n)
    except ValueError:  # pydantic let only ints through: the value is what is wrong
        raise ApiError(f"top_n must be at least 1, got {top_n}", "top_n", "invalid_value") from None


def _refused(e: Exception, param: str) -> ApiError:
    """The model's refusal of the query or of documents[i] (prepare_pairs names them "pairs[i]: the query ...")."""
    message = str(e)
    if ": the query" in message:  # the query is the request's, whichever pair the model found it in
        code = "invalid_type" if isinstance(e, TypeError) else "invalid_value"
        return ApiError("query" + message.split(": the query", 1)[1], "query", code)
    return jobs.refused(e, param)


def _query(query: Any, images: bool) -> Any:
    """The request's query: a string, or (Jina's /v1) an object with "text", "image" and/or "video"."""
    if isinstance(query, str):
        return query
    if not images:
        raise ApiError("query must be a string: /v2/rerank ranks text; send an image or video query to /v1/rerank "
                       '(Jina\'s shape: "query": {"image": "<data URL or base64>"})', "query", "invalid_type")
    unknown = sorted(set(query) - {"text", *MEDIA})
    if unknown or not query:
        raise ApiError(f'query must be a string or {{"text", "image", "video"}}, got key '
                       f'{unknown[0] if unknown else "none"}{"" if unknown else "s"}', "query", "invalid_value")
    return query


def _documents(given: list, param: str, images: bool) -> list:
    """Cohere's and Jina's documents: strings, {"text": ...} (-> the string) and, with `images` (Jina's /v1),
    {"image" and/or "video", "text"?} objects kept as they are; an ApiError naming the bad one."""
    if not given:
        raise ApiError(f"{param} is empty: send at least one document", param, "empty_input")
    documents = []
    for i, item in enumerate(given):
        kind = next((k for k in MEDIA if k in item), None) if isinstance(item, dict) else None
        if kind is not None:
            if not images:
                raise ApiError(f"{param}[{i}] has {_a(kind)}: /v2/rerank ranks text; send {kind} documents to "
                               f'/v1/rerank (Jina\'s shape: {{"{kind}": "<data URL or base64>"}})', param,
                               "invalid_value")
            if "text" in item and not isinstance(item["text"], str):
                raise ApiError(f"{param}[{i}].text must be a string, got {type(item['text']).__name__}", param,
                               "invalid_type")
            documents.append({k: item[k] for k in ("text", *MEDIA) if k in item})
            continue
        documents.append(_texts([item], param, offset=i)[0])
    return documents


def _a(kind: str) -> str:
    return f"an {kind}" if kind == "image" else f"a {kind}"


def _returned(document: Any) -> dict:
    """A result's document: {"text": ...}, or the request's image or video object as it came."""
    return {"text": document} if isinstance(document, str) else document


def _texts(given: list, param: str, objects: bool = True, offset: int = 0) -> list[str]:
    """Documents as strings (Cohere and Jina also take {"text": ...}), or an ApiError naming the bad one."""
    if not given:
        raise ApiError(f"{param} is empty: send at least one document", param, "empty_input")
    texts = []
    for i, item in enumerate(given, offset):
        if objects and isinstance(item, dict) and isinstance(item.get("text"), str):
            item = item["text"]
        if not isinstance(item, str):
            wanted = 'a string or {"text": "..."}' if objects else "a string"
            raise ApiError(f"{param}[{i}] must be {wanted}, got {type(item).__name__}", param, "invalid_type")
        texts.append(item)
    return texts
