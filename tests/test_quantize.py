"""The converter: original-layout tiny checkpoints -> mlx-community layout, checked against mlx-lm's loader and
writer, the float model's vectors, and the atomic-write promises (refuse an existing DST, leave nothing behind)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import TEXTS, make_hub_checkpoint, make_mlx_checkpoint

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.quant import quantize


def mlx_lm_vectors(folder: Path, embedder) -> np.ndarray:
    """mlx-lm's own Qwen3 on the converted folder: final-normed hidden state of the last token, normalised."""
    from mlx_lm.utils import load_model

    model, _ = load_model(folder)
    vectors = []
    for ids in embedder.tokenize(TEXTS):  # one text at a time: no padding question
        hidden = model.model(mx.array([ids])).astype(mx.float32)
        vectors.append(np.array(hidden[0, -1]))
    vectors = np.stack(vectors)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def files_state(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def float_vectors(hub_model) -> np.ndarray:
    return mqe.load(str(hub_model)).embed(TEXTS)


@pytest.fixture(scope="module")
def four_bit(hub_model, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("q") / "tiny-4bit"
    quantize.convert(str(hub_model), str(dst), bits=4, group_size=32)
    return dst


def test_4bit_loads_in_mlx_lm_with_the_same_vectors(four_bit):
    embedder = mqe.load(str(four_bit))
    ours = embedder.embed(TEXTS)
    theirs = mlx_lm_vectors(four_bit, embedder)
    assert (ours * theirs).sum(1).min() >= 0.9999


def test_4bit_vectors_close_to_the_float_model(four_bit, float_vectors):
    cos = (mqe.load(str(four_bit)).embed(TEXTS) * float_vectors).sum(1)
    assert cos.mean() >= 0.98 and cos.min() >= 0.97


def test_8bit_vectors_closer_to_the_float_model(hub_model, tmp_path, float_vectors):
    quantize.convert(str(hub_model), str(tmp_path / "8bit"), bits=8, group_size=64)
    cos = (mqe.load(str(tmp_path / "8bit")).embed(TEXTS) * float_vectors).sum(1)
    assert cos.min() >= 0.9995


def test_layout_equals_what_mlx_lm_writes(hub_model, tmp_path):
    ours = tmp_path / "ours"
    quantize.convert(str(hub_model), str(ours), bits=4, group_size=64)
    theirs = make_mlx_checkpoint(hub_model, tmp_path / "theirs", bits=4, group_size=64)
    a, b = mx.load(str(ours / "model.safetensors"), return_metadata=True), \
        mx.load(str(theirs / "model.safetensors"), return_metadata=True)
    assert {k: (v.shape, v.dtype) for k, v in a[0].items()} == {k: (v.shape, v.dtype) for k, v in b[0].items()}
    assert a[1] == b[1] == {"format": "mlx"}
    config, reference = (json.loads((f / "config.json").read_text()) for f in (ours, theirs))
    assert config["quantization"] == config["quantization_config"] == reference["quantization"]
    index = json.loads((ours / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(a[0]) and all(k.startswith("model.") for k in a[0])


def test_bits_per_weight_equals_mlx_lm(four_bit):
    from mlx_lm.utils import compute_bits_per_weight, load_model

    model, _ = load_model(four_bit)
    assert quantize.summary(four_bit)["bits_per_weight"] == pytest.approx(compute_bits_per_weight(model))


def test_recipe_writes_per_module_overrides_that_mlx_lm_honours(hub_model, tmp_path):
    from mlx_lm.utils import load_model

    dst = tmp_path / "mixed"
    quantize.convert(str(hub_model), str(dst), recipe="mixed_4_6")
    block = json.loads((dst / "config.json").read_text())["quantization"]
    overrides = {k: v["bits"] for k, v in block.items() if isinstance(v, dict)}
    assert block["bits"] == 4
    assert overrides == {"model.embed_tokens": 6, "model.layers.1.self_attn.v_proj": 6,
                         "model.layers.1.mlp.down_proj": 6}
    model, _ = load_model(dst)
    assert {name: m.bits for name, m in model.named_modules() if name in overrides} == overrides


def test_mixed_4_6_picks_the_edges_and_every_third_layer_of_28():
    high = [i for i in range(28) if quantize.mixed_4_6(f"layers.{i}.mlp.down_proj", 28) == 6]
    assert high == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]
    assert quantize.mixed_4_6("layers.5.self_attn.q_proj", 28) == 4


def test_mixed_4_8_keeps_down_proj_and_the_first_and_last_layer_at_8():
    assert quantize.mixed_4_8("layers.10.mlp.down_proj", 28) == 8
    assert quantize.mixed_4_8("layers.27.self_attn.q_proj", 28) == 8
    assert quantize.mixed_4_8("layers.10.self_attn.q_proj", 28) == 4


def test_tokenizer_gains_the_eos_post_processor(tmp_path):
    from tokenizers import Tokenizer

    src = make_hub_checkpoint(tmp_path / "old-tokenizer", append_eos=False)
    quantize.convert(str(src), str(tmp_path / "out"), bits=8)
    tokenizer = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    eos = tokenizer.token_to_id("<|endoftext|>")
    assert tokenizer.encode("hello world").ids[-1] == eos
    assert tokenizer.encode("hello world").ids[:-1] == tokenizer.encode("hello world", add_special_tokens=False).ids


def test_mlx_lm_tokenizer_of_the_output_appends_eos(tmp_path):
    from mlx_lm import load

    src = make_hub_checkpoint(tmp_path / "old-tokenizer", append_eos=False)
    quantize.convert(str(src), str(tmp_path / "out"), bits=8)
    _, tokenizer = load(str(tmp_path / "out"))
    assert tokenizer.encode("hello world")[-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_sentence_transformers_files_travel(hub_model, four_bit):
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                 "1_Pooling/config.json", "tokenizer_config.json"):
        assert (four_bit / name).read_bytes() == (hub_model / name).read_bytes(), name
    assert (four_bit / "tokenizer.json").read_bytes() == (hub_model / "tokenizer.json").read_bytes()


def test_untied_config_without_lm_head_loads_in_mlx_lm(tmp_path):
    from mlx_lm.utils import load_model

    src = make_hub_checkpoint(tmp_path / "like-8b", tie_word_embeddings=False)  # the 8B: untied, no lm_head
    quantize.convert(str(src), str(tmp_path / "out"), bits=4)
    load_model(tmp_path / "out")
    assert mqe.load(str(tmp_path / "out")).embed("x").shape == (64,)


def test_sharded_prefixed_bf16_source_converts(tmp_path):
    src = make_hub_checkpoint(tmp_path / "sharded", shards=3, prefix="model.", dtype="bfloat16")
    summary = quantize.convert(str(src), str(tmp_path / "out"), bits=4)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    assert mx.load(str(tmp_path / "out" / "model.safetensors"))["model.norm.weight"].dtype == mx.bfloat16
    assert summary["bits_per_weight"] < 5


def test_second_run_refuses_and_leaves_dst_untouched(hub_model, four_bit):
    before = files_state(four_bit)
    with pytest.raises(FileExistsError, match=str(four_bit)):
        quantize.convert(str(hub_model), str(four_bit), bits=8)
    assert files_state(four_bit) == before


def test_exception_mid_write_leaves_nothing(hub_model, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(quantize, "copy_extra_files", fail)  # after the weights are written
    with pytest.raises(OSError, match="disk full"):
        quantize.convert(str(hub_model), str(tmp_path / "out"), bits=4)
    assert list(tmp_path.iterdir()) == []


def test_killed_conversion_leaves_nothing_at_dst(hub_model, tmp_path):
    dst, marker = tmp_path / "out", tmp_path / "writing"
    script = f"""
import time
from pathlib import Path
from mlx_qwen3_embed.quant import quantize
real = quantize.copy_extra_files
def slow(*args):
    real(*args)
    Path({str(marker)!r}).touch()
    time.sleep(120)
quantize.copy_extra_files = slow
quantize.convert({str(hub_model)!r}, {str(dst)!r}, bits=4)
"""
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the conversion never reached its last step"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert not dst.exists()
    left = list(tmp_path.glob(".out.partial-*"))
    assert left, "the killed run's folder should be beside dst"
    # the next run to the same dst removes what the killed one left, and keeps a running conversion's folder
    running = tmp_path / f".out.partial-{os.getpid()}-running"
    running.mkdir()
    quantize.convert(str(hub_model), str(dst), bits=4)
    assert dst.is_dir() and sorted(tmp_path.glob(".out.partial-*")) == [running]


def test_already_quantized_source_is_refused(mlx_model, tmp_path):
    with pytest.raises(ValueError, match="already quantized"):
        quantize.convert(str(mlx_model), str(tmp_path / "out"), bits=4)


@pytest.mark.parametrize("settings, message", [
    (dict(bits=7), "bits must be one of"), (dict(group_size=48), "group_size must be one of"),
    (dict(recipe="mixed_9"), "recipe must be one of"), (dict(recipe="mixed_4_6", bits=4), "sets its own bits")])
def test_bad_settings_raise_before_loading(settings, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        quantize.convert(str(tmp_path / "does-not-exist"), str(tmp_path / "out"), **settings)
    assert not (tmp_path / "out").exists()


def test_dwq_convert_writes_a_loadable_checkpoint_and_reports_held_out_cosine(hub_model, tmp_path):
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text("\n".join(json.dumps({"text": t, "kind": "document"}) for t in TEXTS if t) + "\n")
    losses = []
    result = quantize.convert(str(hub_model), str(tmp_path / "out"), bits=4, group_size=32, dwq=True,
                              calibration=str(calibration), steps=3, callback=lambda step, loss: losses.append(loss))
    report = result["dwq"]
    assert report.steps == 3 and len(losses) == 3 and report.kept in ("distilled", "rounded")
    assert report.after_mean >= report.before_mean  # the better of the two is kept
    assert mqe.load(result["path"]).embed(TEXTS).shape == (len(TEXTS), 64)


def test_dwq_with_a_missing_calibration_file_fails_before_any_work(hub_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="no calibration file at"):
        quantize.convert(str(hub_model), str(tmp_path / "out"), bits=4, dwq=True,
                         calibration=str(tmp_path / "none.jsonl"))
    assert list(tmp_path.iterdir()) == []


def test_every_published_recipe_is_a_valid_convert_call():
    import importlib.util
    import inspect

    spec = importlib.util.spec_from_file_location("recipes", Path(__file__).parents[1] / "convert" / "recipes.py")
    recipes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipes)
    assert {"Qwen3-Embedding-0.6B-4bit", "Qwen3-Embedding-8B-4bit-dwq"} <= set(recipes.RECIPES)
    for source, settings in recipes.RECIPES.values():
        inspect.signature(quantize.convert).bind(source, "dst", **settings)
        quantize.check_settings(settings.get("bits"), settings["group_size"], settings.get("recipe"))
