"""What every dialect does between parsing and answering, written once against the contracts: the input-count
limit, inputs -> prepared inputs (with the dialect's truncation rule, errors naming `param[i]`), and prepared
inputs -> vectors or scores through the one BatchWorker, its refusals turned into ApiErrors."""

import asyncio
import functools
import re
from typing import Any, Callable, Optional

import numpy as np
from starlette.concurrency import run_in_threadpool

from ..checks import check_prompt_name
from ..contracts import EmbeddingModel
from ..pooling import check_dim
from .errors import ApiError
from .worker import BatchWorker, Job, QueueFull

INDEX = re.compile(r"^(?:item|input|texts|documents|pairs|pair)\s*\[?(\d+)\]?")  # the library's way to name input i


def check_count(n: int, max_inputs: int, param: str = "input", status: int = 400) -> None:
    """The per-request input limit: more than `max_inputs` is an ApiError naming `param`."""
    if n > max_inputs:
        raise ApiError(f"{param} has {n} items, more than the limit of {max_inputs}: split the request", param,
                       "too_many_inputs", status=status)


def check_work(inputs: list, prefix: str, max_chars: int, param: str = "input") -> None:
    """The request's work bound, checked before anything is tokenized: the characters it asks to tokenize (each
    input's text, plus `prefix` (an instruction, a prompt, a rerank query) once per input) may not pass
    `max_chars`, the body cap, so a small body cannot ask for more than a full one could. More is a 413."""
    total = sum(len(x) if isinstance(x, str) else len(x.get("text") or "") + len(x.get("instruction") or "")
                if isinstance(x, dict) else 0 for x in inputs) + len(prefix) * len(inputs)
    if total > max_chars:
        raise ApiError(f"the request asks to tokenize {total} characters ({param}'s texts, with the "
                       f"{'instruction or query' if prefix else 'prompt'} repeated for each of its {len(inputs)} "
                       f"items), more than the limit of {max_chars} (--max-request-bytes): split the request",
                       param, "request_too_large", status=413)


def prompt_text(model: EmbeddingModel, instruction: Optional[str], prompt_name: Optional[str]) -> str:
    """What is tokenized before each input: the instruction, or the named prompt (checked already)."""
    if instruction is not None:
        return instruction
    return model.prompts.get(prompt_name, "") if prompt_name is not None else ""


def check_prompt(prompt_name: Optional[str], model: EmbeddingModel) -> None:
    """An unknown `prompt_name` is an ApiError on that field."""
    if prompt_name is not None:
        try:
            check_prompt_name(prompt_name, model.prompts)
        except ValueError as e:
            raise ApiError(str(e), "prompt_name", "invalid_value") from None


def check_dimensions(dimensions: Optional[int], full: int) -> int:
    """A request's `dimensions` (pooling.check_dim) -> the width, or an ApiError on the `dimensions` field."""
    try:
        return check_dim(dimensions, full, "dimensions")
    except ValueError as e:
        raise ApiError(str(e), "dimensions", "invalid_value") from None


def named(message: str, param: str) -> str:
    """A library message that names an input by its index ("item 3 ...", "texts[3] ...") -> "param[3] ..."."""
    return INDEX.sub(lambda m: f"{param}[{m.group(1)}]", message, count=1)


def refused(e: Exception, param: str) -> ApiError:
    """The library's refusal of one input (ValueError, TypeError, FileNotFoundError) as a 400 naming it; an input
    over max_length is context_length_exceeded."""
    if isinstance(e, ValueError) and "more than max_length" in str(e):
        return too_long(named(str(e), param), param)
    return ApiError(named(str(e), param), param, "invalid_type" if isinstance(e, TypeError) else "invalid_value")


def too_long(message: str, param: str) -> ApiError:
    return ApiError(f"{message} (max_length is the server's --max-length)", param, "context_length_exceeded")


def fit(prepare: Callable[..., list], inputs: list, limit: int, *, truncate: bool,
        param: str = "input") -> tuple[list, list[int]]:
    """Inputs -> (prepared inputs of at most `limit` tokens, the indices of those cut). prepare(inputs, max_length=,
    truncate=) is the model's, so its bound on the work per input holds (a text surely too long is refused by its
    characters; a cut one is read only as far as the limit needs); over-long without `truncate`, or an input that
    cannot be cut (a Qwen3-VL item's image tokens), is a 400 context_length_exceeded naming it."""
    try:
        if not truncate:
            return prepare(inputs, max_length=limit, truncate=False), []
        # one token of room beyond the limit tells exactly which inputs were cut
        prepared = prepare(inputs, max_length=limit + 1, truncate=True)
    except UnicodeError:  # a lone surrogate: app.py answers 400 naming it
        raise
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise refused(e, param) from None
    over = [i for i, p in enumerate(prepared) if len(p) > limit]
    for i in over:
        try:
            prepared[i] = prepare([inputs[i]], max_length=limit, truncate=True)[0]
        except ValueError as e:  # it cannot be cut (a Qwen3-VL item's image tokens)
            raise too_long(f"{param}[{i}]: {named(str(e), param).removeprefix(f'{param}[0] ')}", param) from None
    return prepared, over


def prepare(model: EmbeddingModel, inputs: list[Any], *, truncate: bool, direction: str = "right",
            instruction: Optional[str] = None, prompt_name: Optional[str] = None, param: str = "input",
            max_chars: Optional[int] = None) -> tuple[list, list[int]]:
    """Inputs (texts, or Qwen3-VL items) -> (prepared inputs, the indices of those cut to max_length); `direction`
    "left" keeps the end (TEI's truncation_direction). Refusals are ApiErrors naming `param[i]`; max_chars: the
    request's work bound (check_work)."""
    check_prompt(prompt_name, model)
    if instruction is not None and prompt_name is not None:
        raise ApiError("give instruction or prompt_name, not both", "prompt_name", "invalid_value")
    if max_chars is not None:
        check_work(inputs, prompt_text(model, instruction, prompt_name), max_chars, param)
    return fit(lambda xs, **kw: model.prepare_inputs(xs, instruction=instruction, prompt_name=prompt_name,
                                                     direction=direction, **kw),
               inputs, model.max_length, truncate=truncate, param=param)


async def prepare_off_loop(model: EmbeddingModel, inputs: list[Any], **options) -> tuple[list, list[int]]:
    """`prepare` in a worker thread: tokenizing never runs on the event loop, so /health and every other client
    are answered while a big request is read."""
    return await run_in_threadpool(functools.partial(prepare, model, inputs, **options))


async def run(worker: BatchWorker, prepared: list, dim: int, normalize: bool = True, *,
              kind: str = "embed", shared: Optional[list[int]] = None) -> np.ndarray:
    """Queue prepared inputs on the worker and wait: (N, dim) float32 (rerank: (N, 1) logits; `shared`: the
    pairs' worker.shared_starts). A full queue is a 429, a model failure a 500."""
    try:
        future = worker.submit(Job(prepared, dim, normalize, kind=kind, shared=shared))
    except QueueFull as e:
        raise ApiError(f"server busy: {e}; retry shortly", code="queue_full", status=429,
                       kind="rate_limit_error") from None
    try:
        return await asyncio.wrap_future(future)
    except Exception as e:  # the model's fault, not the client's
        what = "reranking" if kind == "rerank" else "embedding"
        raise ApiError(f"{what} failed: {e}", code="internal_error", status=500, kind="server_error") from e
