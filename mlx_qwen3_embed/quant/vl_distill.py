"""Embedding-distilled quantization (DWQ) for Qwen3-VL: distill.py's loop (`tune`) with a forward pass that
takes pixels, fitting a quantized Qwen3-VL's vectors (the Qwen3-VL-Embedding recipe: last token, L2) and every
token's final hidden state to the float model's, on the packaged calibration texts and synthetic images.

Only the text decoder's scales and biases train by default: the vision tower, at 8 bits, stays as converted
(measured: README, "Images and video"; bench/results/vl_dwq.md). vision=True tunes its quantized layers too.

Memory, as distill.py's: the float teacher runs first and only its final hidden states for the calibration
batches are kept (tokens x D floats), then it is freed; checkpoint=True recomputes each decoder block in the
backward pass. The student's image features are computed once per batch while its vision tower does not train.

Calibration images are drawn here, deterministically (gradients, shapes, rendered words, with a caption each):
nothing is downloaded, and held-out images come from another random stream, so they share none with calibration.
"""

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import mlx.core as mx
from mlx.utils import tree_map
from PIL import Image, ImageDraw, ImageFont

from ..batching import plan_batches
from ..checks import check_int
from .distill import CALIBRATION, DistillReport, calibration_records, check_tuning, split_holdout, tune
from ..models.qwen3_vl import MRows, Qwen3VL
from ..tokenizer import DEFAULT_INSTRUCTION
from ..vision.embedder import VLEmbedder

HELDOUT = CALIBRATION.parent / "heldout.jsonl"
IMAGE_INSTRUCTION = "Find the image that matches the description"
COLORS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 220), "yellow": (240, 210, 40),
          "black": (20, 20, 20), "white": (245, 245, 245), "orange": (245, 140, 30), "purple": (140, 60, 180),
          "grey": (128, 128, 128), "cyan": (40, 200, 220)}
SHAPES = ("circle", "square", "triangle", "stripe")
WORDS = ("invoice", "total", "menu", "exit", "chapter", "sale", "open", "stop", "report", "figure", "table",
         "north", "garden", "station", "warning", "summary", "index", "page", "price", "notice")


