"""VLReranker: (query, document) pairs of text, image and video items -> P("yes") of Qwen3-VL-Reranker. It
composes a VLEmbedder, whose pixels, placeholder expansion, batch layout and decoder it reuses; this module adds
the reranker's conversation and its two-row head.

The recipe (QwenLM/Qwen3-VL-Embedding, src/models/qwen3_vl_reranker.py, `format_mm_instruction`, `tokenize`):
a fixed system turn; a user turn holding "<Instruct>: {instruction}", "<Query>:", the query's videos, images and
text, "\\n<Document>:", the document's; the chat template with the generation prompt. The whole text is tokenized
at once (as its processor does), and the score is sigmoid(h . (W[yes] - W[no])), h the final-normed hidden state
of the last token, W the LM head's rows of the tokenizer's own "yes" and "no".

Pairs that start with the same tokens (system turn, instruction, query) share their keys and values, computed
once per group as the text reranker's are (reranker.py). Equal placeholder ids may stand for different pixels, so
vision tokens count as equal only when they are the same image or video object: a query read once (`score`, or
one query item in many pairs) shares its images too; documents' images follow the shared prefix.
"""

from typing import Any, Callable, Optional, Sequence

import mlx.core as mx
import numpy as np

from ..batching import by_shared_prefix, run_batches
from ..checks import check_int, check_top_n, ranked, sigmoid
from ..checkpoint import Checkpoint
from ..checkpoint.vl_weights import load_vl_model, plan_vl_memory, read_vl_config, read_vl_head_rows
from ..contracts import RerankModel
from ..device import check_batch_tokens, plan
from ..models.qwen3 import PrefixCache
from ..tokenizer import read_tokenizer
from .embedder import Part, Prepared, VLEmbedder

SYSTEM = ("Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
          "Note that the answer can only be \"yes\" or \"no\".")
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
KEPT = 5  # the recipe never cuts the last 5 tokens: the generation prompt <|im_end|> \n <|im_start|> assistant \n
MAX_LENGTH = 10240 + KEPT  # the recipe's: 10240 tokens before the generation prompt


