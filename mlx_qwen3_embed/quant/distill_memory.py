"""How much memory `convert(..., dwq=True)` needs at its peak, from the model's shape alone, so that the converter
can refuse before loading anything on a machine that cannot hold it (distill.py trains; this module plans).

Measured against this plan: bench/dwq_memory.py, bench/results/dwq_memory.json (random checkpoints at the
0.6B width and vocabulary, peak RSS of `mlx-embed convert ... --bits 4 --dwq` in a fresh process).
"""

import json
from pathlib import Path
from typing import Callable, Optional, Union

import mlx.core as mx

from ..models.args import ModelArgs
from ..device import GB, MEMORY_ENV, available_memory, plan
from ..tokenizer import Tokenizer
from ..checkpoint.weights import matrices, read_config, stored_dtype_size


def memory_need(args: ModelArgs, *, bits: Union[int, Callable[[str, int], int]] = 4, group_size: int = 64,
                batch_tokens: int = 2048, max_length: int = 512, calibration_tokens: int = 200_000,
                checkpoint: bool = False, through: str = "float", teacher_bytes: int = 4,
                source_bytes: int = 2) -> dict:
    """Bytes `convert(..., dwq=True)` needs at its peak, by part, from the model's shape alone; "total" is the peak.

    bits: bits per weight, or a recipe's function (path, layers) -> bits. calibration_tokens: tokens of the
    calibration texts (each cut to max_length); teacher_bytes: 4 for the fp32 teacher of CPU, 2 on Metal.
    Parts: the quantized student (packed codes, stored scales/biases, and per trained group its fp32 scales,
    offsets, gradients and Adam moments); the teacher (loaded from the source's storage and cast, both copies
    for a moment), alive only until its targets are computed; the targets (final hidden states of every
    calibration token, fp32); training (through="float": every trained matrix rebuilt in fp32 together with its
    unpacked codes, or one block's with checkpoint; activations kept for the backward pass of one batch of
    batch_tokens tokens at padded length max_length: every layer's, or the block inputs and one block's with
    checkpoint); 1 GB of runtime. Peak: runtime + student + targets + the larger of teacher and training.
    """
    layers, D, F = args.num_hidden_layers, args.hidden_size, args.intermediate_size
    q, kv = args.num_attention_heads * args.head_dim, args.num_key_value_heads * args.head_dim
    student = trained_groups = params = 0
    block = sum(rows * columns for _, rows, columns in matrices(args)[1:8])  # one block's seven matrices
    for path, rows, columns in matrices(args):
        n = rows * columns
        params += n
        b = bits(path, layers) if callable(bits) else bits
        student += n * b // 8 + 2 * (n // group_size) * source_bytes
        if path != "embed_tokens":  # the token table stays as rounded (see _wrap)
            trained_groups += n // group_size
    student += trained_groups * 2 * 4 * 5  # fp32 scales0/biases0, offsets, gradients, Adam's two moments
    params += (2 * D + 2 * args.head_dim) * layers + D
    # floats kept per token and layer for the backward pass: norms and residuals, q/k/v and their rotations,
    # SwiGLU's gate, up and product, the attention weights (measured at the 0.6B width, 2 to 8 layers, 2048
    # tokens at length 512: 0.43 GB a layer with its rebuilt weights, ~40k floats a token; this counts 43k)
    per_token = 8 * D + 2 * q + 2 * kv + 4 * F + 2 * args.num_attention_heads * max_length
    if through == "float":
        weights = 2 * 4 * (block if checkpoint else block * layers)
    else:
        weights = 0
    activations = batch_tokens * 4 * (per_token + layers * D if checkpoint else per_token * layers)
    parts = dict(runtime=GB, student=student, targets=calibration_tokens * D * 4,
                 teacher=params * (teacher_bytes + source_bytes) + batch_tokens * per_token * 4,
                 training=weights + activations)
    parts["total"] = (parts["runtime"] + parts["student"] + parts["targets"]
                      + max(parts["teacher"], parts["training"]))
    return parts


def check_memory(need: dict, available: Optional[int] = None, device: str = "cpu") -> None:
    """Raise MemoryError, before anything is loaded, when `need` (memory_need) exceeds the memory available."""
    available = available_memory(device) if available is None else available
    if need["total"] <= available:
        return
    parts = ", ".join(f"{k} {v / GB:.1f}" for k, v in need.items() if k != "total")
    raise MemoryError(f"--dwq needs about {need['total'] / GB:.1f} GB at its peak ({parts} GB) but only "
                      f"{available / GB:.1f} GB is available: use --checkpoint (recomputes each block in the "
                      "backward pass), a smaller --batch-tokens, convert without --dwq, or free memory; or set "
                      f"{MEMORY_ENV} if that figure of free memory is wrong")


def plan_dwq_memory(folder: Path, texts: list[str], bits: Union[int, Callable[[str, int], int]], group_size: int,
                    batch_tokens: int, checkpoint: bool, max_length: int = 512,
                    available: Optional[int] = None) -> dict:
    """memory_need for converting the float checkpoint at `folder` with `texts` on this machine's device plan;
    raises MemoryError (check_memory) when it does not fit, before any weight is read."""
    config = json.loads((folder / "config.json").read_text())
    device = plan()
    tokens = sum(len(ids) for ids in Tokenizer(folder).encode(texts, max_length))
    need = memory_need(read_config(folder), bits=bits, group_size=group_size, batch_tokens=batch_tokens,
                       max_length=max_length, calibration_tokens=tokens, checkpoint=checkpoint,
                       through="float" if device.dequantize else "quantized",
                       teacher_bytes=4 if device.dtype == mx.float32 else 2,
                       source_bytes=stored_dtype_size(config))
    check_memory(need, available, device.device)
    return need
