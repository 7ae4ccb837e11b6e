"""Corpus jobs with a Qwen3-VL model run the same job as texts (corpus/job.py): a jsonl line with an image is an
item; --precision, --id-field, the .meta.json / .ids.jsonl sidecars, dedup of identical items, resume after a crash
and the --overwrite rule all hold; a text model given an image item, or a VL model given --prompt or --prompt-name,
is one `error:` line."""

import json

import numpy as np
import pytest
from PIL import Image

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed import precision as P
from mlx_qwen3_embed.cli import app
from mlx_qwen3_embed.corpus import job as corpus
from mlx_qwen3_embed.corpus.job import embed_corpus
from vl_fixtures import vl_model  # noqa: F401  (session fixture)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    paths = []
    for i, size in enumerate([(40, 56), (64, 64), (48, 32)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


@pytest.fixture(scope="module")
def records(images) -> list[dict]:
    """Texts, images, mixed items with an instruction, and repeats of each (dedup reuses their rows)."""
    distinct = [{"body": "a plain text"}, {"image": images[0]}, {"body": "a caption", "image": images[1]},
                {"body": "find it", "image": images[2], "instruction": "Find the photo"}, {"body": "another text"}]
    rows = distinct + [distinct[1], distinct[2], distinct[0]]
    return [dict(row, key=f"k{i}") for i, row in enumerate(rows)]


@pytest.fixture(scope="module")
def embedder(vl_model):
    return mqe.load(str(vl_model))


def items_of(rows: list[dict]) -> list:
    """What the library is given for each record: the text alone, or the item with its text as "text"."""
    items = []
    for row in rows:
        item = {k: v for k, v in row.items() if k in ("image", "video", "instruction")}
        items.append(item | ({"text": row["body"]} if "body" in row else {}) if item else row["body"])
    return items


@pytest.fixture(scope="module")
def reference(embedder, records):
    return embedder.embed(items_of(records))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def crash_after_first_window(p):
    raise KeyboardInterrupt("simulated crash")


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_int8_job_equals_the_library_quantized_with_the_first_windows_ranges(runner, vl_model, records, reference,
                                                                              tmp_path):
    source = write_jsonl(tmp_path / "items.jsonl", records)
    result = runner.invoke(app, ["embed", "-m", str(vl_model), "--file", str(source), "--output",
                                 str(tmp_path / "v.npy"), "--precision", "int8", "--text-field", "body",
                                 "--id-field", "key"])
    assert result.exit_code == 0, result.output
    codes = np.load(tmp_path / "v.npy")
    meta = json.loads((tmp_path / "v.npy.meta.json").read_text())
    assert codes.dtype == np.int8 and codes.shape == (len(records), 64) and meta["precision"] == "int8"
    ranges = np.array(meta["ranges"], np.float32)
    np.testing.assert_allclose(ranges, P.ranges(reference), atol=1e-5)  # one window: every vector fixed them
    expected = P.quantize(reference, "int8", ranges)
    assert np.abs(codes.astype(np.int16) - expected).max() <= 1 and (codes == expected).mean() > 0.99
    ids = [json.loads(line) for line in (tmp_path / "v.ids.jsonl").read_text().splitlines()]
    assert ids == [row["key"] for row in records]
    assert "3 duplicate texts reused" in result.stderr  # the repeated items took their first rows


def test_jsonl_output_with_ids_equals_the_library(embedder, records, reference, tmp_path):
    source = write_jsonl(tmp_path / "items.jsonl", records)
    summary = embed_corpus(embedder, source, tmp_path / "v.jsonl", text_field="body", id_field="key")
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [row["key"] for row in records]
    np.testing.assert_allclose(np.array([row["embedding"] for row in rows]), reference, atol=1e-5)
    assert summary.unique == 5 and summary.duplicates == 3


def test_relative_image_paths_are_read_from_the_current_folder(embedder, images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.open(images[0]).save(tmp_path / "here.png")
    write_jsonl(tmp_path / "items.jsonl", [{"text": "caption", "image": "here.png"}])
    embed_corpus(embedder, "items.jsonl", "v.npy")
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"),
                               embedder.embed([{"text": "caption", "image": images[0]}]), atol=1e-5)


def test_a_crashed_job_resumes_after_its_finished_windows(embedder, records, reference, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "FIRST_WINDOW", 3)
    monkeypatch.setattr(corpus, "MAX_WINDOW", 3)
    source = write_jsonl(tmp_path / "items.jsonl", records)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(embedder, source, tmp_path / "v.npy", text_field="body", progress=crash_after_first_window)
    assert not (tmp_path / "v.npy").exists()
    summary = embed_corpus(embedder, source, tmp_path / "v.npy", text_field="body")
    assert summary.resumed == 3 and summary.embedded == len(records) - 3
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), reference, atol=1e-5)


