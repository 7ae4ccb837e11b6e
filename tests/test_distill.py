"""Embedding-distilled quantization: held-out cosine improves, only scales/biases move, and the tuned student
saves as an mlx-community checkpoint that mlx-lm and mlx_qwen3_embed both load."""

import json

import mlx.core as mx
import numpy as np
import pytest
from conftest import CORPUS
from mlx.utils import tree_flatten

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.quant.distill import CALIBRATION, distill, read_calibration, split_holdout
from mlx_qwen3_embed.quant.quantize import load_float, quantize, save
from mlx_qwen3_embed.tokenizer import DEFAULT_INSTRUCTION, Tokenizer, query_prompt

GROUP_SIZE = 32  # the tiny model's rows hold 64-128 inputs: two or more groups each
SETTINGS = dict(steps=40, lr=1e-3, batch_tokens=1024, holdout=0.2, max_length=64, token_weight=1.0, seed=0)


def calibration_texts() -> list[str]:
    """The shipped calibration set (queries instructed), cut to 64 tokens by max_length: 251 + 63 held out."""
    return read_calibration()


def few_texts() -> list[str]:
    """For tests of mechanics, not of quality: the tiny tokenizer's corpus, a few queries instructed."""
    unique = list(dict.fromkeys(t for t in CORPUS if t))
    return unique + [query_prompt(DEFAULT_INSTRUCTION) + t for t in unique[:8]]


def rounded_student(folder):
    student, config, _ = load_float(str(folder), "float32")
    config = quantize(student, config, bits=4, group_size=GROUP_SIZE)
    return student, config


