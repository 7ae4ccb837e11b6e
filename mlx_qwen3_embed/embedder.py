"""Embedder: texts -> float32 unit vectors. The one place tokenizer, batching, model and pooling meet."""

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import mlx.core as mx
import numpy as np

from . import encode as _encode
from . import pooling as _pooling
from . import precision as _precision
from .batching import padded, run_batches
from .cache import VectorCache
from .checks import check_int, check_prompt_name
from .models.args import ModelArgs
from .device import DevicePlan, check_batch_tokens, plan
from .models.qwen3 import Qwen3
from .tokenizer import Tokenizer, apply_prompt, query_prompt, read_prompts
from .checkpoint import open_checkpoint
from .checkpoint.weights import load_fitted
from .contracts import EmbeddingModel

Texts = Union[str, Sequence[str]]


class Embedder:
    """A loaded Qwen3-Embedding model. Make one with `mlx_qwen3_embed.load`."""

    def __init__(self, model: Qwen3, tokenizer: Tokenizer, args: ModelArgs, device: DevicePlan, *,
                 name: str, folder: Path, max_length: int, pooling: str = "last",
                 prompts: Optional[dict[str, str]] = None):
        self.model, self.tokenizer, self.args, self.device = model, tokenizer, args, device
        self.name, self.folder, self.max_length, self.pooling = name, folder, max_length, pooling
        self.prompts = prompts or {}
        self.cache: Optional[VectorCache] = None  # load(..., cache_size=N) sets one

    @property
    def dim(self) -> int:
        """Full embedding size (hidden_size)."""
        return self.args.hidden_size

    def tokenize(self, texts: Texts, *, instruction: Optional[str] = None, prompt_name: Optional[str] = None,
                 prompt: Optional[str] = None, max_length: Optional[int] = None, truncate: bool = True,
                 direction: str = "right") -> list[list[int]]:
        """Texts -> token ids as the model reads them: prompt applied, each ending in one <|endoftext|>.

        truncate: an over-long text keeps its first ("right") or last ("left") tokens and its <|endoftext|>.
        """
        texts = _check_texts(texts)
        prefix = self._prompt(instruction, prompt_name, prompt)
        return self.tokenizer.encode(apply_prompt(texts, prefix), self._max_length(max_length), truncate, direction)

    prepare_inputs = tokenize  # the contract's name (contracts.EmbeddingModel): a text's prepared form is its ids

    def prepare_ids(self, sequences: Sequence[Sequence[int]], *, max_length: Optional[int] = None,
                    truncate: bool = True, own: bool = False) -> list[list[int]]:
        """Pre-tokenized input (N lists of ids) -> finished ids: each gets its final <|endoftext|> like text does.

        own: refuse (ValueError) a list that is not this tokenizer's own tokenization of some text.
        """
        if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence):
            raise TypeError(f"sequences must be a list of lists of token ids, got {type(sequences).__name__}")
        vocab = self.args.vocab_size
        limit = self._max_length(max_length)
        finished = []
        for i, ids in enumerate(sequences):
            if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
                raise TypeError(f"input {i} must be a list of token ids, got {type(ids).__name__}")
            for t in ids:
                if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < vocab:
                    raise ValueError(f"input {i} holds {t!r}, not a token id in 0..{vocab - 1}")
            finished.append(self.tokenizer.finish(ids, limit, truncate, i))
        foreign = self._foreign([ids[:-1] for ids in finished]) if own else None
        if foreign is not None:
            raise ValueError(f"input {foreign} is not this model's token ids: decoded and encoded again it gives "
                             "other ids")
        return finished

    def _foreign(self, sequences: list[list[int]]) -> Optional[int]:
        """The index of the first id list that decode -> encode does not give back unchanged, else None.

        What passes is exactly this tokenizer's own tokenization of some text, embedded as that text. Another
        tokenizer's ids, read as Qwen ids, mostly decode to a string that Qwen's BPE splits differently, but not
        always: a single id passes whenever its token encodes back to itself (most of the vocabulary does), and
        so may a short list of whole-word tokens. Such inputs cannot be told from real Qwen ids. A request is
        refused as a whole as soon as one of its lists fails, so LangChain's tiktoken ids slip through only when
        every list of the call round-trips: in practice, calls whose texts are all a token or two long.
        """
        again = self.tokenizer.encode([self.tokenizer.decode(ids) for ids in sequences], 2**62)
        return next((i for i, (ids, back) in enumerate(zip(sequences, again)) if back[:-1] != ids), None)

    def tokens(self, text: str, *, prompt_name: Optional[str] = None, add_special_tokens: bool = True,
               max_length: Optional[int] = None) -> list[dict]:
        """What the model reads for `text` (TEI's /tokenize): the prompt's and the text's tokens, then, with
        add_special_tokens, the <|endoftext|> it pools; start/stop index the prompted text. A text over max_length
        (default: the model's) is a ValueError, refused by its characters before tokenizing when it surely is."""
        text = (check_prompt_name(prompt_name, self.prompts) if prompt_name is not None else "") + text
        limit = self._max_length(max_length)
        if len(text) > limit * self.tokenizer.chars_per_token:
            raise ValueError(f"the text has {len(text)} characters: surely more than max_length {limit} tokens")
        pieces = self.tokenizer.pieces(text)
        if len(pieces) + add_special_tokens > limit:
            raise ValueError(f"the text has {len(pieces) + add_special_tokens} tokens, more than max_length {limit}")
        tokens = [{"id": i, "text": text[start:stop], "special": False, "start": start, "stop": stop}
                  for i, start, stop in pieces]
        if add_special_tokens:
            eos = self.tokenizer.eos_id
            tokens.append({"id": eos, "text": self.tokenizer.decode([eos]), "special": True, "start": None,
                           "stop": None})
        return tokens

    def describe(self) -> dict:
        """The contract's summary: family, decoder layers, quantization of the checkpoint."""
        return {"family": "qwen3", "layers": self.args.num_hidden_layers, "quantization": self.args.quantization,
                "decoder": self.args}

    def embed(self, texts: Texts, *, instruction: Optional[str] = None, prompt_name: Optional[str] = None,
              prompt: Optional[str] = None, dim: Optional[int] = None, normalize: bool = True,
              pooling: Optional[str] = None, batch_tokens: Optional[int] = None,
              max_length: Optional[int] = None, truncate: bool = True, precision: str = "float32",
              ranges: Optional[np.ndarray] = None) -> np.ndarray:
        """Texts -> float32 vectors: a str gives (dim,), a list of N str gives (N, dim).

        instruction: a task description for queries, sent as "Instruct: {instruction}\\nQuery:{text}".
        prompt_name / prompt: a named prompt of the checkpoint ("query", "document") or a raw prefix.
        dim: Matryoshka size (first `dim` values, then normalised). truncate=False: over-long input raises.
        precision: float16, int8, uint8, binary or ubinary return those rows instead (sentence-transformers'
        semantics, see precision.py); int8/uint8 bucket each dimension within `ranges` ((2, dim)), else within
        these vectors' own ranges.
        """
        sequences = self.tokenize(texts, instruction=instruction, prompt_name=prompt_name, prompt=prompt,
                                  max_length=max_length, truncate=truncate)
        vectors = self.embed_prepared(sequences, dim=dim, normalize=normalize, pooling=pooling,
                                      batch_tokens=batch_tokens, precision=precision, ranges=ranges)
        return vectors[0] if isinstance(texts, str) else vectors

    def embed_ids(self, sequences: Sequence[Sequence[int]], *, dim: Optional[int] = None, normalize: bool = True,
                  pooling: Optional[str] = None, batch_tokens: Optional[int] = None,
                  max_length: Optional[int] = None, truncate: bool = True) -> np.ndarray:
        """Pre-tokenized input (N lists of ids) -> (N, dim); each gets its final <|endoftext|> like text does."""
        finished = self.prepare_ids(sequences, max_length=max_length, truncate=truncate)
        return self._embed_sequences(finished, dim, normalize, pooling, batch_tokens)

    def embed_prepared(self, prepared: list[list[int]], *, dim: Optional[int] = None, normalize: bool = True,
                       pooling: Optional[str] = None, batch_tokens: Optional[int] = None,
                       precision: str = "float32", ranges: Optional[np.ndarray] = None) -> np.ndarray:
        """Finished ids (from `tokenize` / `prepare_ids`) -> (N, dim) float32, or `precision` rows."""
        if precision == "float32":
            return self._embed_sequences(prepared, dim, normalize, pooling, batch_tokens)
        _precision.check(precision)  # before the compute
        vectors = self._embed_sequences(prepared, dim, normalize, pooling, batch_tokens)
        return _precision.quantize(vectors, precision, ranges)

    def embed_query(self, texts: Texts, instruction: Optional[str] = None, **kwargs) -> np.ndarray:
        """Queries carry an instruction: the given one, else the checkpoint's "query" prompt."""
        if instruction is not None:
            return self.embed(texts, instruction=instruction, **kwargs)
        return self.embed(texts, prompt_name="query", **kwargs)

    def embed_document(self, texts: Texts, **kwargs) -> np.ndarray:
        """Documents are embedded as they are (the checkpoint's "document" prompt, empty for Qwen3-Embedding)."""
        return self.embed(texts, prompt_name="document", **kwargs)

    # sentence-transformers' encode API (same signature, same vectors): see encode.py
    def encode(self, inputs, *args, **kwargs):
        """SentenceTransformer.encode's signature and semantics; see mlx_qwen3_embed.encode.encode."""
        return _encode.encode(self, inputs, *args, **kwargs)

    def encode_query(self, inputs, *args, **kwargs):
        return _encode.encode_query(self, inputs, *args, **kwargs)

    def encode_document(self, inputs, *args, **kwargs):
        return _encode.encode_document(self, inputs, *args, **kwargs)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity of unit vectors: (N, d) x (M, d) -> (N, M)."""
        return np.atleast_2d(a) @ np.atleast_2d(b).T

    def _embed_sequences(self, sequences: list[list[int]], dim: Optional[int], normalize: bool,
                         pooling: Optional[str], batch_tokens: Optional[int]) -> np.ndarray:
        dim = _pooling.check_dim(dim, self.dim)
        method = _pooling.check(pooling or self.pooling)
        if batch_tokens is not None:
            check_batch_tokens(batch_tokens)
        if self.cache is not None and sequences:
            return self.cache.embed(sequences, (dim, normalize, method),
                                    lambda missing: self._compute(missing, dim, normalize, method, batch_tokens))
        return self._compute(sequences, dim, normalize, method, batch_tokens)

    def _compute(self, sequences: list[list[int]], dim: int, normalize: bool, method: str,
                 batch_tokens: Optional[int]) -> np.ndarray:
        forward = padded(lambda input_ids, lengths: self._pooled(input_ids, lengths, method, dim, normalize),
                         self.tokenizer.eos_id)
        return run_batches(sequences, forward, np.empty((len(sequences), dim), dtype=np.float32), self.device,
                           batch_tokens=batch_tokens, name=self.name)

    def _pooled(self, input_ids: mx.array, lengths: mx.array, method: str, dim: int, normalize: bool) -> mx.array:
        """(B, L) right-padded ids -> (B, dim) float32 vectors, as a lazy graph."""
        if method == "last":
            # only the pooled token goes through the final block's query and MLP
            pooled = self.model.last_token(input_ids, lengths).astype(mx.float32)
        else:
            pooled = _pooling.pool(self.model(input_ids, lengths).astype(mx.float32), lengths, method)  # sums in fp32
        pooled = _pooling.truncate(pooled, dim)
        return _pooling.normalize(pooled) if normalize else pooled

    def _prompt(self, instruction: Optional[str], prompt_name: Optional[str], prompt: Optional[str]) -> str:
        given = [n for n, v in (("instruction", instruction), ("prompt_name", prompt_name), ("prompt", prompt))
                 if v is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of instruction, prompt_name and prompt, got {' and '.join(given)}")
        for name, value in (("instruction", instruction), ("prompt_name", prompt_name), ("prompt", prompt)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        if instruction is not None:
            return query_prompt(instruction)
        if prompt_name is not None:
            return check_prompt_name(prompt_name, self.prompts)
        return prompt or ""

    def _max_length(self, max_length: Optional[int]) -> int:
        if max_length is None:
            return self.max_length
        return check_int("max_length", max_length, 2, note=" (text + <|endoftext|>)")


def _check_texts(texts: Texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, dict):
        texts = [texts]  # an item dict: the check below names it
    if texts is None or isinstance(texts, bytes) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if isinstance(t, dict):
            raise TypeError(f"texts[{i}] is a dict (an image or mixed item?): this is a text-only Qwen3 model; items "
                            "need a Qwen3-VL model (e.g. Qwen/Qwen3-VL-Embedding-2B)")
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
    return list(texts)


def _default_max_length(folder: Path, args: ModelArgs) -> int:
    path = folder / "sentence_bert_config.json"
    if path.is_file():
        value = json.loads(path.read_text()).get("max_seq_length")
        if value:
            return min(int(value), args.max_position_embeddings)
    return args.max_position_embeddings


def load(model: str, *, device: Optional[str] = None, dtype: Optional[str] = None,
         dequantize: Optional[bool] = None, batch_tokens: Optional[int] = None, max_length: Optional[int] = None,
         pooling: str = "last", revision: Optional[str] = None, cache_size: int = 0,
         layer: Optional[int] = None) -> EmbeddingModel:
    """A local folder or hub id -> an EmbeddingModel (contracts.py). Device choices (dtype, dequantize,
    batch_tokens) default per device.

    A Qwen3 text checkpoint gives an Embedder; a Qwen3-VL one (model_type qwen3_vl) a vision.embedder.VLEmbedder,
    which also embeds images and video; `layer` (which hidden state to pool) is for those only.
    cache_size: keep the vectors of the last N distinct inputs (exact token ids + options) and reuse them.
    """
    _pooling.check(pooling)
    cache = VectorCache(cache_size) if cache_size else None
    checkpoint = open_checkpoint(model, revision)
    if checkpoint.kind == "qwen3_vl_reranker":
        raise ValueError(f"{model} holds a Qwen3-VL reranker (its name says rerank, or convert marked it), not an "
                         "embedding model: load it with mlx_qwen3_embed.load_reranker, or give a Qwen3-VL-Embedding "
                         "folder")
    if checkpoint.kind == "qwen3_vl":
        if cache_size:
            raise ValueError("cache_size is for Qwen3 text models; Qwen3-VL items are not cached")
        from .vision.embedder import load_vl  # only a Qwen3-VL checkpoint imports the vision modules

        return load_vl(checkpoint, device=device, dtype=dtype, dequantize=dequantize, batch_tokens=batch_tokens,
                       max_length=max_length, pooling=pooling, layer=layer)
    if layer is not None:
        raise ValueError(f"layer= is for Qwen3-VL models; {model} is a Qwen3 text model (it pools the final layer)")
    if checkpoint.kind == "reranker":
        raise ValueError(f"{model} holds a reranker (Qwen3-Reranker), not an embedding model: load it with "
                         "mlx_qwen3_embed.load_reranker, or give a Qwen3-Embedding folder")
    folder = checkpoint.folder
    qwen, args, device_plan = load_fitted(folder, plan(device, dtype, dequantize, batch_tokens), checkpoint.config)
    embedder = Embedder(qwen, Tokenizer(folder), args, device_plan, name=str(model), folder=folder,
                        max_length=_default_max_length(folder, args), pooling=pooling, prompts=read_prompts(folder))
    embedder.max_length = embedder._max_length(max_length)
    embedder.cache = cache
    return embedder