def synthetic_images(count: int, stream: str) -> list[tuple[Image.Image, str]]:
    """`count` RGB images drawn from the random stream named `stream` (the same name, the same images), with a
    caption each: a gradient background, one to three shapes, sometimes a rendered word. Sides 64-288 px, often
    not a multiple of 32, so resizing is exercised too."""
    rng = random.Random(stream)
    names = list(COLORS)
    out = []
    for _ in range(count):
        width, height = rng.randrange(64, 289), rng.randrange(64, 289)
        start, end = rng.sample(names, 2)
        # a linear gradient between two colours, horizontal or vertical
        ramp = [tuple(round(a + (b - a) * t / max(width - 1, 1)) for a, b in zip(COLORS[start], COLORS[end]))
                for t in range(width)]
        image = Image.new("RGB", (width, 1))
        image.putdata(ramp)
        image = image.resize((width, height), Image.NEAREST)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.ROTATE_90).resize((width, height), Image.NEAREST)
        draw = ImageDraw.Draw(image)
        parts = []
        for _ in range(rng.randint(1, 3)):
            shape, color = rng.choice(SHAPES), rng.choice(names)
            x0, y0 = rng.randrange(0, width - 16), rng.randrange(0, height - 16)
            x1, y1 = rng.randrange(x0 + 16, width + 1), rng.randrange(y0 + 16, height + 1)
            if shape == "circle":
                draw.ellipse((x0, y0, x1, y1), fill=COLORS[color])
            elif shape == "square":
                draw.rectangle((x0, y0, x1, y1), fill=COLORS[color])
            elif shape == "triangle":
                draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=COLORS[color])
            else:
                draw.line((x0, y0, x1, y1), fill=COLORS[color], width=rng.randint(2, 8))
            parts.append(f"a {color} {shape}")
        caption = f"{' and '.join(parts)} on a {start} to {end} gradient"
        if rng.random() < 0.5:
            word = rng.choice(WORDS)
            size = rng.randint(10, max(11, height // 4))
            draw.text((rng.randrange(0, width // 2), rng.randrange(0, height // 2)), word.upper(),
                      fill=COLORS[rng.choice(names)], font=ImageFont.load_default(size))
            caption += f" with the word {word.upper()} written on it"
        out.append((image, caption))
    return out


def image_items(count: int, stream: str) -> list[dict]:
    """Synthetic images as items, in turn: the image alone, the image with its caption, its caption as an
    instructed query (text that retrieves images)."""
    items = []
    for i, (image, caption) in enumerate(synthetic_images(count, stream)):
        kind = i % 3
        items.append({"image": image} if kind == 0 else {"image": image, "text": caption} if kind == 1
                     else {"text": caption, "instruction": IMAGE_INSTRUCTION})
    return items


def text_items(path: Union[str, Path, None] = None) -> list[dict]:
    """A calibration file (JSON Lines {"text", "kind": "query"|"document", "instruction"?}) -> items in the
    Qwen3-VL-Embedding form: queries carry their task as the item's instruction (the recipe's system turn),
    documents the default ("Represent the user's input.")."""
    items = []
    for kind, record in calibration_records(path):
        task = record.get("instruction") or DEFAULT_INSTRUCTION
        items.append({"text": record["text"], "instruction": task} if kind == "query" else {"text": record["text"]})
    return items


def calibration_items(path: Union[str, Path, None] = None, images: int = 48, seed: int = 0) -> list[dict]:
    """The texts of `path` (default: the packaged calibration set) and `images` synthetic image items."""
    check_int("images", images, 0, wanted="a non-negative int")
    return text_items(path) + image_items(images, f"calibration-{seed}")


def heldout_items(images: int = 24, seed: int = 0) -> list[dict]:
    """Evaluation items no item of the default calibration (calibration_items()) shares: the packaged held-out
    texts (heldout.jsonl) and synthetic images from a random stream of their own; a text-only item whose text
    calibration also holds (a short caption can recur) is left out."""
    seen = {item["text"] for item in calibration_items(seed=seed) if "image" not in item}
    return [item for item in text_items(HELDOUT) + image_items(images, f"heldout-{seed}")
            if "image" in item or item["text"] not in seen]


@dataclass
class _Batch:
    input_ids: mx.array             # (B, L) right-padded
    lengths: mx.array               # (B,)
    rows: MRows
    vision: Optional[tuple]         # (pixels, grids, placeholder rows) or None
    hidden: mx.array                # (B, L, D) the teacher's final-normed hidden states
    visual: Optional[tuple] = None  # the student's (tokens, deepstack), kept while its vision tower is fixed


def _batches(teacher: Qwen3VL, embedder: VLEmbedder, items: list[dict], batch_tokens: int) -> list[_Batch]:
    """The teacher's final hidden states for `items`, packed under `batch_tokens`, computed once."""
    prepared = [embedder.prepare(item, i) for i, item in enumerate(items)]
    out = []
    for group in plan_batches([len(p) for p in prepared], batch_tokens):
        input_ids, lengths, rows, vision = embedder.layout([prepared[i] for i in group])
        visual = None if vision is None else (vision[2], *teacher.visual(vision[0], vision[1]))
        hidden = rows.pad(teacher.language_model.forward(input_ids, rows, visual)).astype(mx.float32)
        mx.eval(hidden)
        out.append(_Batch(input_ids, mx.array(lengths), rows, vision, hidden))
    return out


def _forward(vision_trains: bool) -> Callable:
    """forward(student, batch, checkpoint) -> final-normed hidden states (B, L, D), for distill.tune."""

    def forward(model: Qwen3VL, b: _Batch, checkpoint: bool) -> mx.array:
        visual = None
        if b.vision is not None:
            pixels, grids, where = b.vision
            if vision_trains:
                visual = (where, *model.visual(pixels, grids))
            else:  # a fixed tower gives the same features every step: computed once, outside the gradient
                if b.visual is None:
                    b.visual = tree_map(mx.stop_gradient, model.visual(pixels, grids))
                visual = (where, *b.visual)
        return b.rows.pad(model.language_model.forward(b.input_ids, b.rows, visual, checkpoint=checkpoint))

    return forward


def distill_vl(teacher: Qwen3VL, student: Qwen3VL, embedder: VLEmbedder, items: list[dict], *,
               vision: bool = False, steps: int = 300, lr: float = 1e-3, batch_tokens: int = 2048,
               holdout: Union[float, int] = 0.2, token_weight: float = 1.0, eval_every: Optional[int] = None,
               through: Optional[str] = None, checkpoint: bool = False, seed: int = 0,
               callback: Optional[Callable[[int, float], None]] = None) -> DistillReport:
    """Tune `student` (a Qwen3VL quantized by vl_quantize.quantize_vl, affine) in place so that its vectors and
    final hidden states match `teacher`'s (the same Qwen3VL, unquantized) on `items` (VLEmbedder items: dicts
    with "text", "image", "instruction"; see calibration_items).

    embedder: a VLEmbedder over `student` (its prompt, pixels and batch layout; it must not hold the teacher,
        so that a teacher passed inline is freed once its targets are computed).
    vision: also tune the vision tower's quantized layers (default: only the text decoder's).
    holdout: the seeded part of the texts and of the images (each split alike) never trained on, on which the
        best step is chosen and round-to-nearest kept when tuning does not help (report.kept == "rounded").
    The other settings are distill.distill's (steps, lr in units of each layer's quantization step, ...).
    """
    through = check_tuning(steps, lr, through)
    texts = [item for item in items if "image" not in item]
    pictures = [item for item in items if "image" in item]
    if not texts:
        raise ValueError("distill_vl needs text items to calibrate on, got only images")
    train, held = split_holdout(texts, holdout, seed)
    if len(pictures) >= 2:  # images split alike, so both kinds are held out
        train_pictures, held_pictures = split_holdout(pictures, holdout, seed)
        train, held = train + train_pictures, held + held_pictures
    else:
        train = train + pictures
    counts = (len(train), len(held))
    train = _batches(teacher, embedder, train, batch_tokens)
    held = _batches(teacher, embedder, held, batch_tokens)
    del teacher  # our reference; a caller that passed it inline frees the float model here
    trains = None if vision else (lambda path: not path.startswith("visual."))
    return tune(student, train, held, _forward(vision), steps=steps, lr=lr, token_weight=token_weight,
                eval_every=eval_every, through=through, checkpoint=checkpoint, seed=seed, embeddings=False,
                callback=callback, counts=counts, trains=trains)
