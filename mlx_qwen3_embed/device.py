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

Memory (fit_memory): float32 costs 4 bytes per parameter, ~16 GB for the 4B and ~30 GB for the 8B. On CPU the
loader dequantizes/up-casts at load only when that fits the memory left; otherwise the layers keep the
checkpoint's own storage (bf16: 2 bytes, 4-bit: ~0.56) and rebuild one float32 matrix at a time when used
(models/upcast.py), and a model that does not fit even so is refused before anything is read.
"""

import ctypes
import os
import platform
import re
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional

import mlx.core as mx

from .blas import warn_if_slow
from .checks import check_int
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
    upcast: bool = False   # keep the checkpoint's storage, up-cast one matrix at a time (models/upcast.py)
    auto_memory: bool = True  # dequantize was not chosen by the caller: fit_memory may switch to upcast
    stream: mx.Device = field(init=False, repr=False, compare=False)  # where the forward passes run

    def __post_init__(self):
        object.__setattr__(self, "stream", mx.cpu if self.device == "cpu" else mx.gpu)  # frozen: set once


def check_batch_tokens(batch_tokens: Optional[int]) -> Optional[int]:
    """Raise ValueError unless `batch_tokens` is None (the device's default) or a positive int; return it."""
    return None if batch_tokens is None else check_int("batch_tokens", batch_tokens)


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
        auto_memory=dequantize is None,
    )


def _find_malloc_trim():
    """glibc's malloc_trim, or None (macOS, musl): the call that hands free pages of every malloc arena back."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()


def release_memory(mlx_cache: bool = True) -> None:
    """Hand freed memory back to the system: MLX's buffer cache (unless mlx_cache=False), and on glibc the free
    pages malloc keeps in its arenas, one per thread (the server tokenizes and runs the model in threads: a big
    request's peak would otherwise stay in RSS for good). Costs a few ms; call it between batches, not inside one."""
    if mlx_cache:
        mx.clear_cache()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


MEMORY_ENV = "MLX_QWEN3_EMBED_MEMORY"  # e.g. "12GB": the memory the loader may plan with, instead of measuring
GB = 1 << 30
_LEFT: ContextVar[Optional[int]] = ContextVar("memory_left", default=None)


@contextmanager
def memory_left(available: Optional[int]) -> Iterator[None]:
    """Within it, available_memory() answers `available` bytes (None: as outside): the share of the memory a
    model loaded beside others may plan with (checkpoint/together.py planned them all first)."""
    token = _LEFT.set(available)
    try:
        yield
    finally:
        _LEFT.reset(token)


def available_memory(device: str = "cpu") -> int:
    """Bytes the model may use: inside memory_left, its figure; $MLX_QWEN3_EMBED_MEMORY if set; on Metal the
    recommended working set; on Linux MemAvailable (free + reclaimable page cache, what can be allocated without
    swapping); else the machine's physical memory."""
    if _LEFT.get() is not None:
        return _LEFT.get()
    given = os.environ.get(MEMORY_ENV)
    if given:
        return parse_bytes(given)
    if device == "gpu":
        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
        return int(info.get("max_recommended_working_set_size") or info["memory_size"])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parse_bytes(text: str) -> int:
    """ "12GB", "512MB", "8g", "1e9" -> bytes (binary units)."""
    match = re.fullmatch(r"\s*([0-9.e+]+)\s*([kmgt]?)i?b?\s*", text.lower())
    try:
        value = float(match.group(1)) if match else -1.0
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{MEMORY_ENV} must be a size such as 12GB or 512MB, got {text!r}")
    return int(value * 1024 ** " kmgt".index(match.group(2) or " "))


def fit_memory(plan: DevicePlan, planned_bytes: int, stored_bytes: int, working_bytes: int,
               available: Optional[int] = None, name: str = "the model") -> DevicePlan:
    """The plan that fits in memory: `plan` itself, or on CPU (unless the caller chose `dequantize`) its variant
    that keeps the checkpoint's storage and up-casts per layer. Raises MemoryError, naming the figures, when
    neither fits, so a model too big is refused before its weights are read.

    planned_bytes: the weights as `plan` holds them (float32 everywhere when it dequantizes); stored_bytes: the
    checkpoint's own storage; working_bytes: one batch's activations plus one layer's matrices in float32.
    """
    available = available_memory(plan.device) if available is None else available
    if planned_bytes + working_bytes <= available:
        return plan
    lean = stored_bytes + working_bytes
    can_switch = plan.auto_memory and plan.device == "cpu" and not plan.upcast
    if can_switch and lean <= available:
        return replace(plan, dequantize=False, upcast=True)
    weights = stored_bytes if can_switch else planned_bytes  # the least this plan could do with
    need = weights + working_bytes
    hint = ("load with dequantize left unset, which keeps the checkpoint's storage and up-casts one layer at a time"
            if lean <= available and plan.device == "cpu" else
            "free memory, or use a smaller or more strongly quantized model (e.g. a 4-bit conversion)")
    raise MemoryError(f"{name} needs about {need / GB:.1f} GB ({weights / GB:.1f} GB of weights + "
                      f"{working_bytes / GB:.1f} GB working memory) but only {available / GB:.1f} GB is available: "
                      f"{hint}; or set {MEMORY_ENV} if that figure of free memory is wrong")
