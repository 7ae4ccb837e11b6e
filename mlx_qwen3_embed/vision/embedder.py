"""VLEmbedder: text, image and mixed items -> float32 unit vectors with Qwen3-VL-Embedding (or, pooled from
their hidden states, a Qwen3-VL instruct model). The one place the prompt, pixels, batching and model meet.

The recipe (QwenLM/Qwen3-VL-Embedding, src/models/qwen3_vl_embedding.py): the instruction is the system turn,
the user turn holds the images then the text, the chat template ends with the generation prompt
"<|im_start|>assistant\\n", and the vector is the final-normed hidden state of that last "\\n", L2-normalised.
"""

import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import mlx.core as mx
import numpy as np

from .. import precision as _precision
from ..checks import check_int, check_prompt_name
from . import images as _images
from .. import pooling as _pooling
from . import video as _video
from ..batching import run_batches
from ..device import DevicePlan, check_batch_tokens, plan
from ..models.qwen3_vl import MRows, Qwen3VL, VLArgs
from ..tokenizer import chars_per_token, read_tokenizer
from ..checkpoint import Checkpoint
from ..checkpoint.vl_weights import load_vl_model, plan_vl_memory, read_vl_config

DEFAULT_VL_INSTRUCTION = "Represent the user's input."
MAX_LENGTH = 8192  # the recipe's
MEDIA_KEYS = ("text", "image", "video")  # what an item holds; the embedder's may also carry its "instruction"
ITEM_KEYS = MEDIA_KEYS + ("instruction",)
PLACEHOLDERS = ("<|image_pad|>", "<|video_pad|>")  # the model's own tokens for pixels: never in a text
PAD = "<|endoftext|>"


def format_instruction(instruction: Optional[str]) -> str:
    """The recipe's system text: stripped, "." appended unless it ends in punctuation; empty -> the default."""
    instruction = (instruction or "").strip()
    if not instruction:
        return DEFAULT_VL_INSTRUCTION
    return instruction if unicodedata.category(instruction[-1]).startswith("P") else instruction + "."


@dataclass
class Part:
    """An item's content as the user turn holds it: the vision blocks (video first, then images), their pixels in
    that order, the text."""
    vision: str
    visuals: list
    text: str


@dataclass
class Prepared:
    """One item as the model reads it."""
    ids: list                      # token ids, vision placeholders expanded
    positions: np.ndarray          # (3, len(ids)) time/height/width rotary positions
    visuals: list = field(default_factory=list)  # images.Patches in the order their tokens appear

    def __len__(self) -> int:  # tokens, as for a list of ids (the server's worker counts them so)
        return len(self.ids)