def parameters(model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def distilled(hub_model, tmp_path_factory):
    """(rounded params, tuned student, its config, report, folder of the saved tuned checkpoint)."""
    teacher, _, _ = load_float(str(hub_model), "float32")
    student, config = rounded_student(hub_model)
    rounded = parameters(student)
    report = distill(teacher, student, Tokenizer(hub_model), calibration_texts(), **SETTINGS)
    folder = tmp_path_factory.mktemp("dwq") / "tiny-4bit-dwq"
    save(student, config, hub_model, str(folder))
    return rounded, student, config, report, folder


def test_distillation_raises_held_out_cosine(distilled):
    _, _, _, report, _ = distilled
    assert report.kept == "distilled"
    assert report.after_mean > report.before_mean
    assert report.after_worst >= report.before_worst


def test_only_scales_and_biases_move(distilled):
    rounded, student, _, _, _ = distilled
    tuned = parameters(student)
    assert tuned.keys() == rounded.keys()
    # the Linear layers' scales and biases; the token table stays rounded (distill's embeddings=False)
    moving = [k for k in tuned if k.endswith((".scales", ".biases")) and not k.startswith("embed_tokens.")]
    assert moving and all(not np.array_equal(tuned[k], rounded[k]) for k in moving)
    for key in set(tuned) - set(moving):  # packed uint32 weights, the token table and every norm: bit for bit
        assert tuned[key].dtype == rounded[key].dtype and np.array_equal(tuned[key], rounded[key]), key


def test_saved_checkpoint_is_closer_to_float_than_rounding(distilled, hub_model, tmp_path):
    """Through the public API: the saved DWQ folder's vectors beat a plain 4-bit folder's on held-out texts."""
    _, _, _, _, folder = distilled
    student, config = rounded_student(hub_model)
    save(student, config, hub_model, str(tmp_path / "tiny-4bit"))
    _, held = split_holdout(calibration_texts(), SETTINGS["holdout"], SETTINGS["seed"])
    vectors = {name: mqe.load(str(path), max_length=SETTINGS["max_length"]).embed(held)
               for name, path in (("float", hub_model), ("plain", tmp_path / "tiny-4bit"), ("dwq", folder))}
    plain = cosines(vectors["plain"], vectors["float"])
    dwq = cosines(vectors["dwq"], vectors["float"])
    assert (1 - dwq).mean() < (1 - plain).mean()
    assert dwq.min() >= plain.min() - 1e-6


def test_saved_checkpoint_has_mlx_community_layout(distilled):
    _, _, _, _, folder = distilled
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == GROUP_SIZE
    tensors = mx.load(str(folder / "model.safetensors"))
    assert all(k.startswith("model.") for k in tensors)
    assert tensors["model.layers.0.mlp.down_proj.weight"].dtype == mx.uint32
    assert "model.embed_tokens.scales" in tensors and "model.embed_tokens.biases" in tensors


def test_saved_checkpoint_loads_in_mlx_lm_with_the_same_vectors(distilled, texts):
    from mlx_lm.utils import load_model

    _, _, _, _, folder = distilled
    reference, _ = load_model(folder)
    ours = mqe.load(str(folder))
    expected = []
    for ids in ours.tokenize(texts):  # one at a time: mlx-lm has no padding logic of its own
        expected.append(np.array(reference.model(mx.array([ids]))[0, -1].astype(mx.float32)))
    assert cosines(ours.embed(texts), np.stack(expected)).min() >= 0.99999


def test_keeps_rounding_when_distillation_does_not_help(hub_model):
    """A learning rate far too large only makes things worse: the student comes back untouched."""
    teacher, _, _ = load_float(str(hub_model), "float32")
    student, _ = rounded_student(hub_model)
    rounded = parameters(student)
    report = distill(teacher, student, Tokenizer(hub_model), few_texts(), **{**SETTINGS, "steps": 10, "lr": 10.0})
    assert report.kept == "rounded" and report.after_mean == report.before_mean
    assert "so round-to-nearest was kept" in report.summary()  # the converter prints this line
    assert all(np.array_equal(v, rounded[k]) for k, v in parameters(student).items())


def test_quantized_matmul_path_trains_like_the_float_path(hub_model):
    """through="quantized" (Metal's path) and through="float" (CPU's) compute the same loss and updates."""
    teacher, _, _ = load_float(str(hub_model), "float32")
    reports = []
    for through in ("float", "quantized"):
        student, _ = rounded_student(hub_model)
        reports.append(distill(teacher, student, Tokenizer(hub_model), few_texts(),
                               **{**SETTINGS, "steps": 5}, through=through))
    np.testing.assert_allclose(reports[0].losses, reports[1].losses, rtol=1e-3, atol=1e-6)


def test_checkpointed_blocks_train_like_plain_ones(hub_model):
    teacher, _, _ = load_float(str(hub_model), "float32")
    reports = []
    for checkpoint in (False, True):
        student, _ = rounded_student(hub_model)
        reports.append(distill(teacher, student, Tokenizer(hub_model), few_texts(),
                               **{**SETTINGS, "steps": 5}, checkpoint=checkpoint))
    np.testing.assert_allclose(reports[0].losses, reports[1].losses, rtol=1e-4, atol=1e-7)


def test_bfloat16_student_keeps_bfloat16_scales(hub_model):
    """The converter's default for hub weights: a bf16 student trains in fp32 and stores bf16 again."""
    student, config, _ = load_float(str(hub_model), "bfloat16")
    quantize(student, config, bits=4, group_size=GROUP_SIZE)
    report = distill(load_float(str(hub_model), "float32")[0], student, Tokenizer(hub_model), calibration_texts(),
                     **{**SETTINGS, "steps": 10})
    assert report.kept == "distilled" and report.after_mean > report.before_mean
    assert {v.dtype for k, v in tree_flatten(student.parameters()) if k.endswith((".scales", ".biases"))} == {mx.bfloat16}


def test_unquantized_student_is_refused(hub_model):
    teacher, _, _ = load_float(str(hub_model), "float32")
    student, _, _ = load_float(str(hub_model), "float32")
    with pytest.raises(ValueError, match="no quantized layers"):
        distill(teacher, student, Tokenizer(hub_model), few_texts(), steps=1)


def test_shipped_calibration_set_has_queries_documents_and_languages():
    records = [json.loads(line) for line in CALIBRATION.read_text(encoding="utf-8").splitlines()]
    kinds = {r["kind"] for r in records}
    langs = {r["lang"] for r in records}
    assert kinds == {"query", "document"} and len(records) >= 300
    assert {"en", "de", "fr", "es", "zh", "ja", "ru", "ar", "code"} <= langs
    assert_covers_every_kind(records, long_passages=5)
    code = "\n".join(r["text"] for r in records if r["lang"] == "code")
    assert all(marker in code for marker in ("def ", "function", "SELECT", "done"))  # Python, JS, SQL, shell


def assert_covers_every_kind(records: list[dict], long_passages: int) -> None:
    """Languages, code, long passages, instructed queries, tables and lists (also used for heldout.jsonl)."""
    texts = [r["text"] for r in records]
    # 500-1500 tokens with the real tokenizer: ~2500+ bytes of UTF-8 (a Chinese character is 3 bytes, ~1 token)
    assert sum(len(t.encode()) >= 2500 for t in texts) >= long_passages
    assert sum("|---|" in t for t in texts) >= 3 and sum("\n- " in t or "\n1. " in t for t in texts) >= 3
    assert sum(r["lang"] == "code" for r in records) >= 10
    instructions = {r.get("instruction") for r in records if r["kind"] == "query"} - {None}
    assert len(instructions) >= 3 and all(len(set(t)) > 1 for t in instructions)


def test_read_calibration_instructs_queries_and_leaves_documents_plain(tmp_path):
    path = tmp_path / "cal.jsonl"
    path.write_text('{"text": "what is MLX", "kind": "query", "lang": "en"}\n'
                    '{"text": "MLX is an array framework.", "kind": "document", "lang": "en"}\n')
    assert read_calibration(path, "Find it") == ["Instruct: Find it\nQuery:what is MLX", "MLX is an array framework."]


def test_read_calibration_names_the_bad_line(tmp_path):
    path = tmp_path / "cal.jsonl"
    path.write_text('{"text": "a", "kind": "query"}\n{"text": "b", "kind": "passage"}\n')
    with pytest.raises(ValueError, match=r"cal.jsonl line 2 has kind 'passage'"):
        read_calibration(path)


def test_dwq_memory_bound_shrinks_with_checkpoint_and_grows_with_the_model():
    """The converter's plan (distill_memory.memory_need): --checkpoint keeps one block's activations and float
    weights instead of every layer's; a deeper model and a larger batch need more."""
    from conftest import QWEN3_06B
    from mlx_qwen3_embed.models.args import ModelArgs
    from mlx_qwen3_embed.quant.distill_memory import memory_need

    shape = {k: v for k, v in QWEN3_06B.items() if k != "num_hidden_layers"} | {"vocab_size": 151669}
    plain = memory_need(ModelArgs(**shape, num_hidden_layers=28))
    assert plain["total"] == plain["runtime"] + plain["student"] + plain["targets"] + max(plain["teacher"],
                                                                                          plain["training"])
    recomputed = memory_need(ModelArgs(**shape, num_hidden_layers=28), checkpoint=True)
    assert recomputed["training"] < plain["training"] / 5 and recomputed["student"] == plain["student"]
    assert memory_need(ModelArgs(**shape, num_hidden_layers=4))["total"] < plain["total"]
    assert memory_need(ModelArgs(**shape, num_hidden_layers=28), batch_tokens=512)["training"] < plain["training"]
    assert memory_need(ModelArgs(**shape, num_hidden_layers=28), bits=8)["student"] > plain["student"]


def test_dwq_too_big_for_the_memory_is_refused_before_loading(hub_model, tmp_path, monkeypatch, runner):
    """MLX_QWEN3_EMBED_MEMORY stands for a small machine: --dwq is refused with the figures and the ways out,
    before any weight is read, and nothing is written."""
    from mlx_qwen3_embed.quant import quantize
    from mlx_qwen3_embed.cli import app

    monkeypatch.setenv("MLX_QWEN3_EMBED_MEMORY", "200MB")
    monkeypatch.setattr(quantize, "load_float", lambda *a, **k: pytest.fail("weights read before the memory check"))
    with pytest.raises(MemoryError, match=r"--dwq needs about .* GB .* only 0\.2 GB is available: use --checkpoint"):
        quantize.convert(str(hub_model), str(tmp_path / "out"), bits=4, group_size=32, dwq=True)
    result = runner.invoke(app, ["convert", str(hub_model), str(tmp_path / "out"), "--dwq"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: --dwq needs about")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    monkeypatch.setenv("MLX_QWEN3_EMBED_MEMORY", "64GB")  # the same conversion where it fits: the check passes
    need = quantize.plan_dwq_memory(hub_model, read_calibration(), 4, 32, 2048, False)
    assert need["total"] < 64 << 30
