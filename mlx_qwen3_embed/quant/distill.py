"""Embedding-distilled quantization (DWQ for embeddings): tune a quantized student's scales and biases so that
its pooled, normalised vectors match the float teacher's.

mlx-lm's DWQ fits next-token logits on chat data; an embedding model is used for its last-token vector, so
here the loss is 1 - cosine between student and teacher on exactly what inference pools (right-padded ids
ending in <|endoftext|>, vector at lengths-1), plus optionally the same on every token's final hidden state,
which gives far more targets per text than one vector and keeps the fit from memorising the calibration set.
Only `scales` and `biases` of the quantized layers move; packed weights, norms and everything else stay.

Where it runs: through="float" (the default on CPU) trains each layer through its float weight rebuilt in the
graph (codes * scales + biases per group, codes unpacked from the uint32 packing), a plain fp32 GEMM that MLX's
CPU backend runs 30-60x faster than quantized_matmul (../shared/REFERENCE.md). through="quantized" (the default
on Metal) trains through quantized_matmul, whose gradient reaches scales and biases, and keeps no float copy.

Memory, for the 8B: the teacher runs first and only its outputs for the calibration batches are kept
(tokens x D floats), and distill drops its reference then, so a teacher passed inline
(`distill(load_float(src, "float32")[0], student, ...)`) is freed before training starts; one step holds one batch of at most
`batch_tokens` padded tokens; checkpoint=True recomputes each block in the backward pass, so activations
are kept for block inputs only and, with through="float", one block's float weights exist at a time.
"""

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_unflatten

from ..batching import pad_right, plan_batches
from ..checks import check_int
from ..device import plan
from ..models.qwen3 import Qwen3
from ..pooling import normalize, pool
from ..textio import jsonl_records
from ..tokenizer import DEFAULT_INSTRUCTION, Tokenizer, query_prompt

KINDS = ("query", "document")
# The calibration set shipped inside the package (data/calibration/), used when no file is given
CALIBRATION = Path(__file__).resolve().parent.parent / "data" / "calibration" / "calibration.jsonl"


@dataclass
class DistillReport:
    """Held-out teacher-student cosine of round-to-nearest (before) and of the tuned student (after)."""
    before_mean: float
    before_worst: float
    after_mean: float
    after_worst: float
    kept: str                 # "distilled", or "rounded" when tuning did not help and was undone
    steps: int
    best_step: int            # the step whose scales/biases were kept (0: round-to-nearest)
    train_texts: int
    holdout_texts: int
    losses: list[float] = field(default_factory=list)

    def summary(self) -> str:
        head = (f"held-out cosine to the float model over {self.holdout_texts} texts: round-to-nearest mean "
                f"{self.before_mean:.5f} worst {self.before_worst:.5f}; ")
        if self.kept == "rounded":
            return head + (f"no evaluation in {self.steps} distillation steps beat it on both the mean and the "
                           "worst text, so round-to-nearest was kept (the output is plain rounding)")
        return head + (f"distilled ({self.steps} steps, best at {self.best_step}) mean {self.after_mean:.5f} worst "
                       f"{self.after_worst:.5f}; kept distilled")


def calibration_records(path: Union[str, Path, None] = None) -> list[tuple[str, dict]]:
    """(kind, record) of each line of a calibration file (JSON Lines of {"text", "kind": "query"|"document",
    "lang", "instruction"?}; the packaged set by default), kinds checked."""
    path = Path(path) if path is not None else CALIBRATION
    if not path.is_file():
        raise FileNotFoundError(f"no calibration file at {path}: give a JSON Lines file of "
                                '{"text": ..., "kind": "query"|"document"}')
    records = []
    for number, record in jsonl_records(path.read_text(encoding="utf-8"), str(path)):
        kind = record.get("kind", "document")
        if kind not in KINDS:
            raise ValueError(f'{path} line {number} has kind {kind!r}: use "query" or "document"')
        records.append((kind, record))
    return records


def read_calibration(path: Union[str, Path, None] = None, instruction: str = DEFAULT_INSTRUCTION) -> list[str]:
    """A calibration file -> the texts as the model reads them: queries in the instruction format
    ("Instruct: {instruction}\\nQuery:{text}"), documents as they are."""
    texts = []
    for kind, record in calibration_records(path):
        # a record may carry its own task instruction (classification, similarity, code search ...)
        task = record.get("instruction") or instruction
        texts.append(query_prompt(task) + record["text"] if kind == "query" else record["text"])
    if len(texts) < 2:
        raise ValueError(f"{path} holds {len(texts)} texts: distillation needs some to train on and some to hold out")
    return texts


