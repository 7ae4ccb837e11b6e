"""`mlx-embed embed` with a Qwen3-VL model: --image, --text, --layer and JSON Lines items equal the library."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.cli import app
from vl_fixtures import vl_model  # noqa: F401  (session fixture)


@pytest.fixture
def runner(monkeypatch) -> CliRunner:
    monkeypatch.delenv("MLX_EMBED_MODEL", raising=False)
    monkeypatch.delenv("MLX_EMBED_DEBUG", raising=False)
    return CliRunner()


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
