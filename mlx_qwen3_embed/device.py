"""Device strategy, in one place: which dtype to compute in, whether to dequantize quantized weights, and which
attention and exp kernels to run.

Measured on MLX's CPU backend (../shared/REFERENCE.md): fp32 matmul through an optimised BLAS runs at ~240
GFLOP/s, while bf16 matmul (7) and 4-bit quantized_matmul (3) are 30-60x slower. So on CPU we compute in
float32 and dequantize at load time. On Metal, bf16 and quantized matmul are the fast kernels (and bf16 does
not overflow where fp16 can), so there we keep the checkpoint's quantized weights and compute in bfloat16.

Also measured on CPU (bench/results/bench_steps.md): causal attention in blocks of queries skips most of the masked
triangle (+8%); and on x86 MLX's CPU exp is scalar (28.7 ms for 3M float32 values against 0.9 ms for numpy's
SIMD exp), while softmax and SwiGLU need one exp per value, so there exp goes through numpy (+32% end to end).
On Metal MLX's own fused attention and exp are used.
"""

import platform
from dataclasses import dataclass, field
from typing import Optional

import mlx.core as mx

from .blas import warn_if_slow
from .models.qwen3 import Kernels

X86 = ("x86_64", "amd64")
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


@dataclass(frozen=True)
class DevicePlan:
    device: str            # "cpu" or "gpu"
    dtype: mx.Dtype        # compute dtype of float weights and activations
    dequantize: bool       # replace quantized layers by float ones at load time
    batch_tokens: int      # default token budget of one forward pass (padded tokens)
    kernels: Kernels = field(default_factory=Kernels)  # attention and exp variants (model.Kernels)

    @property
    def stream(self) -> mx.Device:
        return mx.cpu if self.device == "cpu" else mx.gpu


def check_batch_tokens(batch_tokens: Optional[int]) -> Optional[int]:
    """Raise ValueError unless `batch_tokens` is None (the device's default) or a positive int; return it."""
    if batch_tokens is not None and (isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int)
                                     or batch_tokens < 1):
        raise ValueError(f"batch_tokens must be a positive int, got {batch_tokens!r}")
    return batch_tokens


def plan(device: Optional[str] = None, dtype: Optional[str] = None,
         dequantize: Optional[bool] = None, batch_tokens: Optional[int] = None) -> DevicePlan:
    """The defaults for `device` (default: MLX's default device), each overridable."""
    if device is None:
        device = "gpu" if mx.default_device() == mx.gpu else "cpu"
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    on_cpu = device == "cpu"
    if on_cpu:
        warn_if_slow()
    check_batch_tokens(batch_tokens)
    return DevicePlan(
        device=device,
        dtype=DTYPES[dtype] if dtype else (mx.float32 if on_cpu else mx.bfloat16),
        dequantize=on_cpu if dequantize is None else dequantize,
        # CPU: 1024 measured fastest of 512-4096 tokens (bench/results/bench_steps.md)
        batch_tokens=batch_tokens or (1024 if on_cpu else 8192),
        kernels=Kernels(chunked_attention=on_cpu, host_exp=on_cpu and platform.machine().lower() in X86),
    )