class VLReranker:
    """A loaded Qwen3-VL-Reranker. Make one with `mlx_qwen3_embed.load_reranker`."""

    def __init__(self, embedder: VLEmbedder, head: mx.array, *, max_length: int = MAX_LENGTH):
        self.embedder = embedder  # items' pixels, expansion, layout and the decoder (pooling "last", final layer)
        self.head = head  # (2, D) float32: the LM head's "no" and "yes" rows, the only two logits the score needs
        self.name, self.device, self.args = embedder.name, embedder.device, embedder.args
        tokenizer = embedder._tokenizer
        # the recipe's truncation keeps every special token (its tokenizer's all_special_ids, vision pads included)
        self.special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        self.vision_ids = (self.args.image_token_id, self.args.video_token_id)
        self.share_prefix = True  # False: every pair runs whole (the path before shared prefixes; for the bench)
        self.max_length = self._max_length(max_length)

    def prepare_pairs(self, pairs: Sequence[tuple[Any, Any]], *, instruction: Optional[str] = None,
                      max_length: Optional[int] = None, truncate: bool = True) -> list[Prepared]:
        """(query, document) pairs of items (str, or {"text", "image", "video"} as VLEmbedder takes them) -> one
        Prepared each (ids, rotary positions, pixels), errors naming `pairs[i]`.

        An over-long pair is cut as the recipe cuts it: the last 5 tokens and every special token (the vision
        tokens) stay, the first non-special tokens up to max_length stay, the rest (the document's text end)
        goes; truncate=False raises ValueError instead. A pair whose vision tokens alone exceed it always raises.
        """
        names = lambda i: (f"pairs[{i}]: the query", f"pairs[{i}]: the document")
        return self._prepare(_check_pairs(pairs), names, instruction, max_length, truncate)

    def score(self, query: Any, documents: Sequence[Any], *, instruction: Optional[str] = None,
              batch_tokens: Optional[int] = None) -> np.ndarray:
        """How well each document answers `query`: P("yes"), float32 (N,), in the documents' order."""
        documents = _check_documents(documents)
        self.embedder.check_size(_text(query), "", self.max_length, "query")
        parsed = self._part(query, "query")  # read once, whatever the number of documents
        pairs = [(parsed, d) for d in documents]
        names = lambda i: ("query", f"documents[{i}]")
        return self.score_prepared(self._prepare(pairs, names, instruction, None, True), batch_tokens=batch_tokens)

    def score_pairs(self, pairs: Sequence[tuple[Any, Any]], *, instruction: Optional[str] = None,
                    batch_tokens: Optional[int] = None) -> np.ndarray:
        """(query, document) pairs, queries free to differ -> P("yes"), float32 (N,)."""
        return self.score_prepared(self.prepare_pairs(pairs, instruction=instruction), batch_tokens=batch_tokens)

    def rerank(self, query: Any, documents: Sequence[Any], *, instruction: Optional[str] = None,
               top_n: Optional[int] = None, batch_tokens: Optional[int] = None) -> list[dict]:
        """Documents ordered best first: [{"index", "score", "document"}], at most `top_n` of them."""
        top_n = check_top_n(top_n)
        scores = self.score(query, documents, instruction=instruction, batch_tokens=batch_tokens)
        return ranked(scores, documents, top_n)

    def score_prepared(self, prepared: list[Prepared], *, batch_tokens: Optional[int] = None,
                       raw: bool = False) -> np.ndarray:
        """Prepared pairs -> float32 (N,): P("yes"), or with `raw` the logit yes - no.

        Pairs sharing their first tokens (and images) run that prefix once, then the rest against its keys and values
        (Reranker.score_ids); each run is packed by token count (image tokens included) under the token budget,
        right-padded, read at each pair's own last token (VLEmbedder's layout): a score does not depend on what
        it was batched with.
        """
        check_batch_tokens(batch_tokens)
        heads = self.heads(prepared)

        def whole(pairs: list) -> np.ndarray:
            return run_batches(pairs, self._logits, np.empty(len(pairs), np.float32), self.device,
                               batch_tokens=batch_tokens, name=self.name, what="scores")

        logits = by_shared_prefix(prepared, heads, lambda group, P: self._shared_logits(group, P, batch_tokens),
                                  whole)
        return logits if raw else sigmoid(logits)

    def heads(self, prepared: list[Prepared]) -> Optional[list[list[int]]]:
        """What each pair may share (_head; one mark per image object across `prepared`); None with share_prefix
        off."""
        marks: dict[int, int] = {}
        return [self._head(p, marks) for p in prepared] if self.share_prefix else None

    def _head(self, p: Prepared, marks: dict[int, int]) -> list[int]:
        """What a pair may share, all but its last token: its ids, each vision token replaced by a mark of the
        image or video it stands for (marks: id(Patches) -> a negative number, one per object)."""
        owners = iter([marks.setdefault(id(v), -1 - len(marks)) for v in p.visuals for _ in range(v.tokens)])
        return [next(owners) if t in self.vision_ids else t for t in p.ids[:-1]]

    def _split(self, p: Prepared, shared: int) -> tuple[list, list]:
        """p's images and videos before token `shared` and after it (a shared prefix never ends inside one)."""
        inside = sum(1 for t in p.ids[:shared] if t in self.vision_ids)
        k = 0
        while inside > 0:
            inside -= p.visuals[k].tokens
            k += 1
        return p.visuals[:k], p.visuals[k:]

    def _shared_logits(self, prepared: list[Prepared], shared: int, batch_tokens: Optional[int]) -> np.ndarray:
        """Pairs whose first `shared` tokens (and images) are the same -> (N,) float32 logits: that prefix once,
        then the rest at their own positions (those of the whole pair: Prepared's are absolute)."""
        first = prepared[0]
        cache = [PrefixCache() for _ in self.embedder.model.language_model.layers]
        with mx.stream(self.device.stream):
            prefix = Prepared(first.ids[:shared], first.positions[:, :shared], self._split(first, shared)[0])
            self.embedder._forward([prefix], cache)
            mx.eval([(c.keys, c.values) for c in cache])
        rests = [Prepared(p.ids[shared:], p.positions[:, shared:], self._split(p, shared)[1]) for p in prepared]
        return run_batches(rests, lambda batch: self._logits(batch, cache), np.empty(len(rests), np.float32),
                           self.device, batch_tokens=batch_tokens, name=self.name, what="scores",
                           sizes=[shared + len(r) for r in rests])

    def _logits(self, batch: list[Prepared], cache: Optional[list] = None) -> mx.array:
        """Prepared pairs (or what follows the prefix in `cache`) -> (B,) float32 logit yes - no, as a lazy graph."""
        hidden = self.embedder._forward(batch, cache).astype(mx.float32)  # (B, D): final-normed, each last token
        no_yes = hidden @ self.head.T  # (B, 2): two rows of the head, never the 151k-row projection
        return no_yes[:, 1] - no_yes[:, 0]

    def _prepare(self, pairs: list, names: Callable[[int], tuple[str, str]], instruction: Optional[str],
                 max_length: Optional[int], truncate: bool) -> list[Prepared]:
        """Pairs (a query may be a Part already) -> Prepared; names(i): how errors call pair i's query, document."""
        if instruction is not None and not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
        instruction = instruction or DEFAULT_INSTRUCTION  # the recipe's `instruct or default_instruction`
        limit = self._max_length(max_length)
        parsed: dict[int, Part] = {}  # a query shared by many pairs (the same object) is read once
        prepared = []
        for i, (query, document) in enumerate(pairs):
            query_name, document_name = names(i)
            if not isinstance(query, Part):
                if id(query) not in parsed:
                    self.embedder.check_size(_text(query), instruction, limit, query_name)
                    parsed[id(query)] = self._part(query, query_name)
                query = parsed[id(query)]
            if not truncate:  # refused by its characters before its images are read
                self.embedder.check_size(_text(document), query.text, limit, document_name)
            prepared.append(self._pair(query, self._part(document, document_name), instruction, limit, truncate,
                                       document_name.removesuffix(": the document")))
        return prepared

    def _pair(self, query: Part, document: Part, instruction: str, limit: int, truncate: bool,
              where: str) -> Prepared:
        """The recipe's conversation for one pair -> Prepared, cut to `limit` tokens as the recipe cuts."""
        # a document is read only as far as the limit needs (the same tokens unless one word runs past the cut)
        kept = document.text[: 2 * limit * self.embedder.chars_per_token]
        text = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<Instruct>: {instruction}"
                f"<Query>:{query.vision}{query.text}\n<Document>:{document.vision}{kept}"
                "<|im_end|>\n<|im_start|>assistant\n")
        ids = self.embedder._encode(text)  # at once, as the processor does: the parts' boundaries merge as there
        visuals = query.visuals + document.visuals
        pads = sum(1 for t in ids if t in (self.args.image_token_id, self.args.video_token_id))
        expanded = len(ids) + sum(v.tokens for v in visuals) - pads
        if expanded > limit:
            if not truncate:
                raise ValueError(f"{where} has {expanded} tokens, more than max_length {limit}: shorten the "
                                 "document, raise max_length, or allow truncation")
            ids = self._truncate(ids, expanded - len(ids), limit, where)
        ids, positions = self.embedder._expand(ids, visuals, 0)
        return Prepared(ids, positions, visuals)

    def _truncate(self, ids: list[int], extra: int, limit: int, where: str) -> list[int]:
        """The recipe's truncate_tokens_optimized on all but the last KEPT tokens: every special token stays
        (`extra`: the vision placeholders' expansion, all special), the first non-special ones fill the rest."""
        body, kept = ids[:-KEPT], ids[-KEPT:]
        special = sum(1 for t in body if t in self.special) + extra
        room = limit - KEPT - special
        if room < 0:
            raise ValueError(f"{where}: its vision and special tokens alone take {special + KEPT}, more than "
                             f"max_length {limit}: use smaller or fewer images, or raise max_length")
        out = []
        for token in body:
            if token in self.special:
                out.append(token)
            elif room > 0:
                out.append(token)
                room -= 1
        return out + kept

    def _part(self, item: Any, where: str) -> Part:
        """A query or document -> Part (VLEmbedder.read_part: its pixel rules, errors naming `where`); the
        instruction is the pair's, not an item's."""
        return self.embedder.read_part(item, where)

    def _max_length(self, max_length: Optional[int]) -> int:
        if max_length is None:
            return self.max_length
        return check_int("max_length", max_length, 64, note=" (the template's tokens and some more)")