def split_holdout(texts: list[str], holdout: Union[float, int], seed: int = 0) -> tuple[list[str], list[str]]:
    """A seeded shuffle split into (train, held out); holdout is a fraction in (0, 1) or a count."""
    if isinstance(holdout, float):
        if not 0 < holdout < 1:
            raise ValueError(f"holdout must be a fraction between 0 and 1 or a count of texts, got {holdout}")
        count = max(1, round(holdout * len(texts)))
    else:
        count = holdout
    if not 1 <= count < len(texts):
        raise ValueError(f"holdout must leave texts on both sides, got {holdout} of {len(texts)} texts")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held]


class _Tuned(nn.Module):
    """Trainable scales and biases of one quantized layer, as offsets in units of its own quantization step:
    scales = scales0 * (1 + d_scales), biases = biases0 + scales0 * d_biases. So one learning rate means the
    same relative move in every layer, whatever its weight magnitude."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.group_size, self.bits = layer.group_size, layer.bits
        self.storage = layer.scales.dtype  # the dtype the checkpoint stores them in
        self.rounded = False               # round to `storage`, as saving will, when measuring
        self._weight = layer.weight        # leading underscore: not a parameter, never trained
        self._scales0 = layer.scales.astype(mx.float32)
        self._biases0 = layer.biases.astype(mx.float32)
        self.d_scales = mx.zeros(self._scales0.shape, mx.float32)
        self.d_biases = mx.zeros(self._biases0.shape, mx.float32)

    def scales_biases(self) -> tuple[mx.array, mx.array]:
        scales = self._scales0 * (1 + self.d_scales)
        biases = self._biases0 + self._scales0 * self.d_biases
        if self.rounded:
            scales, biases = scales.astype(self.storage).astype(mx.float32), biases.astype(self.storage).astype(mx.float32)
        return scales, biases

    def _float_weight(self, packed: mx.array, scales: mx.array, biases: mx.array) -> mx.array:
        """(..., n) float32 = codes * scales + biases per group of `group_size`; codes unpacked from uint32."""
        ones = mx.ones(scales.shape, mx.float32)
        codes = mx.stop_gradient(mx.dequantize(packed, ones, mx.zeros_like(ones),
                                               group_size=self.group_size, bits=self.bits))
        grouped = codes.reshape(*scales.shape, self.group_size)
        return (grouped * scales[..., None] + biases[..., None]).reshape(codes.shape)


class _TrainLinear(_Tuned):
    """A QuantizedLinear trained through a float weight (fp32 GEMM) or through quantized_matmul."""

    def __init__(self, layer: nn.QuantizedLinear, through: str):
        super().__init__(layer)
        self.through = through

    def __call__(self, x: mx.array) -> mx.array:
        scales, biases = self.scales_biases()
        if self.through == "float":
            return x @ self._float_weight(self._weight, scales, biases).T
        return mx.quantized_matmul(x, self._weight, scales, biases, transpose=True,
                                   group_size=self.group_size, bits=self.bits)


class _TrainEmbedding(_Tuned):
    """A QuantizedEmbedding whose looked-up rows only are unpacked."""

    def __call__(self, input_ids: mx.array) -> mx.array:
        scales, biases = self.scales_biases()
        return self._float_weight(self._weight[input_ids], scales[input_ids], biases[input_ids])


def _wrap(student: Qwen3, through: str, embeddings: bool = False,
          trains: Optional[Callable[[str], bool]] = None) -> list[tuple[str, nn.Module, nn.Module]]:
    """Swap every quantized layer of `student` for its trainable twin; returns (path, original, twin).
    trains(path) picks the twins whose scales and biases move (default: all); the others stay as rounded.

    embeddings=False leaves the token table as rounded: its scales and biases are per row, so only the rows of
    tokens the calibration set contains would move, fitted to those texts alone (measured: the held-out worst
    text got worse on a full-vocabulary model)."""
    swaps = []
    for path, module in student.named_modules():
        if isinstance(module, nn.QuantizedEmbedding) and not embeddings:
            continue
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            if module.mode != "affine" or module.get("biases") is None:
                raise ValueError(f"{path} is quantized in mode {module.mode!r}: DWQ trains affine scales and "
                                 "biases, quantize with mode='affine'")
            twin = _TrainEmbedding(module) if isinstance(module, nn.QuantizedEmbedding) else _TrainLinear(module, through)
            swaps.append((path, module, twin))
    if not swaps:
        raise ValueError("the student has no quantized layers: quantize it (mlx.nn.quantize) before distilling")
    student.update_modules(tree_unflatten([(path, twin) for path, _, twin in swaps]))
    student.freeze()
    for path, _, twin in swaps:
        if trains is None or trains(path):
            twin.unfreeze(keys=["d_scales", "d_biases"], recurse=False)
    return swaps


def _unwrap(student: Qwen3, swaps: list[tuple[str, nn.Module, nn.Module]], tuned: dict) -> None:
    """Put the original layers back, holding `tuned` scales/biases ({path: (scales, biases)}) in their dtype."""
    for path, original, _ in swaps:
        if path in tuned:
            scales, biases = tuned[path]
            original.scales = scales.astype(original.scales.dtype)
            original.biases = biases.astype(original.biases.dtype)
    student.update_modules(tree_unflatten([(path, original) for path, original, _ in swaps]))
    mx.eval(student.parameters())


def _snapshot(swaps) -> dict:
    return {path: twin.scales_biases() for path, _, twin in swaps}


def _forward(model: Qwen3, input_ids: mx.array, checkpoint: bool) -> mx.array:
    """Qwen3.__call__ over padded (B, L) ids, with each block optionally recomputed in the backward pass."""
    return model.norm(model.blocks(model.embed_tokens(input_ids), None, checkpoint=checkpoint))


def _cosine(a: mx.array, b: mx.array) -> mx.array:
    return (normalize(a) * normalize(b)).sum(axis=-1)


@dataclass
class _Batch:
    input_ids: mx.array     # (B, L) right-padded
    lengths: mx.array       # (B,)
    hidden: mx.array        # (B, L, D) the teacher's final-normed hidden states


def _batches(teacher: Qwen3, sequences: list[list[int]], pad_id: int, batch_tokens: int) -> list[_Batch]:
    """The teacher's outputs for `sequences`, packed under `batch_tokens`, computed once."""
    out = []
    for batch in plan_batches([len(s) for s in sequences], batch_tokens):
        input_ids, lengths = pad_right([sequences[i] for i in batch], pad_id)
        input_ids = mx.array(input_ids)
        hidden = teacher(input_ids).astype(mx.float32)
        mx.eval(hidden)
        out.append(_Batch(input_ids, mx.array(lengths), hidden))
    return out


