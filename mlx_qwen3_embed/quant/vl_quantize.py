"""Original Qwen3-VL(-Embedding) weights -> a quantized folder this package loads, written atomically.

The decoder is quantized like a Qwen3 (quantize.py's bits and group sizes); the vision tower is kept at 8 bits
by default, or float (vision_bits=None): it is a small part of the weights (0.4 of 2.1 B parameters in the 2B)
and every image token passes through all of it, so its error reaches image vectors undiluted (measured:
README, "Images and video"). Keys stay in the hub layout (`model.language_model.*`, `model.visual.*`).
dwq=True distils the quantized decoder toward the float model's vectors before saving (vl_distill.py).
A Qwen3-VL-Reranker keeps the two LM head rows its score reads ("no", "yes") in float as `score_head.weight`
(4 bits on the head's rows would shift every logit: the score is a small difference of two large rows), drops
the rest of the head, and is marked a reranker in config.json (KIND_KEY), so no folder name is needed to tell.
"""

import copy
import json
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ..atomic import building_folder, refuse_existing
from ..checkpoint import open_checkpoint
from ..device import DTYPES, plan
from ..models.qwen3_vl import Qwen3VL, VLArgs
from .conversion import (TOKENIZER_FILES, check_bits, check_quantization, copy_files, output_dtype, quantizable,
                         refuse_quantized, with_quantization)
from .vl_distill import calibration_items, distill_vl
from ..vision.embedder import VLEmbedder
from ..checkpoint.vl_weights import SCORE_HEAD_KEY, clean_keys, read_vl_head_rows
from ..tokenizer import read_tokenizer
from ..checkpoint.weights import KIND_KEY, check, read_tensors

EXTRA_FILES = [*TOKENIZER_FILES, "chat_template.json", "chat_template.jinja", "preprocessor_config.json",
               "video_preprocessor_config.json"]


def load_float_vl(folder: Path, dtype: str, config: Optional[dict] = None) -> tuple[Qwen3VL, dict]:
    """The original Qwen3-VL weights at `folder` in `dtype`, and its config.json dict (given, or read);
    ValueError when quantized."""
    config = copy.deepcopy(config) if config is not None else json.loads((folder / "config.json").read_text())
    tensors = clean_keys(read_tensors(folder))
    refuse_quantized(folder, config, tensors, "Qwen/Qwen3-VL-Embedding-2B")
    model = Qwen3VL(VLArgs.from_dict(config))
    check(model, tensors, folder)
    model.update(tree_unflatten([(k, v.astype(DTYPES[dtype])) for k, v in tensors.items()]))
    mx.eval(model.parameters())
    return model, config


def quantize_vl(model: Qwen3VL, config: dict, bits: int = 4, group_size: int = 64,
                vision_bits: Optional[int] = 8) -> dict:
    """Quantize in place: the decoder (and its embedding) at `bits`, the vision tower at `vision_bits` (None:
    float). A layer whose input size `group_size` does not divide stays float. Returns the new config."""
    check_quantization(bits, group_size)
    if vision_bits is not None:
        check_bits(vision_bits, "vision_bits", " or None (float)")
    block = {"group_size": group_size, "bits": bits, "mode": "affine"}

    def predicate(path: str, module: nn.Module):
        if not quantizable(module, group_size):
            return False
        if not path.startswith("visual."):
            return True
        if vision_bits is None or isinstance(module, nn.Embedding):  # the position table is gathered, not multiplied
            return False
        if vision_bits != bits:
            block[f"model.{path}"] = {"group_size": group_size, "bits": vision_bits, "mode": "affine"}
        return {"group_size": group_size, "bits": vision_bits, "mode": "affine"}

    nn.quantize(model, group_size, bits, mode="affine", class_predicate=predicate)
    mx.eval(model.parameters())
    return with_quantization(config, block)


def convert_vl(src: str, dst: str, *, bits: Optional[int] = None, group_size: int = 64,
               vision_bits: Optional[int] = 8, dtype: Optional[str] = None, dwq: bool = False,
               calibration: Optional[str] = None, images: int = 48, steps: int = 300, lr: float = 1e-3,
               batch_tokens: int = 2048, checkpoint: bool = False, vision_dwq: bool = False,
               callback: Optional[Callable[[int, float], None]] = None, reranker: Optional[bool] = None) -> dict:
    """Original Qwen3-VL weights at `src` (folder or hub id) -> quantized folder at `dst` (must not exist).

    dwq=True tunes the quantized scales/biases so the vectors match the float model's (vl_distill.py) on the
    `calibration` texts (default: the packaged set) and `images` synthetic images; steps, lr, batch_tokens,
    checkpoint are distill's settings, vision_dwq also tunes the vision tower, callback(step, loss) the progress.
    reranker: convert a Qwen3-VL-Reranker (default: when the source's name or mark says so; nothing else tells).
    Returns {"path", "size_bytes", "quantization"}, plus "dwq": the DistillReport when dwq=True."""
    bits = check_quantization(bits, group_size)
    dst_path = Path(dst).expanduser()
    refuse_existing(dst_path)
    items = calibration_items(calibration, images) if dwq else None  # a bad file fails before loading
    source = open_checkpoint(src)
    reranker = source.kind == "qwen3_vl_reranker" if reranker is None else reranker
    if reranker and dwq:
        raise ValueError(f"{source.name} is a reranker: dwq distils embedding vectors; convert it without dwq")
    folder = source.folder
    dtype = output_dtype(dtype, source.config)
    model, config = load_float_vl(folder, dtype, source.config)
    weights = {}
    if reranker:
        no_yes = [read_tokenizer(folder).token_to_id(t) for t in ("no", "yes")]
        if None in no_yes:
            raise ValueError(f"{folder / 'tokenizer.json'} has no 'yes' or 'no' token: not a Qwen3-VL-Reranker")
        weights["score_head.weight"] = read_vl_head_rows(folder, source.config, model.args, no_yes)
        config[KIND_KEY], config[SCORE_HEAD_KEY] = "reranker", no_yes
    config = quantize_vl(model, config, bits, group_size, vision_bits)
    config["torch_dtype"] = dtype
    report = None
    if dwq:
        # an fp32 teacher on CPU (bf16 matmul is 30x slower there), the checkpoint's dtype on Metal; passed
        # inline so that distill_vl frees it once its targets are computed
        embedder = VLEmbedder(model, folder, model.args, plan(), name=source.name)
        report = distill_vl(load_float_vl(folder, "float32" if plan().dtype == mx.float32 else dtype, source.config)[0],
                            model,
                            embedder, items, vision=vision_dwq, steps=steps, lr=lr, batch_tokens=batch_tokens,
                            checkpoint=checkpoint, callback=callback)
    weights |= {"model." + k: v for k, v in tree_flatten(model.parameters())}
    with building_folder(dst_path) as tmp:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        copy_files(folder, tmp, EXTRA_FILES)
    result = {"path": str(dst_path), "size_bytes": (dst_path / "model.safetensors").stat().st_size,
              "quantization": config["quantization"]}
    return result if report is None else result | {"dwq": report}
