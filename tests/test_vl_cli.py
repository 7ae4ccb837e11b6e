"""`mlx-embed embed` with a Qwen3-VL model: --image, --text, --layer and JSON Lines items equal the library."""

import json

import numpy as np
import pytest
from PIL import Image

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.cli import app
from vl_fixtures import vl_model  # noqa: F401  (session fixture)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = {}
    for name, size in (("a.png", (70, 90)), ("b.jpg", (64, 64))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
        paths[name] = str(folder / name)
    return paths


def vectors(stdout: str) -> np.ndarray:
    return np.array([json.loads(line)["embedding"] for line in stdout.splitlines()], dtype=np.float32)


def test_image_and_text_flags_equal_library(runner, vl_model, files):
    result = runner.invoke(app, ["embed", "--model", str(vl_model), "--image", files["a.png"], "--image",
                                 files["b.jpg"], "--text", "a caption", "plain text", "--dim", "32"])
    assert result.exit_code == 0, result.output
    expected = mqe.load(str(vl_model)).embed([{"image": files["a.png"], "text": "a caption"},
                                              {"image": files["b.jpg"], "text": "a caption"}, "plain text"], dim=32)
    np.testing.assert_allclose(vectors(result.stdout), expected, atol=1e-5)


def test_jsonl_items_to_npy_equal_library(runner, vl_model, files, tmp_path):
    records = [{"text": "only text"}, {"image": files["a.png"]},
               {"text": "both", "image": files["b.jpg"], "instruction": "Find the photo"}]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = tmp_path / "v.npy"
    result = runner.invoke(app, ["embed", "--model", str(vl_model), "--file", str(tmp_path / "items.jsonl"),
                                 "--output", str(out), "--layer", "-2", "--pooling", "mean"])
    assert result.exit_code == 0, result.output
    expected = mqe.load(str(vl_model), layer=-2, pooling="mean").embed(records)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_bad_image_is_one_error_line(runner, vl_model, tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    result = runner.invoke(app, ["embed", "--model", str(vl_model), "--image", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: item 0") and "not a readable image" in lines[0]


def test_image_with_a_text_model_is_one_error_line(runner, hub_model, files):
    result = runner.invoke(app, ["embed", "--model", str(hub_model), "--image", files["a.png"]])
    assert result.exit_code == 1 and "need a Qwen3-VL model" in result.stderr


def test_convert_quantizes_decoder_and_keeps_vision_at_8_bits(runner, vl_model, tmp_path, files):
    from safetensors import safe_open

    dst = tmp_path / "q"
    result = runner.invoke(app, ["convert", str(vl_model), str(dst), "--bits", "4", "--group-size", "32",
                                 "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    config = json.loads((dst / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["model.visual.blocks.0.attn.qkv"]["bits"] == 8
    with safe_open(str(dst / "model.safetensors"), "np") as f:
        keys = set(f.keys())
    assert "model.language_model.layers.0.mlp.up_proj.scales" in keys and "model.visual.merger.linear_fc1.scales" in keys
    assert "model.visual.pos_embed.weight" in keys and "model.visual.pos_embed.scales" not in keys
    items = ["a text", {"image": files["a.png"], "text": "caption"}]
    full = mqe.load(str(vl_model)).embed(items)
    for dequantize in (True, False):  # dequantized (CPU default) and quantized matmuls (Metal default)
        vectors = mqe.load(str(dst), dequantize=dequantize).embed(items)
        assert np.isfinite(vectors).all() and ((vectors * full).sum(-1) > 0.9).all()


def test_convert_vision_float_and_refusals(runner, vl_model, tmp_path):
    result = runner.invoke(app, ["convert", str(vl_model), str(tmp_path / "f"), "--group-size", "32",
                                 "--vision-bits", "0"])
    assert result.exit_code == 0, result.output
    assert not any(k.startswith("model.visual") for k in json.loads((tmp_path / "f" / "config.json").read_text())
                   ["quantization"])
    result = runner.invoke(app, ["convert", str(vl_model), str(tmp_path / "g"), "--recipe", "mixed_4_6"])
    assert result.exit_code == 1 and "Qwen3-VL takes --bits" in result.stderr and not (tmp_path / "g").exists()
    result = runner.invoke(app, ["convert", str(vl_model), str(tmp_path / "f")])
    assert result.exit_code == 1 and "already exists" in result.stderr


def test_mlx_vlm_layout_loads(vl_model, tmp_path, files):
    """mlx-vlm's key names (its sanitize(): `language_model.model.*`, `vision_tower.*`, `language_model.lm_head`,
    Conv3d in MLX's layout) and its per-module overrides load to the same vectors as the hub layout."""
    import mlx.core as mx

    from mlx_qwen3_embed.quant.vl_quantize import convert_vl

    hub = tmp_path / "hub"
    convert_vl(str(vl_model), str(hub), bits=4, group_size=32, vision_bits=8, dtype="float32")
    vlm = tmp_path / "vlm"
    vlm.mkdir()
    for f in hub.iterdir():
        if f.suffix != ".safetensors":
            (vlm / f.name).write_bytes(f.read_bytes())
    renamed = {}
    for key, value in mx.load(str(hub / "model.safetensors")).items():
        key = key.replace("model.language_model.", "language_model.model.").replace("model.visual.", "vision_tower.")
        renamed[key] = value
    renamed["language_model.lm_head.weight"] = renamed["language_model.model.embed_tokens.weight"]
    mx.save_safetensors(str(vlm / "model.safetensors"), renamed)
    config = json.loads((hub / "config.json").read_text())
    config["quantization"] = {k.replace("model.visual.", "vision_tower."): v for k, v in config["quantization"].items()}
    (vlm / "config.json").write_text(json.dumps(config))
    items = ["text", {"image": files["a.png"]}]
    np.testing.assert_allclose(mqe.load(str(vlm)).embed(items), mqe.load(str(hub)).embed(items), atol=1e-6)
