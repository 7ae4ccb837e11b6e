"""Corpus jobs on a tiny checkpoint: outputs equal Embedder.embed on the same texts in every format, a job killed
with SIGKILL resumes without redoing finished windows, changed jobs and bad input are refused with messages that
name the problem, precisions follow sentence-transformers' semantics with ranges kept beside the output."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed import precision as P
from mlx_qwen3_embed.cli import app
from mlx_qwen3_embed.corpus.job import embed_corpus

SCRIPT = str(Path(sys.executable).parent / "mlx-embed")
TEXTS = [f"passage {i} on " + " ".join(["retrieval", "vectors", "MLX", "Qwen"][: i % 4 + 1]) * (i % 5 + 1)
         for i in range(300)]


@pytest.fixture(scope="module")
def embedder(hub_model):
    return mqe.load(str(hub_model), dtype="float32")


@pytest.fixture(scope="module")
def reference(embedder):
    return embedder.embed(TEXTS)


def write_jsonl(path: Path, texts, ids=None) -> Path:
    ids = range(len(texts)) if ids is None else ids
    path.write_text("".join(json.dumps({"doc": i, "body": t}) + "\n" for i, t in zip(ids, texts)), encoding="utf-8")
    return path


def ids_of(output: Path) -> list:
    if output.suffix == ".npy":
        return [json.loads(line) for line in output.with_suffix(".ids.jsonl").read_text().splitlines()]
    if output.suffix == ".jsonl":
        return [json.loads(line)["id"] for line in output.read_text().splitlines()]
    return pq.read_table(output).column("id").to_pylist()


def vectors_of(output: Path) -> np.ndarray:
    if output.suffix == ".npy":
        return np.load(output)
    if output.suffix == ".jsonl":
        return np.array([json.loads(line)["embedding"] for line in output.read_text().splitlines()])
    return np.array(pq.read_table(output).column("embedding").to_pylist())


def crash_after_first_window(p):
    raise KeyboardInterrupt("simulated crash")


def cli(*args, timeout=120):
    return subprocess.run([SCRIPT, "embed", *args], capture_output=True, text=True, timeout=timeout)


# --- outputs equal the library ----------------------------------------------------------------------------

@pytest.mark.parametrize("out", ["v.npy", "v.jsonl", "v.parquet"])
def test_jsonl_job_equals_embed_with_ids_in_order(embedder, reference, tmp_path, out):
    ids = [f"doc-{i}" for i in range(len(TEXTS))][::-1]
    source = write_jsonl(tmp_path / "c.jsonl", TEXTS, ids)
    summary = embed_corpus(embedder, source, tmp_path / out, text_field="body", id_field="doc")
    np.testing.assert_allclose(vectors_of(tmp_path / out), reference, atol=1e-5)
    assert ids_of(tmp_path / out) == ids and summary.count == len(TEXTS)
    assert not (tmp_path / f".{out}.job").exists()  # the job's folder goes once the output stands


def test_txt_to_parquet_ids_are_line_numbers_and_blank_lines_are_skipped_with_a_count(embedder, reference, tmp_path):
    lines = TEXTS[:5] + ["", "   "] + TEXTS[5:10]
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = embed_corpus(embedder, tmp_path / "c.txt", tmp_path / "v.parquet")
    assert summary.skipped == 2 and summary.count == 10
    assert ids_of(tmp_path / "v.parquet") == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11]
    got = vectors_of(tmp_path / "v.parquet")
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, reference[:10], atol=1e-5)


def test_parquet_input_with_id_column(embedder, reference, tmp_path):
    pq.write_table(pa.table({"key": list(range(100, 100 + len(TEXTS))), "text": TEXTS}), tmp_path / "c.parquet",
                   row_group_size=64)
    embed_corpus(embedder, tmp_path / "c.parquet", tmp_path / "v.jsonl", id_field="key")
    np.testing.assert_allclose(vectors_of(tmp_path / "v.jsonl"), reference, atol=1e-5)
    assert ids_of(tmp_path / "v.jsonl") == list(range(100, 100 + len(TEXTS)))


def test_identical_texts_are_embedded_once_and_share_the_vector(embedder, tmp_path):
    texts = TEXTS[:20] * 3
    (tmp_path / "c.txt").write_text("\n".join(texts), encoding="utf-8")
    summary = embed_corpus(embedder, tmp_path / "c.txt", tmp_path / "v.npy")
    got = np.load(tmp_path / "v.npy")
    assert summary.unique == 20 and got.shape[0] == 60
    np.testing.assert_array_equal(got[:20], got[20:40])
    np.testing.assert_allclose(got[:20], embedder.embed(TEXTS[:20]), atol=1e-5)


def test_options_reach_the_vectors(embedder, tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(TEXTS[:30]), encoding="utf-8")
    embed_corpus(embedder, tmp_path / "c.txt", tmp_path / "v.npy", dim=32, prompt_name="query")
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), embedder.embed(TEXTS[:30], dim=32, prompt_name="query"),
                               atol=1e-5)


# --- resumable --------------------------------------------------------------------------------------------

def test_sigkill_part_way_then_rerun_equals_uninterrupted_and_skips_the_finished_part(hub_model, embedder, tmp_path):
    texts = [f"{t} ({i})" for i, t in enumerate(TEXTS * 10)]  # 3000 distinct texts: several seconds of work
    (tmp_path / "c.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    output, parts = tmp_path / "v.npy", tmp_path / ".v.npy.job" / "parts"
    job = subprocess.Popen([SCRIPT, "embed", "-m", str(hub_model), "--dtype", "float32", "--file",
                            str(tmp_path / "c.txt"), "--output", str(output)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (parts.is_dir() and any(parts.glob("*.npy"))) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL, job.stderr.read()
    assert not output.exists()  # nothing incomplete at the output path
    finished = sorted(parts.glob("*.npy"))
    done = int(finished[-1].stem.split("-")[1])
    assert 0 < done < len(texts)
    stamps = {p.name: p.stat().st_mtime_ns for p in finished}

    seen = []

    def watch(p):  # the finished parts are still the killed run's files: not redone
        seen.append({p.name: p.stat().st_mtime_ns for p in finished if p.exists()})
    summary = embed_corpus(embedder, tmp_path / "c.txt", output, progress=watch)
    assert summary.resumed == done and summary.embedded == len(texts) - done
    assert seen[0] == stamps
    # only the rest went through the model
    assert summary.tokens == sum(len(ids) for ids in embedder.tokenize(texts[done:]))
    np.testing.assert_allclose(np.load(output), embedder.embed(texts), atol=1e-5)
    assert ids_of(output) == list(range(len(texts)))


def test_finished_output_is_refused_without_overwrite(hub_model, tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(TEXTS[:10]), encoding="utf-8")
    common = ["-m", str(hub_model), "--file", str(tmp_path / "c.txt"), "--output", str(tmp_path / "v.npy")]
    assert cli(*common).returncode == 0
    before = (tmp_path / "v.npy").read_bytes()
    refused = cli(*common, "--dim", "16")
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'v.npy'} exists: pass --overwrite to replace it"]
    assert (tmp_path / "v.npy").read_bytes() == before
    replaced = cli(*common, "--dim", "16", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert np.load(tmp_path / "v.npy").shape == (10, 16)


def test_resume_with_other_options_is_refused_saying_which(embedder, tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(embedder, tmp_path / "c.txt", tmp_path / "v.npy", progress=crash_after_first_window)
    with pytest.raises(ValueError, match="cannot resume with different options: dim was 64, now 32"):
        embed_corpus(embedder, tmp_path / "c.txt", tmp_path / "v.npy", dim=32)
    with pytest.raises(ValueError, match="precision was 'float32', now 'int8'"):
        embed_corpus(embedder, tmp_path / "c.txt", tmp_path / "v.npy", precision="int8")
    assert not (tmp_path / "v.npy").exists()


def test_resume_with_a_changed_input_is_refused(embedder, tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(embedder, tmp_path / "c.txt", tmp_path / "v.npy", progress=crash_after_first_window)
    (tmp_path / "c.txt").write_text("\n".join(TEXTS[::-1]), encoding="utf-8")
    with pytest.raises(ValueError, match="cannot resume: the input's content changed"):
        embed_corpus(embedder, tmp_path / "c.txt", tmp_path / "v.npy")


# --- precision --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["ubinary", "binary"])
def test_binary_is_packed_sign_bits_of_the_float32_output(embedder, reference, tmp_path, precision):
    source = write_jsonl(tmp_path / "c.jsonl", TEXTS)
    embed_corpus(embedder, source, tmp_path / "v.npy", text_field="body", precision=precision)
    packed = np.packbits(reference > 0, axis=-1)
    expected = packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    got = np.load(tmp_path / "v.npy")
    assert got.dtype == expected.dtype and got.shape == (len(TEXTS), 8)
    np.testing.assert_array_equal(got, expected)


def test_int8_round_trips_within_one_step_with_the_ranges_kept_beside_the_output(embedder, reference, tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    embed_corpus(embedder, tmp_path / "c.txt", tmp_path / "v.npy", precision="int8")
    codes = np.load(tmp_path / "v.npy")
    meta = json.loads((tmp_path / "v.npy.meta.json").read_text())
    assert codes.dtype == np.int8 and meta["precision"] == "int8"
    ranges = np.array(meta["ranges"], dtype=np.float32)
    step = (ranges[1] - ranges[0]) / 255
    inside = (reference >= ranges[0]) & (reference <= ranges[1])  # the first window fixed the ranges
    error = np.abs(P.dequantize(codes, "int8", ranges) - reference)
    assert inside.mean() > 0.9 and (error[inside] <= np.broadcast_to(step, error.shape)[inside] + 1e-6).all()


def test_int8_resumed_job_uses_the_first_runs_ranges(embedder, tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(TEXTS * 2), encoding="utf-8")
    embed_corpus(embedder, tmp_path / "c.txt", tmp_path / "whole.npy", precision="uint8")
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(embedder, tmp_path / "c.txt", tmp_path / "v.npy", precision="uint8",
                     progress=crash_after_first_window)
    summary = embed_corpus(embedder, tmp_path / "c.txt", tmp_path / "v.npy", precision="uint8")
    assert summary.resumed > 0
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), np.load(tmp_path / "whole.npy"))


def test_embed_precision_matches_precision_module(embedder, reference):
    np.testing.assert_array_equal(embedder.embed(TEXTS, precision="ubinary"), np.packbits(reference > 0, axis=-1))
    assert embedder.embed(TEXTS[0], precision="float16").dtype == np.float16
    ranges = P.ranges(reference)
    np.testing.assert_array_equal(embedder.embed(TEXTS[:3], precision="uint8", ranges=ranges),
                                  P.quantize(reference[:3], "uint8", ranges))
    with pytest.raises(ValueError, match="precision must be one of"):
        embedder.embed("x", precision="int4")


# --- vector cache -----------------------------------------------------------------------------------------

def test_cache_reuses_vectors_and_counts_hits(hub_model, reference):
    cached = mqe.load(str(hub_model), dtype="float32", cache_size=8)
    first = cached.embed(TEXTS[:5])
    again = cached.embed(TEXTS[3:8])
    assert (cached.cache.hits, cached.cache.misses) == (2, 8)
    np.testing.assert_allclose(first, reference[:5], atol=1e-5)
    np.testing.assert_allclose(again, reference[3:8], atol=1e-5)
    cached.embed(TEXTS[3:5], dim=16)  # other options: not the same vectors
    assert cached.cache.hits == 2 and len(cached.cache._vectors) == 8  # bounded, oldest dropped
    with pytest.raises(ValueError, match="cache_size must be a positive int"):
        mqe.load(str(hub_model), cache_size=-1)


def test_server_metrics_show_cache_hits_and_misses(hub_model):
    from fastapi.testclient import TestClient

    from mlx_qwen3_embed.serve import create_app

    with TestClient(create_app(mqe.load(str(hub_model), cache_size=16))) as client:
        for _ in range(2):
            assert client.post("/v1/embeddings", json={"input": ["a b", "c d"], "model": "m"}).status_code == 200
        metrics = client.get("/metrics").text
    assert "mlx_embed_cache_hits_total 2.0" in metrics and "mlx_embed_cache_misses_total 2.0" in metrics


# --- bad input: one message that names it; nothing written -------------------------------------------------

def assert_error(tmp_path, error, match, call):
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(error, match=match):
        call()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no job folder


def test_missing_input_file(embedder, tmp_path):
    assert_error(tmp_path, FileNotFoundError, "cannot read .*nope.jsonl: No such file",
                 lambda: embed_corpus(embedder, tmp_path / "nope.jsonl", tmp_path / "v.npy"))


def test_input_that_is_a_folder(embedder, tmp_path):
    (tmp_path / "dir.txt").mkdir()
    assert_error(tmp_path, (IsADirectoryError, FileNotFoundError), "dir.txt",
                 lambda: embed_corpus(embedder, tmp_path / "dir.txt", tmp_path / "v.npy"))


def test_jsonl_line_that_is_not_json_names_the_line(embedder, tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{"text": "fine"}\n{not json\n')
    assert_error(tmp_path, ValueError, "c.jsonl line 3 is not JSON",
                 lambda: embed_corpus(embedder, tmp_path / "c.jsonl", tmp_path / "v.npy"))


def test_jsonl_line_without_the_text_field_names_the_line(embedder, tmp_path):
    write_jsonl(tmp_path / "c.jsonl", TEXTS[:4])
    assert_error(tmp_path, ValueError, "c.jsonl line 1 has no non-empty string 'text' field",
                 lambda: embed_corpus(embedder, tmp_path / "c.jsonl", tmp_path / "v.npy"))


def test_jsonl_empty_text_names_the_line(embedder, tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{"text": ""}\n')
    assert_error(tmp_path, ValueError, "c.jsonl line 2 has no non-empty string 'text'",
                 lambda: embed_corpus(embedder, tmp_path / "c.jsonl", tmp_path / "v.npy"))


def test_duplicate_ids_are_refused_naming_the_id(embedder, tmp_path):
    write_jsonl(tmp_path / "c.jsonl", TEXTS[:6], ids=["a", "b", "c", "d", "b", "e"])
    assert_error(tmp_path, ValueError, "id 'b' appears twice \\(records 1 and 4\\)",
                 lambda: embed_corpus(embedder, tmp_path / "c.jsonl", tmp_path / "v.npy", text_field="body",
                                      id_field="doc"))


def test_parquet_without_the_column_lists_the_columns(embedder, tmp_path):
    pq.write_table(pa.table({"body": TEXTS[:3]}), tmp_path / "c.parquet")
    assert_error(tmp_path, ValueError, "has no column 'text': its columns are body",
                 lambda: embed_corpus(embedder, tmp_path / "c.parquet", tmp_path / "v.npy"))


def test_empty_file_and_unknown_output_suffix(embedder, tmp_path):
    (tmp_path / "c.txt").write_text("\n\n")
    assert_error(tmp_path, ValueError, "no texts in .*c.txt",
                 lambda: embed_corpus(embedder, tmp_path / "c.txt", tmp_path / "v.npy"))
    assert_error(tmp_path, ValueError, "writes .npy, .jsonl or .parquet, got 'v.csv'",
                 lambda: embed_corpus(embedder, tmp_path / "c.txt", tmp_path / "v.csv"))


def test_cli_bad_jsonl_is_one_error_line_and_writes_nothing(hub_model, tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    result = CliRunner().invoke(app, ["embed", "-m", str(hub_model), "-f", str(tmp_path / "c.jsonl"),
                                      "-o", str(tmp_path / "v.parquet")])
    assert result.exit_code == 1 and result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'c.jsonl'} line 2 has no non-empty string 'text' field: write {{\"text\": \"...\"}}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


def test_cli_progress_line_when_asked(hub_model, tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(TEXTS[:40]), encoding="utf-8")
    common = ["embed", "-m", str(hub_model), "-f", str(tmp_path / "c.txt")]
    shown = CliRunner().invoke(app, [*common, "-o", str(tmp_path / "a.jsonl"), "--progress"])
    quiet = CliRunner().invoke(app, [*common, "-o", str(tmp_path / "b.jsonl")])
    assert shown.exit_code == 0 and quiet.exit_code == 0, shown.output + quiet.output
    assert "embedding 40/40 (100.0%)" in shown.stderr and "texts/s" in shown.stderr and "ETA" in shown.stderr
    assert "embedding" not in quiet.stderr and "wrote 40 vectors" in quiet.stderr
