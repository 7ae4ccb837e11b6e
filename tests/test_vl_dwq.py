"""DWQ for Qwen3-VL (vl_distill.py): `mlx-embed convert SRC DST --bits 4 --dwq` on the tiny random Qwen3-VL
checkpoint beats round-to-nearest on held-out texts AND images that calibration never saw (mean 1 - cosine to
the float model cut by at least 15%, the worst item no worse), and writes the same layout as plain conversion."""

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.cli import app
from mlx_qwen3_embed.quant.distill import CALIBRATION
from mlx_qwen3_embed.quant.vl_distill import calibration_items, heldout_items, synthetic_images
from mlx_qwen3_embed.quant.vl_quantize import convert_vl
from vl_fixtures import vl_instruct_model, vl_model  # noqa: F401  (session fixtures)

SCRIPT = str(Path(sys.executable).parent / "mlx-embed")


@pytest.fixture(scope="module")
def held_out(vl_model):
    items = heldout_items()
    return items, mqe.load(str(vl_model)).embed(items)


@pytest.fixture(scope="module")
def rounded(vl_model, tmp_path_factory):
    dst = tmp_path_factory.mktemp("rtn") / "rtn"
    convert_vl(str(vl_model), str(dst), bits=4)
    return dst


@pytest.fixture(scope="module")
def distilled(vl_model, tmp_path_factory):
    """The program at its defaults: `mlx-embed convert SRC DST --bits 4 --dwq` (run as the program, which
    preloads an installed OpenBLAS: 300 steps in seconds rather than minutes on the reference BLAS)."""
    dst = tmp_path_factory.mktemp("dwq") / "dwq"
    result = subprocess.run([SCRIPT, "convert", str(vl_model), str(dst), "--bits", "4", "--dwq"], capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    return dst, result.stdout


@pytest.fixture(scope="module")
def small_calibration(tmp_path_factory) -> str:
    """Eight texts of the packaged set: enough for the runs that check behaviour, not gains."""
    path = tmp_path_factory.mktemp("cal") / "small.jsonl"
    path.write_text("\n".join(CALIBRATION.read_text(encoding="utf-8").splitlines()[:8]) + "\n", encoding="utf-8")
    return str(path)


def cosines(folder, items, reference) -> np.ndarray:
    return (mqe.load(str(folder)).embed(items) * reference).sum(1)


def test_heldout_items_share_nothing_with_calibration():
    calibration, held = calibration_items(), heldout_items()
    texts = lambda items: {i["text"] for i in items if "image" not in i}  # noqa: E731
    assert len(texts(held)) >= 60 and texts(held).isdisjoint(texts(calibration))
    images = lambda items: [np.asarray(i["image"]) for i in items if "image" in i]  # noqa: E731
    assert len(images(held)) >= 10 and len(images(calibration)) >= 30
    assert not any(a.shape == b.shape and (a == b).all() for a in images(held) for b in images(calibration))
    again = synthetic_images(3, "heldout-0")  # the same stream draws the same images
    assert all((np.asarray(a) == np.asarray(b)).all() for (a, _), (b, _) in zip(again, synthetic_images(3, "heldout-0")))


def test_dwq_beats_rounding_on_unseen_texts_and_images(held_out, rounded, distilled):
    items, reference = held_out
    before, after = cosines(rounded, items, reference), cosines(distilled[0], items, reference)
    assert "kept distilled" in distilled[1]
    assert (1 - after).mean() <= 0.85 * (1 - before).mean()
    assert after.min() >= before.min()
    image = np.array(["image" in i for i in items])
    assert (1 - after[image]).mean() < (1 - before[image]).mean()  # images gain too, not only texts


def test_distilled_folder_has_the_converted_layout(vl_model, rounded, distilled, held_out):
    """Same keys, shapes, dtypes and config as plain conversion (which mlx-vlm's layout test covers), scales
    and biases moved, the vision tower as converted; loads with and without dequantizing to the same vectors."""
    a, b = mx.load(str(rounded / "model.safetensors")), mx.load(str(distilled[0] / "model.safetensors"))
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {k: (v.shape, v.dtype) for k, v in b.items()}
    assert json.loads((rounded / "config.json").read_text()) == json.loads((distilled[0] / "config.json").read_text())
    moved = [k for k in a if not mx.array_equal(a[k], b[k])]
    assert moved and all(k.startswith("model.language_model.layers.") and k.endswith((".scales", ".biases"))
                         for k in moved)
    items = held_out[0][:4] + [i for i in held_out[0] if "image" in i][:2]
    np.testing.assert_allclose(mqe.load(str(distilled[0]), dequantize=False).embed(items),
                               mqe.load(str(distilled[0])).embed(items), atol=1e-4)


def test_no_steps_keeps_round_to_nearest(vl_model, rounded, small_calibration, tmp_path):
    result = convert_vl(str(vl_model), str(tmp_path / "q"), bits=4, dwq=True, steps=0, calibration=small_calibration,
                        images=6)
    assert result["dwq"].kept == "rounded"
    a, b = mx.load(str(rounded / "model.safetensors")), mx.load(str(tmp_path / "q" / "model.safetensors"))
    assert all(mx.array_equal(a[k], b[k]) for k in a)


def test_instruct_checkpoint_distils_and_loads(vl_instruct_model, small_calibration, tmp_path):
    """An instruct model's layout (untied, its own lm_head, which embeddings do not need): a short run ends
    with a report on its held-out split and a folder that loads with the pooling an instruct model is used with."""
    result = convert_vl(str(vl_instruct_model), str(tmp_path / "q"), bits=4, dwq=True, steps=10, images=6,
                        calibration=small_calibration)
    report = result["dwq"]
    assert report.steps == 10 and len(report.losses) == 10 and np.isfinite(report.losses).all()
    assert report.after_mean >= report.before_mean and report.holdout_texts > 0
    items = ["a text", {"text": "x", "image": np.zeros((64, 80, 3), np.uint8)}]
    vectors = mqe.load(str(tmp_path / "q"), pooling="mean").embed(items)
    assert vectors.shape == (2, 64) and np.isfinite(vectors).all()


def test_refusals_leave_nothing(runner, vl_model, tmp_path):
    result = runner.invoke(app, ["convert", str(vl_model), str(tmp_path / "r"), "--recipe", "mixed_4_6"])
    assert result.exit_code == 1 and "--recipe is for Qwen3 text models" in result.stderr
    bad = tmp_path / "cal.jsonl"
    bad.write_text('{"text": "a", "kind": "question"}\n')
    result = runner.invoke(app, ["convert", str(vl_model), str(tmp_path / "r"), "--dwq", "--calibration", str(bad)])
    assert result.exit_code == 1 and "line 1 has kind 'question'" in result.stderr
    assert not (tmp_path / "r").exists()
