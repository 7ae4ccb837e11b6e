"""The rerank dialects: Cohere's `POST /v1/rerank` and `/v2/rerank` (Jina's /v1/rerank has the same shape) and
TEI's `POST /rerank`. Each handler checks and tokenizes its request, then hands the pairs to the one BatchWorker.
"""

import uuid
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool

from ..checks import best_first, check_top_n, sigmoid
from ..contracts import RerankModel
from . import jobs
from .errors import COHERE_PATHS, TEI_RERANK_PATH, ApiError
from .worker import BatchWorker

RERANK_PATHS = COHERE_PATHS + (TEI_RERANK_PATH,)


class CohereRequest(BaseModel):
    """Cohere's (and Jina's) rerank request, plus our `instruction` (what relevance means to the model)."""
    query: StrictStr
    documents: list[Any] = Field(..., description='strings, or {"text": ...} objects')
    model: Optional[StrictStr] = None
    top_n: Optional[StrictInt] = None
    return_documents: Optional[StrictBool] = Field(None, description="default: true on /v1 (Jina), false on /v2")
    max_tokens_per_doc: Optional[StrictInt] = None  # Cohere v2; documents are cut to max_length here anyway
    rank_fields: Optional[list[StrictStr]] = None   # Cohere v1 for JSON documents: only "text" is read
    instruction: Optional[StrictStr] = None


class TeiRequest(BaseModel):
    """TEI's rerank request, plus our `instruction`."""
    query: StrictStr
    texts: list[Any]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: Optional[StrictBool] = False
    truncation_direction: Optional[StrictStr] = "Right"
    instruction: Optional[StrictStr] = None


def add_routes(app: FastAPI, reranker: Optional[RerankModel], worker: BatchWorker, metrics, *, model_id: str,
               max_inputs: int):
    """Register the rerank routes on `app`; without a reranker they answer 404 naming the fix."""

    async def scores(query: str, documents: list[str], instruction: Optional[str], truncate: bool,
                     param: str) -> tuple[np.ndarray, int]:
        """-> (yes - no logits (N,), tokens) through the worker, or an ApiError."""
        if reranker is None:
            raise ApiError("this server has no reranker: start it with `mlx-embed serve --reranker MODEL`",
                           code="no_reranker", status=404)
        jobs.check_count(len(documents), max_inputs, param)
        try:
            sequences = await run_in_threadpool(reranker.prepare_pairs, [(query, d) for d in documents],
                                                instruction=instruction, truncate=truncate)
        except ValueError as e:  # a query that does not fit, or (TEI without truncate) an over-long pair
            raise ApiError(jobs.named(str(e), param), "query" if "query" in str(e) else param,
                           "context_length_exceeded", status=413 if not truncate else 400) from None
        logits = await jobs.run(worker, sequences, 1, kind="rerank")
        tokens = sum(len(s) for s in sequences)
        metrics.embedded(len(sequences), tokens)
        return logits[:, 0], tokens

    async def cohere(body: CohereRequest, version: str):
        top_n = _check_top_n(body.top_n)
        documents = _texts(body.documents, "documents")
        logits, tokens = await scores(body.query, documents, body.instruction, True, "documents")
        relevance = sigmoid(logits)
        keep = body.return_documents if body.return_documents is not None else version == "1"
        results = [{"index": i, "relevance_score": float(relevance[i]),
                    **({"document": {"text": documents[i]}} if keep else {})} for i in best_first(relevance, top_n)]
        return {"id": str(uuid.uuid4()), "results": results, "model": model_id,
                "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
                "meta": {"api_version": {"version": version}, "billed_units": {"search_units": 1},
                         "tokens": {"input_tokens": tokens, "output_tokens": 0}}}

    @app.post("/v1/rerank")
    async def cohere_v1(body: CohereRequest):
        return await cohere(body, "1")

    @app.post("/v2/rerank")
    async def cohere_v2(body: CohereRequest):
        return await cohere(body, "2")

    @app.post(TEI_RERANK_PATH)
    async def tei(body: TeiRequest):
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


def _texts(given: list, param: str, objects: bool = True) -> list[str]:
    """Documents as strings (Cohere and Jina also take {"text": ...}), or an ApiError naming the bad one."""
    if not given:
        raise ApiError(f"{param} is empty: send at least one document", param, "empty_input")
    texts = []
    for i, item in enumerate(given):
        if objects and isinstance(item, dict) and isinstance(item.get("text"), str):
            item = item["text"]
        if not isinstance(item, str):
            wanted = 'a string or {"text": "..."}' if objects else "a string"
            raise ApiError(f"{param}[{i}] must be {wanted}, got {type(item).__name__}", param, "invalid_type")
        texts.append(item)
    return texts
