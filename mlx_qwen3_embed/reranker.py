"""Reranker: (query, document) pairs -> P("yes") of Qwen3-Reranker. The embedder's decoder and batching, read at
each pair's last token through a two-row head; the prefix that pairs share (template, instruction, query) computed
once per group of pairs."""

from pathlib import Path
from typing import Optional, Sequence

import mlx.core as mx
import numpy as np

from .batching import by_shared_prefix, padded, run_batches
from .checks import check_int, check_top_n, ranked, sigmoid
from .models.args import ModelArgs
from .device import DevicePlan, check_batch_tokens, plan
from .models.qwen3 import Qwen3
from .tokenizer import DEFAULT_INSTRUCTION, Tokenizer, check_unicode
from .checkpoint import open_checkpoint, vl_role
from .checkpoint.weights import load_fitted, read_head_rows
from .contracts import RerankModel

# The model card's chat template around each pair; the suffix's empty think block is part of what it was trained on
PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
          "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
MAX_LENGTH = 8192  # the model card's limit for prefix + pair + suffix


def pair_body(instruction: str, query: str, document: str = "") -> str:
    """The user turn of the card's template; the document comes last, so truncation cuts only the document."""
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


class Reranker:
    """A loaded Qwen3-Reranker. Make one with `mlx_qwen3_embed.load_reranker`."""

    def __init__(self, model: Qwen3, tokenizer: Tokenizer, args: ModelArgs, device: DevicePlan, head: mx.array, *,
                 name: str, folder: Path, max_length: int):
        self.model, self.tokenizer, self.args, self.device = model, tokenizer, args, device
        self.head = head  # (2, D) float32: the LM head's "no" and "yes" rows, the only two logits the score needs
        self.name, self.folder = name, folder
        self.share_prefix = True  # False: every pair runs whole (the path before shared prefixes; for the bench)
        self.prefix_ids, self.suffix_ids = tokenizer.ids([PREFIX, SUFFIX])
        self.max_length = self._max_length(max_length)

    def tokenize(self, query: str, documents: Sequence[str], *, instruction: Optional[str] = None,
                 max_length: Optional[int] = None, truncate: bool = True) -> list[list[int]]:
        """One query and N documents -> N token id lists: prefix + pair + suffix, the document cut to fit."""
        _check_str("query", query)
        return self.tokenize_pairs([(query, d) for d in _check_documents(documents)], instruction=instruction,
                                   max_length=max_length, truncate=truncate)

    def tokenize_pairs(self, pairs: Sequence[tuple[str, str]], *, instruction: Optional[str] = None,
                       max_length: Optional[int] = None, truncate: bool = True) -> list[list[int]]:
        """(query, document) pairs -> token id lists as the card builds them: prefix + the pair's body + suffix,
        the body's end cut to fit max_length (so only the document shrinks). truncate=False: a pair over
        max_length raises ValueError instead.

        The body is encoded in two parts, the same ids as encoding it whole: "...<Document>:" (once per distinct
        query) and " " + document (the space starts the document's first pre-token: the ":" run before it cannot
        extend into it). So a request's work is one query's tokens plus each document's, and a document is read
        only as far as the budget needs (Tokenizer.encode's character bound).
        """
        pairs = _check_pairs(pairs)
        instruction = DEFAULT_INSTRUCTION if instruction is None else check_unicode(
            _check_str("instruction", instruction), "instruction")
        limit = self._max_length(max_length)
        fixed = len(self.prefix_ids) + len(self.suffix_ids)
        budget = limit - fixed
        bound = budget * self.tokenizer.chars_per_token  # more characters than this: surely over the budget
        heads: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            if query not in heads:
                heads[query] = self._head(instruction, query, bound, budget, limit, fixed, i)
        documents = []
        for i, (query, document) in enumerate(pairs):
            room = budget - len(heads[query])
            if len(document) + 1 > room * self.tokenizer.chars_per_token and not truncate:
                raise ValueError(f"pair {i} has {len(document)} characters in its document: more than max_length "
                                 f"{limit} tokens: shorten the document, raise max_length, or allow truncation")
            documents.append(" " + document[: 2 * bound])  # the same tokens unless one word runs past the cut
        sequences = []
        for i, ((query, _), ids) in enumerate(zip(pairs, self.tokenizer.ids(documents))):
            head = heads[query]
            if len(head) + len(ids) > budget:
                if not truncate:
                    raise ValueError(f"pair {i} has {len(head) + len(ids) + fixed} tokens, more than max_length "
                                     f"{limit}: shorten the document, raise max_length, or allow truncation")
                ids = ids[: budget - len(head)]
            sequences.append(self.prefix_ids + head + ids + self.suffix_ids)
        return sequences

    def _head(self, instruction: str, query: str, bound: int, budget: int, limit: int, fixed: int,
              index: int) -> list[int]:
        """The ids of the body up to "<Document>:", refused (naming pair `index`) when they and the document's
        first token cannot fit: by its characters before any tokenizing, else by its tokens."""
        text = pair_body(instruction, query).removesuffix(" ")
        ids = self.tokenizer.ids([text])[0] if len(text) <= bound else None
        if ids is None or len(ids) + 1 > budget:
            size = f"{len(ids) + 1} tokens" if ids is not None else f"{len(text)} characters"
            raise ValueError(f"pair {index}: the instruction and query take {size}, more than the {budget} that "
                             f"max_length {limit} leaves beside the template's {fixed}: shorten the query or raise "
                             "max_length")
        return ids

    prepare_pairs = tokenize_pairs  # the contract's names (contracts.RerankModel)

    def score(self, query: str, documents: Sequence[str], *, instruction: Optional[str] = None,
              batch_tokens: Optional[int] = None) -> np.ndarray:
        """How well each document answers `query`: P("yes"), float32 (N,), in the documents' order."""
        return self.score_ids(self.tokenize(query, documents, instruction=instruction), batch_tokens=batch_tokens)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, instruction: Optional[str] = None,
                    batch_tokens: Optional[int] = None) -> np.ndarray:
        """(query, document) pairs, queries free to differ -> P("yes"), float32 (N,)."""
        return self.score_ids(self.tokenize_pairs(pairs, instruction=instruction), batch_tokens=batch_tokens)

    def rerank(self, query: str, documents: Sequence[str], *, instruction: Optional[str] = None,
               top_n: Optional[int] = None, batch_tokens: Optional[int] = None) -> list[dict]:
        """Documents ordered best first: [{"index", "score", "document"}], at most `top_n` of them."""
        top_n = check_top_n(top_n)
        scores = self.score(query, documents, instruction=instruction, batch_tokens=batch_tokens)
        return ranked(scores, documents, top_n)

    def score_ids(self, sequences: list[list[int]], *, batch_tokens: Optional[int] = None,
                  raw: bool = False) -> np.ndarray:
        """Tokenized pairs (from `tokenize`) -> float32 (N,): P("yes"), or with `raw` the logit yes - no.

        Pairs that start with the same tokens (those of one query: template, instruction, query) are grouped
        (batching.shared_prefixes); a group's prefix runs once, then its pairs' remaining tokens, batched like
        embeddings (length-sorted, token budget, right padding), attend to its keys and values: the same scores
        as whole pairs, since a token's keys and values depend only on the tokens before it. The prefix is kept
        only while its group runs (models.qwen3.PrefixCache: 2 x KV heads x head_dim x 4 bytes in float32 per
        token per layer, 8 KiB for the 0.6B, so 224 KiB a token over its 28 layers: ~20 MiB for a 90-token
        prefix); a batch counts it in its token budget, as its keys are in each pair's attention. Pairs sharing
        nothing worth it run whole. Each is read at its own last token, so a score does not depend on what it was
        batched with.
        """
        check_batch_tokens(batch_tokens)
        heads = self.heads(sequences)

        def whole(pairs: list) -> np.ndarray:
            return run_batches(pairs, padded(self._logits, self.tokenizer.eos_id), np.empty(len(pairs), np.float32),
                               self.device, batch_tokens=batch_tokens, name=self.name, what="scores")

        logits = by_shared_prefix(sequences, heads, lambda group, P: self._shared_logits(group, P, batch_tokens),
                                  whole)
        return logits if raw else sigmoid(logits)

    score_prepared = score_ids

    def heads(self, sequences: list[list[int]]) -> Optional[list[list[int]]]:
        """What each pair may share: all but its last token (the scored one); None with share_prefix off."""
        return [s[:-1] for s in sequences] if self.share_prefix else None

    def _shared_logits(self, sequences: list[list[int]], shared: int, batch_tokens: Optional[int]) -> np.ndarray:
        """Pairs whose first `shared` tokens are the same -> (N,) float32 logits: that prefix once, then the rest."""
        with mx.stream(self.device.stream):
            cache = self.model.prefix(mx.array([sequences[0][:shared]]))

        def forward(input_ids: mx.array, lengths: mx.array) -> mx.array:
            return self._logits(input_ids, lengths, cache)

        rests = [s[shared:] for s in sequences]
        # each counts its prefix too: the attention's keys (and scores) grow with it, as for the whole pair
        return run_batches(rests, padded(forward, self.tokenizer.eos_id), np.empty(len(rests), dtype=np.float32),
                           self.device, batch_tokens=batch_tokens, name=self.name, what="scores",
                           sizes=[shared + len(r) for r in rests])

    def _logits(self, input_ids: mx.array, lengths: mx.array, cache: Optional[list] = None) -> mx.array:
        """(B, L) right-padded pairs (or what follows the prefix in `cache`) -> (B,) float32 logit yes - no, as a
        lazy graph."""
        hidden = self.model.last_token(input_ids, lengths, cache).astype(mx.float32)
        no_yes = hidden @ self.head.T  # (B, 2): two rows of the head, never the 151k-row projection
        return no_yes[:, 1] - no_yes[:, 0]

    def _max_length(self, max_length: Optional[int]) -> int:
        if max_length is None:
            return self.max_length
        least = len(self.prefix_ids) + len(self.suffix_ids) + 1
        return check_int("max_length", max_length, least, note=" (the template's tokens and one more)")


