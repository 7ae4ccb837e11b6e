"""Tensor-by-tensor conversion: the quantized checkpoint written one module at a time, so that converting
needs a small multiple of the largest tensor in memory (the 8B's 1.2 GB bf16 token table), not the model.

The layout (keys, shapes, dtypes, shards) is that of mlx-lm's `save_model` on a model quantized by
quantize.quantize, read from a lazy model that is never computed; each tensor is then computed from its
source tensor (read lazily from the safetensors shard) and appended to the shard file, whose header is
written first from the known shapes.
"""

import json
import struct
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

SAFETENSORS_DTYPES = {mx.float32: "F32", mx.bfloat16: "BF16", mx.float16: "F16", mx.uint32: "U32"}
MAX_SHARD_BYTES = 5 << 30  # mlx-lm's MAX_FILE_SIZE_GB
CHUNK_ELEMENTS = 1 << 24  # weights quantized at a time (64 MB in float32)


def write_streamed(folder: Path, lazy: nn.Module, sources: dict[str, mx.array], dtype: mx.Dtype) -> None:
    """Write the parameters of `lazy` (model.-prefixed keys, quantized modules as nn.quantize left them, never
    evaluated) to `folder` as mlx-lm would, each computed from `sources` (keys without `model.`, lazily loaded
    float tensors, popped once used so that their memory goes) in `dtype`."""
    layout = [(k, v.shape, v.dtype) for k, v in tree_flatten(lazy.parameters())]
    modules = dict(lazy.named_modules())
    shards, size = [], 0
    for key, shape, kind in layout:
        nbytes = _count(shape) * kind.size
        if not shards or size + nbytes > MAX_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((key, shape, kind))
        size += nbytes
    name = "model-{:05d}-of-{:05d}.safetensors" if len(shards) > 1 else "model.safetensors"
    pending: dict[str, mx.array] = {}  # the other outputs of a module quantized for an earlier key
    weight_map = {}

    def compute(key: str) -> mx.array:
        if key in pending:
            return pending.pop(key)
        path, _, leaf = key.removeprefix("model.").rpartition(".")
        module = modules.get(f"model.{path}")
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            out = _quantize_rows(sources.pop(f"{path}.weight"), dtype, module.group_size, module.bits)
            for other in ("weight", "scales", "biases"):
                if other != leaf:
                    pending[f"model.{path}.{other}"] = out[other]
            return out[leaf]
        return sources.pop(f"{path}.{leaf}").astype(dtype)

    for number, shard in enumerate(shards, 1):
        filename = name.format(number, len(shards))
        _write_shard(folder / filename, shard, compute)
        weight_map |= {key: filename for key, _, _ in shard}
    index = {"metadata": {"total_size": sum(_count(s) * k.size for _, s, k in layout),
                          "total_parameters": _parameters(lazy)},
             "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))


def _quantize_rows(weight: mx.array, dtype: mx.Dtype, group_size: int, bits: int) -> dict[str, mx.array]:
    """mx.quantize of a (rows, columns) matrix a block of rows at a time: groups run along a row, so the result is
    the same, and the quantizer's float32 temporaries cover CHUNK_ELEMENTS instead of the whole token table
    (measured on the 4B shape: 4.9 GB peak RSS for the whole 151,665 x 2560 table at once)."""
    step = max(1, CHUNK_ELEMENTS // weight.shape[-1])
    parts = []
    for start in range(0, weight.shape[0], step):
        part = mx.quantize(weight[start:start + step].astype(dtype), group_size, bits, mode="affine")
        mx.eval(part)
        parts.append(part)
    out = {name: parts[0][i] if len(parts) == 1 else mx.concatenate([p[i] for p in parts])
           for i, name in enumerate(("weight", "scales", "biases"))}
    mx.eval(out)
    return out


def _write_shard(path: Path, tensors: list, compute) -> None:
    """A safetensors file: the header from the known shapes, then each tensor's bytes as it is computed."""
    header, offset = {"__metadata__": {"format": "mlx"}}, 0
    for key, shape, kind in tensors:
        nbytes = _count(shape) * kind.size
        header[key] = {"dtype": SAFETENSORS_DTYPES[kind], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for key, shape, kind in tensors:
            value = compute(key)
            mx.eval(value)
            if tuple(value.shape) != tuple(shape) or value.dtype != kind:
                raise RuntimeError(f"{key}: computed {value.shape} {value.dtype}, expected {shape} {kind}")
            f.write(memoryview(value))
            del value
            mx.clear_cache()  # MLX keeps freed buffers for reuse: give them back, or RSS grows to the model's size


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _parameters(model: nn.Module) -> int:
    """mlx-lm's get_total_parameters: a quantized matrix counts its unpacked size."""
    total = 0
    for _, module in tree_flatten(model.leaf_modules(), is_leaf=lambda m: isinstance(m, nn.Module)):
        if hasattr(module, "bits"):
            total += module.weight.size * 32 // module.bits
        else:
            total += sum(v.size for _, v in tree_flatten(module.parameters()))
    return total