def _text_forward(model: Qwen3, b: _Batch, checkpoint: bool) -> mx.array:
    return _forward(model, b.input_ids, checkpoint)


def _held_out_cosines(student: Qwen3, batches: list[_Batch], swaps, forward=_text_forward) -> np.ndarray:
    """Cosine of student and teacher pooled vectors per held-out text, with scales and biases rounded to the
    dtype they are saved in, so this is what the saved checkpoint gives."""
    for _, _, twin in swaps:
        twin.rounded = True
    cosines = []
    for b in batches:
        got = pool(forward(student, b, False), b.lengths)
        cosines.append(np.array(_cosine(got, pool(b.hidden, b.lengths))))
    for _, _, twin in swaps:
        twin.rounded = False
    return np.concatenate(cosines)


def check_tuning(steps: int, lr: float, through: Optional[str]) -> str:
    """Checked settings of distill (also vl_distill's); returns `through`, the device's choice when None."""
    if through is None:  # the device's choice between quantized matmul and fp32 GEMMs on rebuilt weights
        through = "float" if plan().dequantize else "quantized"
    if through not in ("float", "quantized"):
        raise ValueError(f"through must be 'float' or 'quantized', got {through!r}")
    check_int("steps", steps, 0, wanted="a non-negative int")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    return through