def _check_str(name: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def _check_documents(documents) -> list[str]:
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a list of str, got {type(documents).__name__}")
    for i, d in enumerate(documents):
        if not isinstance(d, str):
            raise TypeError(f"documents[{i}] must be a str, got {type(d).__name__}")
    return list(documents)


def _check_pairs(pairs) -> list[tuple[str, str]]:
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a list of (query, document) pairs, got {type(pairs).__name__}")
    checked = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"pairs[{i}] must be a (query, document) pair, got {pair!r:.60}")
        for part, value in zip(("query", "document"), pair):
            if not isinstance(value, str):
                raise TypeError(f"pairs[{i}]'s {part} must be a str, got {type(value).__name__}")
            check_unicode(value, f"pairs[{i}]: the {part}")
        checked.append((pair[0], pair[1]))
    return checked


def load_reranker(model: str, *, device: Optional[str] = None, dtype: Optional[str] = None,
                  dequantize: Optional[bool] = None, batch_tokens: Optional[int] = None,
                  max_length: Optional[int] = None, revision: Optional[str] = None) -> RerankModel:
    """A local folder or hub id of Qwen3-Reranker (hub or mlx-community layout) -> a RerankModel (contracts.py); of
    any Qwen3-VL model (Qwen3-VL-Reranker) -> a vision.reranker.VLReranker, which also ranks images and video.
    Options as `load`."""
    checkpoint = open_checkpoint(model, revision)
    if checkpoint.kind == "embedding":
        raise ValueError(f"{model} holds an embedding model (it has sentence-transformers pooling files), not a "
                         "reranker: load it with mlx_qwen3_embed.load, or give a Qwen3-Reranker folder")
    if checkpoint.kind == "qwen3_vl" and vl_role(checkpoint) == "embedding":
        raise ValueError(f"{model} holds a Qwen3-VL embedding model, not a reranker (its name or convert's mark "
                         "says so): load it with mlx_qwen3_embed.load, or give a Qwen3-VL-Reranker folder")
    if checkpoint.vision:  # a Qwen3-VL folder that does not say embedding: the caller says reranker (REFERENCE.md)
        from .vision.reranker import load_vl_reranker  # only a Qwen3-VL checkpoint imports the vision modules

        return load_vl_reranker(checkpoint, device=device, dtype=dtype, dequantize=dequantize,
                                batch_tokens=batch_tokens, max_length=max_length)
    folder = checkpoint.folder
    qwen, args, device_plan = load_fitted(folder, plan(device, dtype, dequantize, batch_tokens), checkpoint.config)
    tokenizer = Tokenizer(folder)
    ids = []
    for token in ("no", "yes"):
        ids.append(tokenizer.token_id(token))
        if ids[-1] is None:
            raise ValueError(f"{folder / 'tokenizer.json'} has no {token!r} token: not a Qwen3-Reranker tokenizer")
    head = read_head_rows(folder, args, ids)
    return Reranker(qwen, tokenizer, args, device_plan, head, name=str(model), folder=folder,
                    max_length=max_length if max_length is not None else min(MAX_LENGTH, args.max_position_embeddings))