def _text(item: Any) -> Any:
    """An item's text (a str item is its text), to be measured before the item is read."""
    return item.get("text") if isinstance(item, dict) else item


def _check_documents(documents) -> list:
    if documents is None or isinstance(documents, (str, bytes, dict)) or not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a list of str or item dicts, got {type(documents).__name__}")
    return list(documents)


def _check_pairs(pairs) -> list[tuple[Any, Any]]:
    if pairs is None or isinstance(pairs, (str, bytes, dict)) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a list of (query, document) pairs, got {type(pairs).__name__}")
    for i, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes, dict)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"pairs[{i}] must be a (query, document) pair, got {pair!r:.60}")
    return [(q, d) for q, d in pairs]


def load_vl_reranker(checkpoint: Checkpoint, *, device: Optional[str] = None, dtype: Optional[str] = None,
                     dequantize: Optional[bool] = None, batch_tokens: Optional[int] = None,
                     max_length: Optional[int] = None) -> RerankModel:
    """A Qwen3-VL checkpoint -> VLReranker (called by `mlx_qwen3_embed.load_reranker` for model_type qwen3_vl);
    refused with a MemoryError before any weight is read when it cannot fit."""
    folder, config = checkpoint.folder, checkpoint.config
    args = read_vl_config(folder, config)
    device_plan = plan_vl_memory(folder, plan(device, dtype, dequantize, batch_tokens), config, args)
    tokenizer = read_tokenizer(folder)  # before minutes of loading: the score needs "yes" and "no"
    no_yes = [tokenizer.token_to_id(token) for token in ("no", "yes")]
    if None in no_yes:
        raise ValueError(f"{folder / 'tokenizer.json'} has no {'no' if no_yes[0] is None else 'yes'!r} token: not "
                         "a Qwen3-VL-Reranker tokenizer (a Qwen3-VL-Embedding folder? load it with mlx_qwen3_embed.load)")
    head = read_vl_head_rows(folder, config, args, no_yes)
    model, args = load_vl_model(folder, device_plan, config)
    embedder = VLEmbedder(model, folder, args, device_plan, name=checkpoint.name, max_length=MAX_LENGTH)
    return VLReranker(embedder, head, max_length=MAX_LENGTH if max_length is None else max_length)
