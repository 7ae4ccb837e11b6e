"""Text -> token ids for Qwen3-Embedding: instruction prompts, exactly one <|endoftext|>, truncation."""

import json
import re
from pathlib import Path
from typing import Optional

from tokenizers import Tokenizer as _HFTokenizer

EOS = "<|endoftext|>"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
SURROGATE = re.compile("[\ud800-\udfff]")  # lone UTF-16 halves: JSON can carry them, UTF-8 cannot
NFC_COMPOSE = 4  # NFC joins at most 4 code points into one (Greek: alpha + 2 breathings/accents + iota)
ENCODE_BATCH = 256  # texts encoded at a time: the tokenizer's per-token objects of a big request never pile up


def query_prompt(instruction: str) -> str:
    """The prefix the model was trained with for instructed inputs (no space after 'Query:')."""
    return f"Instruct: {instruction}\nQuery:"


def check_unicode(text: str, name: str) -> str:
    """Raise UnicodeError naming `name` when `text` holds a lone UTF-16 surrogate (JSON can carry one)."""
    bad = SURROGATE.search(text)
    if bad:
        raise UnicodeError(f"{name} holds a lone UTF-16 surrogate U+{ord(bad.group()):04X} at character "
                           f"{bad.start()}: not valid Unicode; send the whole character (a split emoji?)")
    return text


def read_prompts(folder: Path) -> dict[str, str]:
    """Named prompts of config_sentence_transformers.json, e.g. {"query": "Instruct: ...\\nQuery:", "document": ""}."""
    path = folder / "config_sentence_transformers.json"
    prompts = json.loads(path.read_text()).get("prompts", {}) if path.is_file() else {}
    return {"query": query_prompt(DEFAULT_INSTRUCTION), "document": "", **prompts}


def read_tokenizer(folder: Path) -> _HFTokenizer:
    """The folder's tokenizer.json, with no truncation and no padding (we bound and pad ourselves)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {folder}: is this a model folder?")
    try:
        tokenizer = _HFTokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception ("expected value at line 1 column 1")
        try:
            json.loads(path.read_bytes())
        except ValueError as bad:
            raise ValueError(f"{path} is not JSON ({bad}): the download is damaged; delete it and download "
                             "it again") from None
        raise ValueError(f"{path} is not a tokenizer `tokenizers` can read ({e}): is this a model folder?") from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def chars_per_token(tokenizer: _HFTokenizer) -> int:
    """No token covers more characters of the input than this (byte-level tokens: one char per byte), so a text of
    more than max_length * chars_per_token characters surely has more than max_length tokens."""
    longest = max(len(token) for token in tokenizer.get_vocab(with_added_tokens=True))
    return longest * (NFC_COMPOSE if tokenizer.normalizer is not None else 1)


def encode_ids(tokenizer: _HFTokenizer, texts: list[str]) -> list[list[int]]:
    """Texts -> their ids (no special tokens added), ENCODE_BATCH texts at a time and without offsets: the
    tokenizer's Encoding objects cost far more memory than the ids, and malloc keeps what a peak took."""
    ids = []
    for start in range(0, len(texts), ENCODE_BATCH):
        ids += [e.ids for e in tokenizer.encode_batch_fast(texts[start: start + ENCODE_BATCH],
                                                           add_special_tokens=False)]
    return ids


class Tokenizer:
    """tokenizer.json through HF `tokenizers`; every sequence ends in exactly one <|endoftext|>.

    Converted checkpoints may ship a tokenizer whose post-processor does not append <|endoftext|>, and current
    hub files do; so we encode without the post-processor and append it ourselves, the same ids either way.
    """

    def __init__(self, folder: Path):
        self._tokenizer = read_tokenizer(folder)
        self.eos_id = self._tokenizer.token_to_id(EOS)
        if self.eos_id is None:
            raise ValueError(f"{folder / 'tokenizer.json'} has no {EOS} token: not a Qwen3 tokenizer")
        self.chars_per_token = chars_per_token(self._tokenizer)

    def encode(self, texts: list[str], max_length: int, truncate: bool = True,
               direction: str = "right") -> list[list[int]]:
        """Each text -> ids ending in one <|endoftext|>, at most `max_length` of them.

        Over-long texts keep their first max_length-1 tokens (direction "left": their last) and the final
        <|endoftext|> (the pooled token);
        with truncate=False they raise ValueError naming the input's index and token count instead.
        Tokenizing work per text is bounded: a text surely over max_length (by its characters) is refused before
        tokenizing, and with truncation only its first 2 x max_length x chars_per_token characters are read (the
        same tokens unless one word runs past that cut). Lone surrogates raise UnicodeError naming the input.
        """
        bound = max_length * self.chars_per_token
        for i, text in enumerate(texts):
            check_unicode(text, f"input {i}")
            if len(text) > bound and not truncate:
                least = -(-len(text) // self.chars_per_token)
                raise ValueError(f"input {i} has {len(text)} characters: at least {least} "
                                 f"tokens, more than max_length {max_length}: shorten it, raise max_length, or allow "
                                 "truncation")
        if direction not in ("right", "left"):
            raise ValueError(f"truncation direction must be right or left, got {direction!r}")
        texts = [t[: 2 * bound] if direction == "right" else t[-2 * bound:] for t in texts]
        return [self.finish(ids, max_length, truncate, i, direction)
                for i, ids in enumerate(encode_ids(self._tokenizer, texts))]

    def finish(self, ids: list[int], max_length: int, truncate: bool = True, index: int = 0,
               direction: str = "right") -> list[int]:
        """End `ids` in exactly one <|endoftext|> and fit them into `max_length` (see `encode`)."""
        ids = list(ids)
        while ids and ids[-1] == self.eos_id:  # a text that itself ends in the token
            ids.pop()
        if len(ids) + 1 > max_length:
            if not truncate:
                raise ValueError(f"input {index} has {len(ids) + 1} tokens, more than max_length {max_length}: "
                                 "shorten it, raise max_length, or allow truncation")
            ids = ids[: max_length - 1] if direction == "right" else ids[len(ids) - max_length + 1:]
        return ids + [self.eos_id]

    def pieces(self, text: str) -> list[tuple[int, int, int]]:
        """`text` -> (id, start, stop) per token, start/stop character offsets into text (no <|endoftext|>)."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return [(i, start, stop) for i, (start, stop) in zip(encoding.ids, encoding.offsets)]
    def ids(self, texts: list[str]) -> list[list[int]]:
        """Each text -> its ids as they are: no special tokens added, no truncation (the reranker's parts)."""
        return encode_ids(self._tokenizer, texts)

    def token_id(self, token: str) -> Optional[int]:
        """The id of a token of the vocabulary (e.g. "yes"), or None if it is not one."""
        return self._tokenizer.token_to_id(token)

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)


def apply_prompt(texts: list[str], prompt: Optional[str]) -> list[str]:
    return texts if not prompt else [prompt + t for t in texts]