def distill(teacher: Qwen3, student: Qwen3, tokenizer: Tokenizer, texts: list[str], *, steps: int = 200,
            lr: float = 1e-4, batch_tokens: int = 2048, holdout: Union[float, int] = 0.2,
            max_length: int = 512, token_weight: float = 1.0, eval_every: Optional[int] = None,
            through: Optional[str] = None, checkpoint: bool = False, seed: int = 0, embeddings: bool = False,
            callback: Optional[Callable[[int, float], None]] = None) -> DistillReport:
    """Tune `student` (a Qwen3 already quantized with mlx.nn.quantize, affine mode) in place so that its
    pooled vectors match `teacher`'s (the same Qwen3, unquantized) on `texts`.

    texts: calibration texts as the model reads them (queries with their instruction; see read_calibration).
        A seeded `holdout` part (fraction or count) is never trained on; the report gives the held-out
        teacher-student cosine (mean, worst) before and after.
    steps: Adam steps on the scales and biases, one batch of at most `batch_tokens` padded tokens each.
    lr: Adam's learning rate in units of each layer's own quantization step (see _Tuned), so 1e-3 suits
        every model size.
    token_weight: weight of the per-token loss (1 - cosine of every final hidden state) next to the pooled
        loss (1 - cosine of the last-token vectors); 0 trains on the pooled vectors only.
    eval_every: held-out evaluation period (default steps // 5); the best evaluated scales/biases are kept,
        and if none beats round-to-nearest on both the mean and the worst text, the student is left exactly
        as it came (report.kept == "rounded").
    through: "float" (CPU default: fp32 GEMM on weights rebuilt from the codes) or "quantized" (Metal default:
        quantized_matmul). checkpoint: recompute blocks in the backward pass to bound memory (8B).
    embeddings: also tune the token table's per-row scales/biases (off: only calibration tokens' rows would
        move, which overfits them; see _wrap).
    callback: called as callback(step, loss) after every step (progress display; the library prints nothing).
    """
    through = check_tuning(steps, lr, through)
    train_texts, held_texts = split_holdout(list(texts), holdout, seed)
    pad = tokenizer.eos_id
    # The teacher is needed only here: its final hidden states for every calibration batch are the targets
    train = _batches(teacher, tokenizer.encode(train_texts, max_length), pad, batch_tokens)
    held = _batches(teacher, tokenizer.encode(held_texts, max_length), pad, batch_tokens)
    del teacher  # our reference; a caller that passed it inline frees the float model here
    return tune(student, train, held, _text_forward, steps=steps, lr=lr, token_weight=token_weight,
                eval_every=eval_every, through=through, checkpoint=checkpoint, seed=seed, embeddings=embeddings,
                callback=callback, counts=(len(train_texts), len(held_texts)))


def tune(student: nn.Module, train: list, held: list, forward: Callable, *, steps: int, lr: float,
         token_weight: float, eval_every: Optional[int], through: str, checkpoint: bool, seed: int,
         embeddings: bool, callback: Optional[Callable[[int, float], None]], counts: tuple[int, int],
         trains: Optional[Callable[[str], bool]] = None) -> DistillReport:
    """distill's training loop, for any model: batches hold `lengths` (B,) and the teacher's `hidden` (B, L, D),
    and forward(student, batch, checkpoint) gives the student's final-normed hidden states (B, L, D) (Qwen3-VL
    passes its own, with pixels; see vl_distill.py). trains(path) picks the quantized layers that move.
    counts: (training items, held-out items), for the report."""
    # the loader's freeze state (quantized layers freeze their own packed weights), put back afterwards
    frozen = {path: set(module._no_grad) for path, module in student.named_modules()}
    swaps = _wrap(student, through, embeddings, trains)
    best, best_step = None, 0
    try:
        before = _held_out_cosines(student, held, swaps, forward)
        best_cosines = before
        optimizer = optim.Adam(learning_rate=lr)

        def loss_fn(model, b: _Batch) -> mx.array:
            hidden = forward(model, b, checkpoint)
            loss = (1 - _cosine(pool(hidden, b.lengths), pool(b.hidden, b.lengths))).mean()
            if token_weight:
                real = (mx.arange(hidden.shape[1])[None, :] < b.lengths[:, None]).astype(mx.float32)
                per_token = 1 - _cosine(hidden, b.hidden)
                loss = loss + token_weight * (per_token * real).sum() / real.sum()
            return loss

        step_fn = nn.value_and_grad(student, loss_fn)
        eval_every = eval_every or max(1, steps // 5)
        rng = random.Random(seed)
        order, losses = [], []
        for step in range(1, steps + 1):
            if not order:
                order = list(range(len(train)))
                rng.shuffle(order)
            loss, grads = step_fn(student, train[order.pop()])
            optimizer.update(student, grads)
            mx.eval(loss, student.trainable_parameters(), optimizer.state)
            losses.append(loss.item())
            if callback is not None:
                callback(step, losses[-1])
            if step % eval_every == 0 or step == steps:
                cosines = _held_out_cosines(student, held, swaps, forward)
                if cosines.mean() > best_cosines.mean() and cosines.min() >= before.min():
                    best, best_step, best_cosines = _snapshot(swaps), step, cosines
    finally:
        # always give the student back its own layers, tuned only if tuning won
        _unwrap(student, swaps, best or {})
        for path, module in student.named_modules():
            module._no_grad = frozen.get(path, module._no_grad)
    return DistillReport(before_mean=float(before.mean()), before_worst=float(before.min()),
                         after_mean=float(best_cosines.mean()), after_worst=float(best_cosines.min()),
                         kept="distilled" if best is not None else "rounded", steps=steps, best_step=best_step,
                         train_texts=counts[0], holdout_texts=counts[1], losses=losses)
