"""Original Qwen3-VL(-Embedding) weights -> a quantized folder this package loads, written atomically.

The decoder is quantized like a Qwen3 (quantize.py's bits and group sizes); the vision tower is kept at 8 bits
by default, or float (vision_bits=None): it is a small part of the weights (0.4 of 2.1 B parameters in the 2B)
and every image token passes through all of it, so its error reaches image vectors undiluted (measured:
README, "Images and video"). Keys stay in the hub layout (`model.language_model.*`, `model.visual.*`).
dwq=True distils the quantized decoder toward the float model's vectors before saving (vl_distill.py).
"""

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ..device import DTYPES, plan
from ..models.qwen3_vl import Qwen3VL, VLArgs
from .quantize import BITS, _partial_prefix, check_settings, refuse_existing, remove_stale_partials
from .vl_distill import calibration_items, distill_vl
from ..vision.embedder import VLEmbedder
from ..checkpoint.vl_weights import clean_keys
from ..checkpoint.weights import check, read_tensors, resolve

EXTRA_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
               "added_tokens.json", "chat_template.json", "chat_template.jinja", "preprocessor_config.json",
               "video_preprocessor_config.json", "generation_config.json", "README.md", "LICENSE"]


def load_float_vl(folder: Path, dtype: str) -> tuple[Qwen3VL, dict]:
    config = json.loads((folder / "config.json").read_text())
    if config.get("quantization"):
        raise ValueError(f"{folder} is already quantized: convert from the original float weights")
    model = Qwen3VL(VLArgs.from_dict(config))
    tensors = clean_keys(read_tensors(folder))
    check(model, tensors, folder)
    model.update(tree_unflatten([(k, v.astype(DTYPES[dtype])) for k, v in tensors.items()]))
    mx.eval(model.parameters())
    return model, config


def quantize_vl(model: Qwen3VL, config: dict, bits: int = 4, group_size: int = 64,
                vision_bits: Optional[int] = 8) -> dict:
    """Quantize in place: the decoder (and its embedding) at `bits`, the vision tower at `vision_bits` (None:
    float). A layer whose input size `group_size` does not divide stays float. Returns the new config."""
    check_settings(bits, group_size, None)
    if vision_bits is not None and (isinstance(vision_bits, bool) or vision_bits not in BITS):
        raise ValueError(f"vision_bits must be one of {', '.join(map(str, BITS))} or None (float), "
                         f"got {vision_bits!r}")
    block = {"group_size": group_size, "bits": bits, "mode": "affine"}

    def predicate(path: str, module: nn.Module):
        if not hasattr(module, "to_quantized") or module.weight.shape[-1] % group_size:
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
    config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    config["quantization"] = block
    return config


def convert_vl(src: str, dst: str, *, bits: Optional[int] = None, group_size: int = 64,
               vision_bits: Optional[int] = 8, dtype: Optional[str] = None, dwq: bool = False,
               calibration: Optional[str] = None, images: int = 48, steps: int = 300, lr: float = 1e-3,
               batch_tokens: int = 2048, checkpoint: bool = False, vision_dwq: bool = False,
               callback: Optional[Callable[[int, float], None]] = None) -> dict:
    """Original Qwen3-VL weights at `src` (folder or hub id) -> quantized folder at `dst` (must not exist).

    dwq=True tunes the quantized scales/biases so the vectors match the float model's (vl_distill.py) on the
    `calibration` texts (default: the packaged set) and `images` synthetic images; steps, lr, batch_tokens,
    checkpoint are distill's settings, vision_dwq also tunes the vision tower, callback(step, loss) the progress.
    Returns {"path", "size_bytes", "quantization"}, plus "dwq": the DistillReport when dwq=True."""
    bits = check_settings(bits, group_size, None)
    dst_path = Path(dst).expanduser()
    refuse_existing(dst_path)
    items = calibration_items(calibration, images) if dwq else None  # a bad file fails before loading
    folder = resolve(src)
    config = json.loads((folder / "config.json").read_text())
    dtype = dtype or config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model, config = load_float_vl(folder, dtype)
    config = quantize_vl(model, config, bits, group_size, vision_bits)
    config["torch_dtype"] = dtype
    report = None
    if dwq:
        # an fp32 teacher on CPU (bf16 matmul is 30x slower there), the checkpoint's dtype on Metal; passed
        # inline so that distill_vl frees it once its targets are computed
        embedder = VLEmbedder(model, folder, model.args, plan(), name=src)
        report = distill_vl(load_float_vl(folder, "float32" if plan().dtype == mx.float32 else dtype)[0], model,
                            embedder, items, vision=vision_dwq, steps=steps, lr=lr, batch_tokens=batch_tokens,
                            checkpoint=checkpoint, callback=callback)
    weights = {"model." + k: v for k, v in tree_flatten(model.parameters())}
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dst_path)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(dst_path)}{os.getpid()}-", dir=dst_path.parent))
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for name in EXTRA_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, tmp / name)
        if not (tmp / "tokenizer.json").is_file():
            raise FileNotFoundError(f"no tokenizer.json in {src}: the converted model could not tokenize text")
        refuse_existing(dst_path)
        os.rename(tmp, dst_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = {"path": str(dst_path), "size_bytes": (dst_path / "model.safetensors").stat().st_size,
              "quantization": config["quantization"]}
    return result if report is None else result | {"dwq": report}
