"""The rules both conversions share (quantize.py for Qwen3, vl_quantize.py for Qwen3-VL): the settings' checks, the
source's dtype, the refusal of a quantized source, which layers quantize, and the files that travel with the weights.
Both write their folder with atomic.building_folder."""

import shutil
from pathlib import Path
from typing import Iterable, Optional

import mlx.nn as nn

from ..checkpoint.weights import stored_dtype
from ..device import DTYPES

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
# Files of a model folder that are not weights and travel unchanged, for every kind (each conversion adds its own)
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "generation_config.json", "README.md", "LICENSE"]


def check_bits(bits, name: str = "bits", also: str = "") -> None:
    """Raise ValueError unless `bits` is one of BITS; `also` names the other values the caller accepts."""
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"{name} must be one of {', '.join(map(str, BITS))}{also}, got {bits!r}")


def check_quantization(bits: Optional[int], group_size: int) -> int:
    """Raise ValueError naming a bad bits or group_size; return the bits to use (4 unless given)."""
    bits = 4 if bits is None else bits
    check_bits(bits)
    if isinstance(group_size, bool) or group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {', '.join(map(str, GROUP_SIZES))}, got {group_size!r}")
    return bits


def output_dtype(dtype: Optional[str], config: dict) -> str:
    """The float dtype a conversion computes and writes in: `dtype`, else the checkpoint's own (as mlx-lm does),
    else bfloat16. Raises ValueError for a dtype that is not one of DTYPES."""
    dtype = dtype or stored_dtype(config) or "bfloat16"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def refuse_quantized(src, config: dict, tensors: dict, example: str) -> None:
    """Raise ValueError when the source is already quantized (a `.scales` tensor, or config.json's quantization
    block): quantizing its packed codes again would be nonsense. `example` names an original checkpoint."""
    quantized = next((k for k in tensors if k.endswith(".scales")), None)
    if quantized or config.get("quantization"):
        raise ValueError(f"{src} is already quantized ({quantized or 'config.json has a quantization block'}): "
                         f"convert from the original float weights, e.g. {example}")


def quantizable(module: nn.Module, group_size: int) -> bool:
    """Whether nn.quantize can quantize `module`: a Linear or Embedding whose input size `group_size` divides (the
    others stay float, as in mlx-lm)."""
    return hasattr(module, "to_quantized") and module.weight.shape[-1] % group_size == 0


def with_quantization(config: dict, block: dict) -> dict:
    """`config` with mlx-lm's quantization `block` in place of any quantization it had."""
    config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    config["quantization"] = block
    return config


def copy_files(src: Path, dst: Path, names: Iterable[str]) -> None:
    """Copy those of `names` that the folder `src` holds into `dst`. Raises FileNotFoundError when no
    tokenizer.json came with them: the converted model could not tokenize."""
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    if not (dst / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {src}: the converted model could not tokenize text")
