"""One checkpoint reader: a folder is resolved once, config.json read once per load and passed down; a text
model's load imports no vision module; memory is planned for every kind before a weight is read."""

import json
import pathlib
import subprocess
import sys

import pytest

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.checkpoint import open_checkpoint
from mlx_qwen3_embed.device import MEMORY_ENV
from vl_fixtures import vl_model  # noqa: F401  (session fixture)


def count_config_reads(monkeypatch) -> list:
    reads = []
    original = pathlib.Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name == "config.json":
            reads.append(str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    return reads


@pytest.mark.parametrize("kind", ["text", "qwen3_vl", "reranker"])
def test_config_json_is_read_once_per_load(monkeypatch, hub_model, vl_model, reranker_hub, kind):
    folder = {"text": hub_model, "qwen3_vl": vl_model, "reranker": reranker_hub}[kind]
    reads = count_config_reads(monkeypatch)
    (mqe.load_reranker if kind == "reranker" else mqe.load)(str(folder))
    assert reads == [str(folder / "config.json")]


def test_a_text_models_load_imports_no_vision_module(hub_model):
    code = (f"import sys, mlx_qwen3_embed as mqe; mqe.load({str(hub_model)!r}).embed('hi'); "
            "print([m for m in sys.modules if m.startswith('mlx_qwen3_embed.vision') or m.endswith('qwen3_vl')])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_kinds_are_told_apart(hub_model, vl_model, reranker_hub):
    assert [open_checkpoint(str(f)).kind for f in (hub_model, vl_model, reranker_hub)] == \
        ["embedding", "qwen3_vl", "reranker"]


def test_config_that_is_not_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"{tmp_path / 'config.json'} is not JSON .*download again"):
        open_checkpoint(str(tmp_path))


def test_qwen3_vl_load_plans_memory_before_reading_weights(monkeypatch, vl_model):
    from mlx_qwen3_embed.checkpoint import vl_weights

    monkeypatch.setattr(vl_weights, "read_tensors", lambda *a: pytest.fail("weights read before the memory plan"))
    monkeypatch.setenv(MEMORY_ENV, "1MB")
    with pytest.raises(MemoryError):
        mqe.load(str(vl_model))


def test_a_qwen3_vl_folder_is_refused_by_load_reranker(vl_model):
    with pytest.raises(ValueError, match="Qwen3-VL embedding model, not a reranker"):
        mqe.load_reranker(str(vl_model))


def test_checkpoint_kind_marker_wins(hub_model, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for f in hub_model.iterdir():
        (folder / f.name).symlink_to(f)
    (folder / "config.json").unlink()
    config = json.loads((hub_model / "config.json").read_text()) | {"mlx_qwen3_embed_kind": "reranker"}
    (folder / "config.json").write_text(json.dumps(config))
    assert open_checkpoint(str(folder)).kind == "reranker"


def test_info_describes_a_qwen3_vl_model(runner, vl_model, tmp_path):
    from mlx_qwen3_embed.cli import app
    from mlx_qwen3_embed.quant.vl_quantize import convert_vl

    float_facts = json.loads(runner.invoke(app, ["info", str(vl_model), "--json"]).stdout)
    config = json.loads((vl_model / "config.json").read_text())
    assert (float_facts["kind"], float_facts["dim"], float_facts["layers"]) == \
        ("qwen3_vl", config["text_config"]["hidden_size"], config["text_config"]["num_hidden_layers"])
    assert float_facts["vision"]["depth"] == config["vision_config"]["depth"]
    assert float_facts["bits_per_weight"] == 32.0 and float_facts["quantization"] is None
    convert_vl(str(vl_model), str(tmp_path / "q4"), bits=4, group_size=32)
    facts = json.loads(runner.invoke(app, ["info", str(tmp_path / "q4"), "--json"]).stdout)
    assert facts["quantization"]["bits"] == 4 and facts["bits_per_weight"] < float_facts["bits_per_weight"] / 1.5
    assert facts["parameters"] == float_facts["parameters"]  # a quantized matrix counts its unpacked weights
