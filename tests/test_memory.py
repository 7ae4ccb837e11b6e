"""The memory plan: full float32 when it fits, the checkpoint's own storage up-cast per layer when it does not,
and a clear refusal, before any weight is read, when even that cannot fit."""

import json
import shutil

import mlx.core as mx
import pytest
from typer.testing import CliRunner

import mlx_qwen3_embed as mqe
from conftest import make_hub_checkpoint, make_mlx_checkpoint
from mlx_qwen3_embed.checkpoint import weights
from mlx_qwen3_embed.cli import app
from mlx_qwen3_embed.device import GB, MEMORY_ENV, fit_memory, parse_bytes, plan
from mlx_qwen3_embed.models.upcast import UpcastEmbedding, UpcastLinear
from mlx_qwen3_embed.quant.quantize import read_header
from mlx_qwen3_embed.checkpoint.weights import memory_need, read_config


def lean_budget(folder) -> int:
    """Memory in which `folder` fits only with its stored weights (not in float32)."""
    storage = weights.ITEMSIZE[json.loads((folder / "config.json").read_text())["torch_dtype"]]
    _, stored, working = memory_need(read_config(folder), plan("cpu"), storage)
    return stored + working


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):
    return make_hub_checkpoint(tmp_path_factory.mktemp("bf16") / "tiny-bf16", dtype="bfloat16", shards=2)


def test_fit_keeps_the_plan_that_fits():
    cpu = plan("cpu")
    assert fit_memory(cpu, 10 * GB, 3 * GB, GB, available=12 * GB) is cpu


def test_fit_keeps_stored_weights_on_cpu_when_float32_does_not_fit():
    lean = fit_memory(plan("cpu"), 30 * GB, 16 * GB, GB, available=20 * GB)
    assert lean.upcast and not lean.dequantize and lean.dtype == mx.float32


def test_fit_refuses_what_cannot_fit_naming_the_figures():
    with pytest.raises(MemoryError, match=r"needs about 17\.0 GB \(16\.0 GB of weights \+ 1\.0 GB working memory\) "
                                          r"but only 8\.0 GB is available"):
        fit_memory(plan("cpu"), 32 * GB, 16 * GB, GB, available=8 * GB)


def test_fit_honours_an_explicit_dequantize_and_says_what_would_fit():
    with pytest.raises(MemoryError, match="dequantize left unset"):
        fit_memory(plan("cpu", dequantize=True), 30 * GB, 16 * GB, GB, available=20 * GB)


def test_metal_keeps_its_quantized_plan_and_is_never_upcast():
    gpu = plan("gpu")
    assert fit_memory(gpu, 5 * GB, 5 * GB, GB, available=16 * GB) is gpu
    with pytest.raises(MemoryError, match="smaller or more strongly quantized"):
        fit_memory(gpu, 17 * GB, 17 * GB, GB, available=16 * GB)


@pytest.mark.parametrize("text, expected", [("12GB", 12 * GB), ("512mb", 512 << 20), ("1.5g", int(1.5 * GB)),
                                            ("1000", 1000)])
def test_memory_override_sizes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-3GB", "0"])
def test_bad_memory_override_is_named(text):
    with pytest.raises(ValueError, match=MEMORY_ENV):
        parse_bytes(text)


def test_stored_bytes_match_the_files(bf16_model, mlx_model):
    """The estimate from config.json alone equals the tensor bytes the safetensors files hold (norms aside)."""
    for folder in (bf16_model, mlx_model):
        headers = {}
        for f in folder.glob("*.safetensors"):
            headers |= read_header(f)
        on_disk = sum(end - start for info in headers.values() for start, end in [info["data_offsets"]])
        config = json.loads((folder / "config.json").read_text())
        _, stored, _ = memory_need(read_config(folder), plan("cpu"), weights.ITEMSIZE[config["torch_dtype"]])
        assert abs(stored - on_disk) <= 0.02 * on_disk, folder


@pytest.mark.parametrize("name", ["bf16", "quantized"])
def test_upcast_loads_the_stored_weights_and_gives_the_same_vectors(name, bf16_model, mlx_model, monkeypatch,
                                                                     texts):
    folder = bf16_model if name == "bf16" else mlx_model
    full = mqe.load(str(folder))
    monkeypatch.setenv(MEMORY_ENV, str(lean_budget(folder)))
    lean = mqe.load(str(folder))
    assert not full.device.upcast and lean.device.upcast
    down, table = lean.model.layers[0].mlp.down_proj, lean.model.embed_tokens
    assert isinstance(down, UpcastLinear) and isinstance(table, UpcastEmbedding)
    stored = mx.uint32 if name == "quantized" else mx.bfloat16
    assert down.weight.dtype == stored and table.weight.dtype == stored
    assert lean.model.norm.weight.dtype == mx.float32
    if name == "quantized":  # a per-module override keeps its own bits
        assert (down.bits, lean.model.layers[1].mlp.down_proj.bits) == (8, 4)
    cosines = (lean.embed(texts) * full.embed(texts)).sum(1)
    assert cosines.min() >= 0.99999