class VLEmbedder:
    """A loaded Qwen3-VL model. Make one with `mlx_qwen3_embed.load`."""

    def __init__(self, model: Qwen3VL, folder: Path, args: VLArgs, device: DevicePlan, *, name: str,
                 max_length: int = MAX_LENGTH, pooling: str = "last", layer: Optional[int] = None,
                 min_pixels: int = _images.MIN_PIXELS, max_pixels: int = _images.MAX_PIXELS,
                 max_image_pixels: int = _images.MAX_IMAGE_PIXELS):
        self._tokenizer = read_tokenizer(folder)
        self.chars_per_token = chars_per_token(self._tokenizer)
        self.model, self.folder, self.args, self.device, self.name = model, folder, args, device, name
        self.max_length, self.pooling = max_length, _pooling.check(pooling)
        self.layer = self._check_layer(layer)
        self.min_pixels, self.max_pixels, self.max_image_pixels = min_pixels, max_pixels, max_image_pixels
        self.pad_id = self._tokenizer.token_to_id(PAD)
        if self.pad_id is None:
            raise ValueError(f"{folder / 'tokenizer.json'} has no {PAD} token: not a Qwen3-VL tokenizer")
        self.prompts: dict[str, str] = {}  # the recipe's prompt is the instruction (a system turn), not a prefix
        self.cache = None  # items carry pixels: no vector cache

    @property
    def dim(self) -> int:
        """Full embedding size (the decoder's hidden_size)."""
        return self.args.text.hidden_size

    def embed(self, items: Any, *, instruction: Optional[str] = None, dim: Optional[int] = None,
              normalize: bool = True, batch_tokens: Optional[int] = None, precision: str = "float32",
              ranges: Optional[np.ndarray] = None, prompt_name: Optional[str] = None,
              prompt: Optional[str] = None) -> np.ndarray:
        """Items -> float32 vectors: one item gives (dim,), a list of N items gives (N, dim).

        An item is a str (text) or a dict with "text", "image" (a path, data URL, http(s) URL already in the
        image cache, bytes, PIL image or uint8 (H, W, 3) array, or a list of them), "video" (a video file's path
        or bytes, or a list of frames, each as an image) and an optional "instruction" (default: the `instruction`
        argument, else "Represent the user's input.").
        dim: Matryoshka size (first `dim` values, then normalised). precision, ranges: as Embedder.embed.
        prompt_name, prompt: the text model's options, refused here (prepare_inputs says why).
        """
        single = isinstance(items, (str, dict))
        prepared = self.prepare_inputs([items] if single else items, instruction=instruction,
                                       prompt_name=prompt_name, prompt=prompt)
        vectors = self.embed_prepared(prepared, dim=dim, normalize=normalize, batch_tokens=batch_tokens,
                                      precision=precision, ranges=ranges)
        return vectors[0] if single else vectors

    def embed_query(self, items: Any, instruction: Optional[str] = None, **options) -> np.ndarray:
        """Queries: the recipe puts the task in the system turn (`instruction`, else its default)."""
        return self.embed(items, instruction=instruction, **options)

    def embed_document(self, items: Any, **options) -> np.ndarray:
        """Documents (texts, images, videos, mixed items) with the recipe's default instruction."""
        return self.embed(items, **options)

    def prepare_inputs(self, items: Any, *, instruction: Optional[str] = None, prompt_name: Optional[str] = None,
                       prompt: Optional[str] = None, max_length: Optional[int] = None, truncate: bool = True,
                       direction: str = "right") -> list[Prepared]:
        """The contract's step one (contracts.EmbeddingModel): items -> Prepared, errors naming the item.

        An item over max_length is refused whatever `truncate` says: its image tokens cannot be cut.
        """
        batch = [items] if isinstance(items, (str, dict)) else _check_items(items)
        if instruction is not None and not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
        if prompt_name is not None:
            check_prompt_name(prompt_name, self.prompts)
        if prompt is not None:
            raise ValueError(f"prompt (a raw prefix) is for Qwen3 text models; {self.name} reads the instruction as "
                             "its system turn: give instruction instead")
        limit = self.max_length if max_length is None else check_int("max_length", max_length, 16)
        return [self.prepare(item, i, instruction, limit) for i, item in enumerate(batch)]

    def prepare_ids(self, sequences, *, max_length: Optional[int] = None, truncate: bool = True,
                    own: bool = False) -> list:
        raise TypeError("a Qwen3-VL model does not read bare token ids (its prompt is a chat template around the "
                        "item, with pixels for image tokens): send text or items")

    def tokens(self, text: str, *, prompt_name: Optional[str] = None, add_special_tokens: bool = True,
               max_length: Optional[int] = None) -> list[dict]:
        """What the model reads for a text item (TEI's /tokenize): the text's tokens, and with add_special_tokens
        the recipe's template around them (special, no offsets). A text over max_length (default: the model's) is
        a ValueError, refused by its characters before tokenizing when it surely is."""
        if prompt_name is not None:
            check_prompt_name(prompt_name, self.prompts)
        limit = self.max_length if max_length is None else max_length
        self.check_size(text, "", limit, "the text")
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        if len(encoding.ids) > limit:
            raise ValueError(f"the text has {len(encoding.ids)} tokens, more than max_length {limit}")
        body = [{"id": i, "text": text[start:stop], "special": False, "start": start, "stop": stop}
                for i, (start, stop) in zip(encoding.ids, encoding.offsets)]
        if not add_special_tokens:
            return body
        head, tail = self._template(format_instruction(None), "")
        wrap = lambda ids: [{"id": i, "text": self._tokenizer.decode([i], skip_special_tokens=False),
                             "special": True, "start": None, "stop": None} for i in ids]
        return wrap(self._encode(head)) + body + wrap(self._encode(tail))

    def describe(self) -> dict:
        """The contract's summary: family, decoder layers, quantization of the checkpoint."""
        return {"family": "qwen3_vl", "layers": self.args.text.num_hidden_layers,
                "quantization": self.args.text.quantization, "decoder": self.args.text}

    def embed_prepared(self, prepared: list[Prepared], *, dim: Optional[int] = None, normalize: bool = True,
                       batch_tokens: Optional[int] = None, precision: str = "float32",
                       ranges: Optional[np.ndarray] = None) -> np.ndarray:
        """Items already through `prepare` (their token counts known: len(p.ids)) -> (N, dim) float32."""
        _precision.check(precision)
        dim = _pooling.check_dim(dim, self.dim)
        check_batch_tokens(batch_tokens)
        def forward(batch: list[Prepared]) -> mx.array:
            pooled = _pooling.truncate(self._forward(batch).astype(mx.float32), dim)
            return _pooling.normalize(pooled) if normalize else pooled
        vectors = run_batches(prepared, forward, np.empty((len(prepared), dim), dtype=np.float32), self.device,
                              batch_tokens=batch_tokens, name=self.name)
        return vectors if precision == "float32" else _precision.quantize(vectors, precision, ranges)

    def prepare(self, item: Any, index: int = 0, instruction: Optional[str] = None,
                max_length: Optional[int] = None) -> Prepared:
        """One item -> its token ids, rotary positions and pixels (the recipe's prompt). Errors name `index`."""
        where = f"item {index}"
        own = item.get("instruction", instruction) if isinstance(item, dict) else instruction
        if own is not None and not isinstance(own, str):
            raise TypeError(f"{where}'s instruction must be a str, got {type(own).__name__}")
        limit = self.max_length if max_length is None else max_length
        self.check_size(item.get("text") if isinstance(item, dict) else item, own or "", limit, where)
        part = self.read_part(item, where, ITEM_KEYS)
        head, tail = self._template(format_instruction(own), part.vision)
        ids = self._encode(head) + self._encode(part.text) + self._encode(tail)
        ids, positions = self._expand(ids, part.visuals, index)
        if len(ids) > limit:
            raise ValueError(f"{where} has {len(ids)} tokens, more than max_length {limit}: "
                             "shorten its text or use smaller images")
        return Prepared(ids, positions, part.visuals)

    def check_size(self, text: Any, extra: str, limit: int, where: str) -> None:
        """Refuse (ValueError naming `where`) a text that, with `extra` (an instruction, a query), has surely more
        than `limit` tokens by its characters: before any image is decoded or any text tokenized."""
        if isinstance(text, str) and len(text) + len(extra) > limit * self.chars_per_token:
            least = -(-(len(text) + len(extra)) // self.chars_per_token)
            raise ValueError(f"{where} has {len(text) + len(extra)} characters: at least {least} tokens, more than "
                             f"max_length {limit}: shorten its text")

    def read_part(self, item: Any, where: str, keys: tuple[str, ...] = MEDIA_KEYS) -> "Part":
        """An item (a str, or a dict of `keys`) -> its Part: videos and images read and preprocessed (this model's
        pixel rules), the vision blocks the user turn holds for them, its text. Errors name `where`. Shared with
        vision/reranker.py, whose queries and documents are such items."""
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict):
            raise TypeError(f"{where} must be a str or a dict, got {type(item).__name__}")
        unknown = sorted(set(item) - set(keys))
        if unknown:
            raise ValueError(f"{where} has unknown key {unknown[0]!r}: use {', '.join(keys)}")
        text, image, video = item.get("text"), item.get("image"), item.get("video")
        if text is None and image is None and video is None:
            raise ValueError(f"{where} has none of text, image and video: give at least one")
        if text is not None and not isinstance(text, str):
            raise TypeError(f"{where}'s text must be a str, got {type(text).__name__}")
        if text is not None and any(p in text for p in PLACEHOLDERS):
            raise ValueError(f"{where}'s text holds an image or video placeholder token: remove it")
        sources = [] if image is None else image if isinstance(image, (list, tuple)) else [image]
        if image is not None and not sources:
            raise ValueError(f"{where} has an empty list of images")
        visuals, vision = [], ""
        if video is not None:
            patches, stamps = self._video(video, where)
            visuals.append(patches)
            # the recipe's transformers (4.57) puts each temporal patch in its own vision block after its time
            vision = "".join(f"<{s:.1f} seconds><|vision_start|><|video_pad|><|vision_end|>" for s in stamps)
        for source in sources:
            try:
                rgb = _images.open_image(source, self.max_image_pixels)
                visuals.append(_images.preprocess(rgb, self.min_pixels, self.max_pixels))
            except (ValueError, TypeError, FileNotFoundError) as e:
                raise type(e)(f"{where}: {e}") from None
        vision += "<|vision_start|><|image_pad|><|vision_end|>" * len(sources)  # the user turn: video, images, text
        return Part(vision, visuals, text or "")

    @staticmethod
    def _template(system: str, vision: str) -> tuple[str, str]:
        """The chat template around an item's text: (system turn + user turn up to the text, the rest)."""
        return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{vision}",
                "<|im_end|>\n<|im_start|>assistant\n")

    def _video(self, video: Any, where: str):
        """A video file's path or bytes, a list of frames, or a video.Clip (decoded already: the server decodes
        within its limits) -> (images.Patches, timestamps), errors naming `where`."""
        if isinstance(video, _video.Clip):
            return video.patches, video.stamps
        if isinstance(video, (str, os.PathLike)) and os.fspath(video).startswith(("http://", "https://")):
            raise ValueError(f"{where}'s video is a URL: download it and give the file's path")
        if not isinstance(video, (str, os.PathLike, bytes, list, tuple)):
            raise TypeError(f"{where}'s video must be a file path or bytes or a list of frames, "
                            f"got {type(video).__name__}")
        if not video:
            raise ValueError(f"{where}'s video has no frames")
        try:
            if isinstance(video, bytes):  # a video file's contents
                return _video.preprocess_video_file(video, self.max_image_pixels)
            if isinstance(video, (str, os.PathLike)):
                return _video.preprocess_video_file(os.fspath(video), self.max_image_pixels)
            return _images.preprocess_video([_images.open_image(f, self.max_image_pixels) for f in video])
        except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
            raise type(e)(f"{where}: {e}") from None

    def _encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def _expand(self, ids: list[int], visuals: list, index: int) -> tuple[list[int], np.ndarray]:
        """Each placeholder -> one token per merged 2x2 patch block; 3-axis rotary positions for all tokens:
        text counts on from the previous maximum + 1, an image's tokens sit at (start, start + row,
        start + column) on the merged grid (Qwen3-VL's get_rope_index)."""
        merge = self.args.vision.spatial_merge_size
        # one placeholder per image and per temporal patch of a video (each positioned as an image)
        groups = iter([(1, h, w) for v in visuals for t, h, w in [v.grid] for _ in range(t)])
        out, columns, start = [], [], 0
        for token in ids:
            if token not in (self.args.image_token_id, self.args.video_token_id):
                out.append(token)
                columns.append(np.full((3, 1), start))
                start += 1
                continue
            t, h, w = next(groups)
            gh, gw = h // merge, w // merge
            out.extend([token] * (t * gh * gw))
            time = np.repeat(np.arange(t), gh * gw)
            rows = np.tile(np.repeat(np.arange(gh), gw), t)
            cols = np.tile(np.arange(gw), t * gh)
            columns.append(np.stack([time + start, rows + start, cols + start]))
            start += max(gh, gw)
        return out, np.concatenate(columns, axis=1).astype(np.int64)

    def layout(self, batch: list[Prepared]) -> tuple[mx.array, np.ndarray, MRows, Optional[tuple]]:
        """Prepared items -> input_ids (B, L) right-padded, lengths (B,), their MRows, and the vision inputs
        (pixels (N, C * t * p * p), grids, placeholder token rows (V,)) or None (also used by vl_distill.py)."""
        lengths = np.array([len(p.ids) for p in batch], dtype=np.int32)
        B, L = len(batch), int(lengths.max())
        input_ids = np.full((B, L), self.pad_id, dtype=np.int32)
        positions = np.zeros((3, B, L), dtype=np.int64)
        for b, p in enumerate(batch):
            input_ids[b, : len(p.ids)] = p.ids
            positions[:, b, : len(p.ids)] = p.positions
        cos, sin = self.model.rotary(positions)
        rows = MRows(lengths, L, cos, sin)
        vision = None
        patches = [v for p in batch for v in p.visuals]
        if patches:
            placeholder = np.isin(input_ids, [self.args.image_token_id, self.args.video_token_id])
            b, j = np.nonzero(placeholder)  # row-major: items in order, tokens in order, as the features are
            where = mx.array((rows.starts[b] + j).astype(np.int32))
            vision = (mx.array(np.concatenate([v.pixels for v in patches])), [v.grid for v in patches], where)
        return mx.array(input_ids), lengths, rows, vision

    def _forward(self, batch: list[Prepared], cache: Optional[list] = None) -> mx.array:
        """Prepared items -> pooled (B, D) hidden states, as a lazy graph. cache (pooling "last" at the final
        layer, the reranker's): a shared prefix's PrefixCaches, which the items continue (their positions those
        after it), or empty ones that the prefix's own pass fills."""
        input_ids, lengths, rows, vision = self.layout(batch)
        visual = None
        if vision is not None:
            pixels, grids, where = vision
            visual = (where, *self.model.visual(pixels, grids))
        lm = self.model.language_model
        n = len(lm.layers)
        index = self.layer if self.layer is None or self.layer >= 0 else n + 1 + self.layer
        keep = None if index is None or index == n else index
        if self.pooling == "last" and keep is None:
            return lm.forward(input_ids, rows, visual, last=True, cache=cache)
        hidden = rows.pad(lm.forward(input_ids, rows, visual, keep=keep)).astype(mx.float32)
        return _pooling.pool(hidden, mx.array(lengths), self.pooling)

    def _check_layer(self, layer: Optional[int]) -> Optional[int]:
        n = self.args.text.num_hidden_layers
        if layer is None:
            return None
        return check_int("layer", layer, -(n + 1), n, wanted=f"between {-(n + 1)} and {n}",
                         note=f" (0: the embeddings, {n} or -1: the final-normed output)")


def _check_items(items: Any) -> list:
    if items is None or isinstance(items, bytes) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a str, a dict or a list of them, got {type(items).__name__}")
    return list(items)


def load_vl(checkpoint: Checkpoint, *, device: Optional[str] = None, dtype: Optional[str] = None,
            dequantize: Optional[bool] = None, batch_tokens: Optional[int] = None,
            max_length: Optional[int] = None, pooling: str = "last", layer: Optional[int] = None) -> VLEmbedder:
    """A Qwen3-VL checkpoint -> VLEmbedder (called by `mlx_qwen3_embed.load` for model_type qwen3_vl); refused
    with a MemoryError before any weight is read when it cannot fit."""
    _pooling.check(pooling)
    if max_length is not None:
        check_int("max_length", max_length, 16)
    folder, config = checkpoint.folder, checkpoint.config
    args = read_vl_config(folder, config)
    device_plan = plan_vl_memory(folder, plan(device, dtype, dequantize, batch_tokens), config, args)
    model, args = load_vl_model(folder, device_plan, config)
    return VLEmbedder(model, folder, args, device_plan, name=checkpoint.name, max_length=max_length or MAX_LENGTH,
                      pooling=pooling, layer=layer)
