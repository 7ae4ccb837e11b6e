"""The device strategy: float32 + dequantized weights on CPU, bfloat16 + quantized matmul on Metal, overridable."""

import mlx.core as mx
import pytest

from mlx_qwen3_embed.device import plan
from mlx_qwen3_embed.models.qwen3 import Kernels


def test_cpu_computes_in_float32_and_dequantizes():
    cpu = plan("cpu")
    assert cpu.dtype == mx.float32 and cpu.dequantize and cpu.stream == mx.cpu


def test_gpu_keeps_quantized_weights_in_bfloat16():
    gpu = plan("gpu")
    assert gpu.dtype == mx.bfloat16 and not gpu.dequantize and gpu.stream == mx.gpu


def test_kernels_are_chosen_per_device(monkeypatch):
    from mlx_qwen3_embed import device

    assert plan("gpu").kernels == Kernels()  # MLX's fused attention and exp
    monkeypatch.setattr(device.platform, "machine", lambda: "x86_64")
    assert plan("cpu").kernels == Kernels(chunked_attention=True, host_exp=True)
    monkeypatch.setattr(device.platform, "machine", lambda: "arm64")  # MLX's CPU exp is vectorised there
    assert plan("cpu").kernels == Kernels(chunked_attention=True, host_exp=False)
    assert Kernels(True, True).describe() == "attention in blocks of 64 queries, exp through numpy"
    assert Kernels().describe() == "MLX fused attention, exp through MLX"


def test_every_choice_can_be_overridden():
    custom = plan("gpu", dtype="float32", dequantize=True, batch_tokens=123)
    assert (custom.dtype, custom.dequantize, custom.batch_tokens) == (mx.float32, True, 123)


@pytest.mark.parametrize("kwargs, message", [(dict(device="tpu"), "device must be 'cpu' or 'gpu', got 'tpu'"),
                                             (dict(dtype="int8"), "dtype must be one of float32, bfloat16, float16"),
                                             (dict(batch_tokens=0), "batch_tokens must be a positive")])
def test_bad_choices_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan(**kwargs)