@pytest.fixture(scope="module")
def huge_model(hub_model, tmp_path_factory):
    """A folder whose config.json claims a model of ~40 TB (its files hold the tiny one)."""
    folder = tmp_path_factory.mktemp("huge") / "huge"
    shutil.copytree(hub_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=65536, intermediate_size=262144, num_hidden_layers=512)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_too_big_a_model_is_refused_before_reading_any_weight(huge_model, monkeypatch):
    def no_reading(folder):
        raise AssertionError("weights were read")

    monkeypatch.setattr(weights, "read_tensors", no_reading)
    with pytest.raises(MemoryError, match=rf"{huge_model} needs about \d+\.\d GB .* GB is available"):
        mqe.load(str(huge_model))


def test_cli_says_it_in_one_line(huge_model, monkeypatch):
    monkeypatch.delenv("MLX_EMBED_DEBUG", raising=False)
    result = CliRunner().invoke(app, ["embed", "-m", str(huge_model), "hello"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "GB is available" in lines[0], result.stderr


def test_converter_streams_tensor_by_tensor(tmp_path):
    """Converting holds a few tensors at a time: its peak RSS grows by far less than the checkpoint's size."""
    import subprocess
    import sys

    src = make_hub_checkpoint(tmp_path / "src", hidden_size=512, intermediate_size=4096, num_attention_heads=8,
                              num_key_value_heads=4, head_dim=64, num_hidden_layers=12, shards=3)
    size = sum(f.stat().st_size for f in src.glob("*.safetensors"))  # ~330 MB of fp32; largest tensor 8 MB
    script = f"""
import resource
from mlx_qwen3_embed.quant import quantize
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
quantize.convert({str(src)!r}, {str(tmp_path / "out")!r}, bits=4)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""
    grown = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
                .stdout.split()[-1])
    assert grown < 0.25 * size, f"converting grew RSS by {grown / 1e6:.0f} MB for a {size / 1e6:.0f} MB checkpoint"
    assert mqe.load(str(tmp_path / "out")).embed("x").shape == (512,)


def test_token_table_quantized_a_block_of_rows_at_a_time_equals_mlx_lm(hub_model, tmp_path, monkeypatch):
    """The converter quantizes big matrices in blocks of rows (bounded temporaries); groups run along a row, so
    every tensor it writes is bit-identical to mlx-lm's whole-tensor conversion."""
    from mlx_qwen3_embed.quant import quantize, stream

    monkeypatch.setattr(stream, "CHUNK_ELEMENTS", 7 * 64)  # blocks of 7 rows, the last one shorter
    quantize.convert(str(hub_model), str(tmp_path / "ours"), bits=4, group_size=64)
    theirs = make_mlx_checkpoint(hub_model, tmp_path / "theirs", bits=4, group_size=64)
    ours, reference = (mx.load(str(f / "model.safetensors")) for f in (tmp_path / "ours", theirs))
    assert set(ours) == set(reference)
    for key, value in reference.items():
        assert mx.array_equal(ours[key], value), key


def test_float32_load_frees_each_stored_tensor_as_it_goes(tmp_path):
    """Loading bf16 as float32 peaks near the float32 weights, not bf16 + float32 at once (the 4B shape was
    killed for memory that way)."""
    import subprocess
    import sys

    src = make_hub_checkpoint(tmp_path / "src", dtype="bfloat16", hidden_size=512, intermediate_size=4096,
                              num_attention_heads=8, num_key_value_heads=4, head_dim=64, num_hidden_layers=12)
    stored = sum(f.stat().st_size for f in src.glob("*.safetensors"))  # ~170 MB of bf16; 340 MB as float32
    script = f"""
import mlx_qwen3_embed as mqe
def status(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) * 1024
before = status("VmRSS:")
model = mqe.load({str(src)!r})
assert not model.device.upcast, "float32 at load expected"
print(status("VmHWM:") - before)
"""
    grown = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
                .stdout.split()[-1])
    assert grown < 2.6 * stored, f"loading grew RSS by {grown / 1e6:.0f} MB for {2 * stored / 1e6:.0f} MB of float32"
