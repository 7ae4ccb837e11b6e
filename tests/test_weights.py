"""Loading: shards, prefixes, dtypes, untied configs, the quantized layout, and the errors that name the tensor."""

import json
import os
import shutil
import subprocess
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import mlx_qwen3_embed as mqe
from conftest import make_hub_checkpoint


@pytest.fixture(scope="module")
def reference_vectors(hub_model, texts):
    return mqe.load(str(hub_model)).embed(texts)


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("layout", [dict(shards=3), dict(prefix="model."), dict(shards=2, prefix="model.")])
def test_sharded_and_prefixed_checkpoints_load_the_same_weights(tmp_path, layout, reference_vectors, texts):
    folder = make_hub_checkpoint(tmp_path / "m", **layout)
    if layout.get("shards", 1) > 1:
        assert (folder / "model.safetensors.index.json").is_file()
    np.testing.assert_allclose(mqe.load(str(folder)).embed(texts), reference_vectors, atol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoints_load_and_compute_in_float32(tmp_path, dtype, reference_vectors, texts):
    model = mqe.load(str(make_hub_checkpoint(tmp_path / "m", dtype=dtype)))
    assert model.model.layers[0].mlp.up_proj.weight.dtype == mx.float32
    vectors = model.embed(texts)
    assert np.isfinite(vectors).all()
    assert ((vectors * reference_vectors).sum(1)).min() > 0.99  # the same weights, rounded to 16 bits


def test_untied_config_without_lm_head_loads(tmp_path, reference_vectors, texts):
    """The 8B config says tie_word_embeddings=false yet its files hold no lm_head: embeddings need none."""
    folder = make_hub_checkpoint(tmp_path / "m", tie_word_embeddings=False)
    np.testing.assert_allclose(mqe.load(str(folder)).embed(texts), reference_vectors, atol=1e-6)


def test_an_lm_head_in_the_files_is_ignored(tmp_path, hub_model, reference_vectors, texts):
    folder = copy_model(hub_model, tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    tensors["lm_head.weight"] = tensors["embed_tokens.weight"].copy()
    save_file(tensors, folder / "model.safetensors")
    np.testing.assert_allclose(mqe.load(str(folder)).embed(texts), reference_vectors, atol=1e-6)


def edit_tensors(folder, edit):
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_missing_tensor_is_named_with_the_folder(tmp_path, hub_model):
    folder = copy_model(hub_model, tmp_path / "m")
    edit_tensors(folder, lambda t: t.pop("layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=f"{folder} lacks tensor layers.1.mlp.up_proj.weight"):
        mqe.load(str(folder))


def test_unexpected_tensor_is_named(tmp_path, hub_model):
    folder = copy_model(hub_model, tmp_path / "m")
    edit_tensors(folder, lambda t: t.__setitem__("layers.9.mlp.up_proj.weight", np.zeros((2, 2), np.float32)))
    with pytest.raises(ValueError, match="unexpected tensor layers.9.mlp.up_proj.weight"):
        mqe.load(str(folder))


def test_misshapen_tensor_is_named_with_both_shapes(tmp_path, hub_model):
    folder = copy_model(hub_model, tmp_path / "m")
    edit_tensors(folder, lambda t: t.__setitem__("norm.weight", np.ones(63, np.float32)))
    with pytest.raises(ValueError, match=r"tensor norm.weight in .* has shape \(63,\), config.json implies \(64,\)"):
        mqe.load(str(folder))


def test_missing_shard_is_named(tmp_path):
    folder = make_hub_checkpoint(tmp_path / "m", shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors, which is missing"):
        mqe.load(str(folder))


def test_folder_without_weights_says_it_is_no_model_folder(tmp_path, hub_model):
    folder = copy_model(hub_model, tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no \*.safetensors in .*: is this a model folder\?"):
        mqe.load(str(folder))


def test_folder_without_config_says_it_is_no_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json in .*is this a model folder"):
        mqe.load(str(tmp_path))


def test_other_architectures_are_refused(tmp_path, hub_model):
    folder = copy_model(hub_model, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'qwen3'.*got model_type 'llama'"):
        mqe.load(str(folder))


def test_nonexistent_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no model folder at {tmp_path}/nope"):
        mqe.load(str(tmp_path / "nope"))


def test_model_argument_of_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="model must be a folder path or a hub id"):
        mqe.load(None)


# --- the mlx-community layout ---

def test_quantized_checkpoint_has_the_mlx_community_layout(mlx_model):
    config = json.loads((mlx_model / "config.json").read_text())
    keys = mx.load(str(mlx_model / "model.safetensors")).keys()
    assert config["quantization"]["bits"] == 4
    assert "model.embed_tokens.scales" in keys and "model.layers.0.mlp.down_proj.biases" in keys
    assert "model.norm.weight" in keys and "model.norm.scales" not in keys


def test_cpu_default_dequantizes_to_float32(mlx_model):
    model = mqe.load(str(mlx_model), device="cpu")
    assert not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.model.named_modules())
    assert model.model.embed_tokens.weight.dtype == mx.float32


def test_per_module_override_keeps_its_own_bits(mlx_model):
    model = mqe.load(str(mlx_model), dequantize=False, dtype="float32")
    assert model.model.layers[0].mlp.down_proj.bits == 8
    assert model.model.layers[1].mlp.down_proj.bits == 4
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)


def test_quantization_block_without_mode_loads(tmp_path, mlx_model, texts):
    """Files written by older mlx-lm lack "mode" (affine is meant)."""
    folder = copy_model(mlx_model, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    for block in ("quantization", "quantization_config"):
        config[block] = {k: ({kk: vv for kk, vv in v.items() if kk != "mode"} if isinstance(v, dict) else v)
                         for k, v in config[block].items() if k != "mode"}
    (folder / "config.json").write_text(json.dumps(config))
    np.testing.assert_allclose(mqe.load(str(folder)).embed(texts), mqe.load(str(mlx_model)).embed(texts), atol=1e-6)


def test_quantized_tensors_without_a_quantization_block_are_refused(tmp_path, mlx_model):
    folder = copy_model(mlx_model, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config.pop("quantization"), config.pop("quantization_config")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quantized tensors .* but config.json has no 'quantization' block"):
        mqe.load(str(folder))


# --- the hub: huggingface_hub's cache and offline mode ---

def populate_hub_cache(hf_home, repo_id, folder, commit="0" * 40):
    snapshot = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)


def run_offline(hf_home, code):
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_hub_id_loads_from_the_cache_offline(tmp_path, hub_model, reference_vectors, texts):
    populate_hub_cache(tmp_path, "Qwen/Qwen3-Embedding-tiny", hub_model)
    out = tmp_path / "v.npy"
    result = run_offline(tmp_path, "import sys, numpy as np, mlx_qwen3_embed as m\n"
                                   f"np.save({str(out)!r}, m.load('Qwen/Qwen3-Embedding-tiny').embed({texts!r}))")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(out), reference_vectors, atol=1e-6)


def test_hub_id_missing_from_the_cache_offline_says_so(tmp_path):
    result = run_offline(tmp_path, "import mlx_qwen3_embed as m\n"
                                   "try:\n    m.load('Qwen/Qwen3-Embedding-none')\n"
                                   "except FileNotFoundError as e:\n    print(e)\n")
    assert result.returncode == 0, result.stderr
    assert "Qwen/Qwen3-Embedding-none is not in the Hugging Face cache" in result.stdout