def test_a_finished_output_is_refused_without_overwrite(runner, vl_model, records, tmp_path):
    source = write_jsonl(tmp_path / "items.jsonl", records)
    common = ["embed", "-m", str(vl_model), "-f", str(source), "-o", str(tmp_path / "v.npy"), "--text-field", "body"]
    assert runner.invoke(app, common).exit_code == 0
    before = (tmp_path / "v.npy").read_bytes()
    assert one_error_line(runner.invoke(app, [*common, "--dim", "16"])) == (
        f"error: {tmp_path / 'v.npy'} exists: pass --overwrite to replace it")
    assert (tmp_path / "v.npy").read_bytes() == before
    replaced = runner.invoke(app, [*common, "--dim", "16", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert np.load(tmp_path / "v.npy").shape == (len(records), 16)


def test_a_text_model_given_an_image_item_is_one_error_line(runner, hub_model, images, tmp_path):
    source = write_jsonl(tmp_path / "items.jsonl", [{"text": "fine"}, {"text": "x", "image": images[0]}])
    job = one_error_line(runner.invoke(app, ["embed", "-m", str(hub_model), "-f", str(source),
                                             "-o", str(tmp_path / "v.npy")]))
    assert "id 1" in job and "text-only Qwen3 model" in job
    assert not (tmp_path / "v.npy").exists()
    listed = one_error_line(runner.invoke(app, ["embed", "-m", str(hub_model), "-f", str(source)]))
    assert "texts[1] is a dict" in listed and "text-only Qwen3 model" in listed


@pytest.mark.parametrize("flag, named", [(["--prompt", "Query: "], "prompt (a raw prefix)"),
                                         (["--prompt-name", "query"], "prompt_name")])
def test_text_model_prompts_on_a_vl_model_are_one_error_line(runner, vl_model, tmp_path, flag, named):
    assert named in one_error_line(runner.invoke(app, ["embed", "a text", "-m", str(vl_model), *flag]))
    source = write_jsonl(tmp_path / "items.jsonl", [{"text": "a text"}])
    assert named in one_error_line(runner.invoke(app, ["embed", "-m", str(vl_model), "-f", str(source),
                                                       "-o", str(tmp_path / "v.npy"), *flag]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.jsonl"]


def test_two_ranks_of_a_vl_job_write_the_single_process_output(vl_model, embedder, records, tmp_path):
    """Qwen3-VL items under `mlx.launch -n 2 --backend ring` (loopback): rank 0's one output equals one process's."""
    import pyarrow.parquet as pq

    from test_distributed import launch

    rows = [dict(row, key=f"{row['key']}-{n}") for n in range(8) for row in records]  # repeats across ranks too
    source = write_jsonl(tmp_path / "items.jsonl", rows)
    single = embed_corpus(embedder, source, tmp_path / "single.parquet", text_field="body", id_field="key")
    job = launch(vl_model, source, tmp_path / "ranks.parquet", "--text-field", "body", "--id-field", "key")
    log, _ = job.communicate(timeout=240)
    assert "Node with rank" not in log, log
    assert f"wrote {single.count} vectors" in log
    one, two = pq.read_table(tmp_path / "single.parquet"), pq.read_table(tmp_path / "ranks.parquet")
    assert two.column("id").to_pylist() == one.column("id").to_pylist()
    np.testing.assert_allclose(np.array(two.column("embedding").to_pylist()),
                               np.array(one.column("embedding").to_pylist()), atol=1e-5)
