"""Layers that keep a checkpoint's own storage (bf16/fp16, or affine-quantized) and compute in float32.

The CPU's fast kernel is the fp32 GEMM (../../shared/REFERENCE.md: bf16 matmul and quantized_matmul run 30-60x
slower), so the loader normally turns every weight into float32 once, at load. That is 4 bytes per parameter:
~16 GB for the 4B and ~30 GB for the 8B. When that does not fit (device.fit_memory decides), these layers keep
the 2 (bf16) or ~0.56 (4-bit) bytes per parameter of the checkpoint and rebuild one float32 weight matrix at
the moment it is used, so only the matrices of the layer being computed exist in float32. Their parameters
have the checkpoint's names (weight; with scales and biases when quantized), so weights load with no renaming.
"""

from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten


class _Stored(nn.Module):
    """A (out, in) matrix as stored: `weight` float (bf16/fp16/fp32), or packed uint32 with `scales`/`biases`."""

    def __init__(self, out_dims: int, in_dims: int, dtype: mx.Dtype, quantization: Optional[dict]):
        super().__init__()
        self.dtype = dtype  # the compute dtype
        # plain ints, not a dict: a dict attribute would count as a child of the module's parameter tree
        self.bits = quantization["bits"] if quantization else None
        self.group_size = quantization["group_size"] if quantization else None
        if quantization:
            bits, group_size = self.bits, self.group_size
            # placeholders with the checkpoint's shapes (lazy, never computed: load replaces them)
            self.weight = mx.zeros((out_dims, in_dims * bits // 32), mx.uint32)
            self.scales = mx.zeros((out_dims, in_dims // group_size))
            self.biases = mx.zeros((out_dims, in_dims // group_size))
        else:
            self.weight = mx.zeros((out_dims, in_dims))

    def rows(self, index: Optional[mx.array] = None) -> mx.array:
        """The float matrix in the compute dtype, (out, in), or only its rows at `index` (..., in)."""
        weight = self.weight if index is None else self.weight[index]
        if self.bits is None:
            return weight.astype(self.dtype)
        scales = self.scales if index is None else self.scales[index]
        biases = self.biases if index is None else self.biases[index]
        return mx.dequantize(weight, scales.astype(self.dtype), biases.astype(self.dtype),
                             group_size=self.group_size, bits=self.bits, mode="affine")


class UpcastLinear(_Stored):
    """nn.Linear without bias: x (..., in) -> (..., out) by a GEMM on the matrix rebuilt for this call."""

    def __call__(self, x: mx.array) -> mx.array:
        return x @ self.rows().T


class UpcastEmbedding(_Stored):
    """nn.Embedding: ids (...) -> (..., dims), only the looked-up rows rebuilt."""

    def __call__(self, ids: mx.array) -> mx.array:
        return self.rows(ids)


def upcast_layers(model: nn.Module, dtype: mx.Dtype, quantization_of) -> set[str]:
    """Swap every Linear and Embedding of `model` for its stored-weights twin, in place; returns their paths.

    quantization_of(path) -> {"bits", "group_size"} for a module the checkpoint holds quantized, else None.
    """
    swaps = []
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear) and "bias" not in module:
            out_dims, in_dims = module.weight.shape
            swaps.append((path, UpcastLinear(out_dims, in_dims, dtype, quantization_of(path))))
        elif isinstance(module, nn.Embedding):
            rows, dims = module.weight.shape
            swaps.append((path, UpcastEmbedding(rows, dims, dtype, quantization_of(path))))
    model.update_modules(tree_unflatten(swaps))
    return {path for path, _ in swaps}
