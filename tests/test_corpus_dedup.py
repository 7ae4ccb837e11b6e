"""Identical texts across a whole corpus job are embedded once: the output equals the no-dedup result (every row
through Embedder.embed) in any window split, precision and after a SIGKILL; the duplicates never reach the model
(counted at the model call); two ranks under mlx.launch agree on them."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import mlx_qwen3_embed as mqe
from test_distributed import launch
from mlx_qwen3_embed.corpus import job as corpus
from mlx_qwen3_embed import precision as P
from mlx_qwen3_embed.corpus.job import embed_corpus
from mlx_qwen3_embed.corpus.dedup import Seen, digests

SCRIPT = str(Path(sys.executable).parent / "mlx-embed")
DISTINCT = [f"doc {i}: " + " ".join(["dedup", "window", "resume", "vector"][: i % 4 + 1]) * (i % 3 + 1)
            for i in range(60)]
# 150 rows of 60 texts: each repeats in later windows (and some within a window), in a scrambled order
ROWS = [DISTINCT[(i * 7) % 60] if i % 5 else DISTINCT[(i // 5) % 60] for i in range(150)]


@pytest.fixture(scope="module")
def embedder(hub_model):
    return mqe.load(str(hub_model), dtype="float32")


@pytest.fixture(scope="module")
def reference(embedder):
    """Every row embedded, duplicates included: the no-dedup result."""
    return embedder.embed(ROWS)


@pytest.fixture
def small_windows(monkeypatch):
    """16 texts a window: ROWS spans 10 windows, so most duplicates are of texts an earlier window wrote."""
    monkeypatch.setattr(corpus, "FIRST_WINDOW", 16)
    monkeypatch.setattr(corpus, "MAX_WINDOW", 16)


@pytest.fixture
def model_calls(embedder, monkeypatch):
    """Every sequence that reaches the model, in call order."""
    seen = []
    real = embedder._embed_sequences

    def counting(sequences, *args):
        seen.extend(tuple(s) for s in sequences)
        return real(sequences, *args)
    monkeypatch.setattr(embedder, "_embed_sequences", counting)
    return seen


def txt(path: Path, rows) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_duplicates_across_windows_equal_the_no_dedup_result_and_reach_the_model_once(
        embedder, reference, small_windows, model_calls, tmp_path):
    summary = embed_corpus(embedder, txt(tmp_path / "c.txt", ROWS), tmp_path / "v.npy")
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), reference, atol=1e-5)
    distinct = len(set(ROWS))
    assert len(model_calls) == len(set(model_calls)) == distinct  # each distinct text embedded exactly once
    assert (summary.unique, summary.duplicates) == (distinct, len(ROWS) - distinct)
    assert summary.tokens == sum(len(ids) for ids in embedder.tokenize(sorted(set(ROWS))))


def test_a_text_alone_equals_its_duplicate_rows(embedder, small_windows, tmp_path):
    embed_corpus(embedder, txt(tmp_path / "c.txt", ROWS), tmp_path / "v.npy")
    got = np.load(tmp_path / "v.npy")
    for text in sorted(set(ROWS), key=ROWS.count)[-5:]:  # the most repeated
        rows = [i for i, t in enumerate(ROWS) if t == text]
        assert len(rows) > 2 and rows[-1] - rows[0] > 16  # in several windows
        np.testing.assert_allclose(got[rows], np.tile(embedder.embed(text), (len(rows), 1)), atol=1e-5)


@pytest.mark.parametrize("precision", ["ubinary", "int8"])
def test_duplicates_in_compact_precisions_equal_quantizing_the_no_dedup_result(
        embedder, reference, small_windows, tmp_path, precision):
    ids = [f"r{i}" for i in range(len(ROWS))]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, ROWS)))
    embed_corpus(embedder, tmp_path / "c.jsonl", tmp_path / "v.parquet", id_field="id", precision=precision)
    table = pq.read_table(tmp_path / "v.parquet")
    ranges = json.loads(table.schema.metadata[b"mlx_qwen3_embed"])["ranges"]
    got = np.array(table.column("embedding").to_pylist())
    expected = P.quantize(reference, precision, None if ranges is None else np.array(ranges))
    assert table.column("id").to_pylist() == ids
    if precision == "int8":  # a bucket edge may fall between two float32 runs: at most one step apart
        assert np.abs(got - expected).max() <= 1 and (got == expected).mean() > 0.99
    else:
        np.testing.assert_array_equal(got, expected)


def test_resume_after_a_crash_copies_duplicates_of_the_finished_part_without_embedding_them(
        embedder, reference, small_windows, model_calls, tmp_path):
    source, output = txt(tmp_path / "c.txt", ROWS), tmp_path / "v.npy"
    windows = []

    def crash_after_three_windows(p):
        windows.append(p.done)
        if len(windows) == 3:
            raise KeyboardInterrupt("simulated crash")
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(embedder, source, output, progress=crash_after_three_windows)
    done = windows[-1]
    before = set(ROWS[:done])
    assert 0 < done < len(ROWS) and any(t in before for t in ROWS[done:])  # duplicates span the crash point
    model_calls.clear()
    summary = embed_corpus(embedder, source, output)
    rest = set(ROWS[done:]) - before
    assert summary.resumed == done and len(model_calls) == len(rest) == summary.unique
    assert summary.duplicates == len(ROWS) - done - len(rest)
    np.testing.assert_allclose(np.load(output), reference, atol=1e-5)


def test_sigkill_with_duplicates_spanning_the_kill_point_resumes_equal_to_the_no_dedup_result(
        hub_model, embedder, model_calls, tmp_path):
    # 3000 rows of 1000 texts, each 1000 rows apart: the texts of the first window come back after it
    texts = [f"{t} [{k}]" for k in range(17) for t in DISTINCT][:1000]
    rows = [texts[(i * 7) % 1000] for i in range(3000)]
    source, output = txt(tmp_path / "c.txt", rows), tmp_path / "v.npy"
    parts = tmp_path / ".v.npy.job" / "parts"
    job = subprocess.Popen([SCRIPT, "embed", "-m", str(hub_model), "--dtype", "float32", "--file", str(source),
                            "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (parts.is_dir() and any(parts.glob("*.npy"))) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL, job.stderr.read()
    assert not output.exists()
    done = int(sorted(parts.glob("*.npy"))[-1].stem.split("-")[1])
    assert 0 < done < len(rows)

    summary = embed_corpus(embedder, source, output)
    rest = set(rows[done:]) - set(rows[:done])
    assert summary.resumed == done and len(model_calls) == len(rest)
    assert summary.duplicates == len(rows) - done - len(rest)
    # each row's text alone (a text's vector does not depend on its batch): the no-dedup result, 3x cheaper
    np.testing.assert_allclose(np.load(output), embedder.embed(texts)[[(i * 7) % 1000 for i in range(3000)]],
                               atol=1e-5)


def test_two_ranks_agree_on_duplicates_and_equal_the_no_dedup_result(hub_model, embedder, tmp_path):
    texts = [f"{DISTINCT[j % 60]} #{j}" for j in range(250)]
    rows = [texts[(i * 3) % 250] for i in range(700)]  # 250 texts, then again in another order past window 1
    source = tmp_path / "c.jsonl"
    source.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(rows)))
    job = launch(hub_model, source, tmp_path / "ranks.npy", "--id-field", "id")
    log, _ = job.communicate(timeout=240)
    assert "Node with rank" not in log, log  # mlx.launch exits 0 even when a rank fails: its warning shows it
    distinct = len(set(rows))
    assert f"wrote {len(rows)} vectors" in log and f"{len(rows) - distinct} duplicate texts reused" in log, log
    np.testing.assert_allclose(np.load(tmp_path / "ranks.npy"), embedder.embed(rows), atol=1e-5)


def test_windows_of_repeats_only_double_so_a_kill_still_loses_little(embedder, monkeypatch, tmp_path):
    # a window of repeats takes no model time; sizing the next one from it would make it huge if its texts are new
    monkeypatch.setattr(corpus, "FIRST_WINDOW", 16)
    rows = DISTINCT[:16] + [DISTINCT[i % 16] for i in range(400)]
    done = []
    # window_seconds ~0: after a window with new texts the next is the floor of 16, after one of repeats it doubles
    embed_corpus(embedder, txt(tmp_path / "c.txt", rows), tmp_path / "v.npy", window_seconds=1e-9,
                 progress=lambda p: done.append(p.done))
    assert np.diff([0] + done).tolist() == [16, 16, 32, 64, 128, 160]


def test_seen_map_finds_first_rows_and_ignores_later_copies():
    seen = Seen()
    seen.add_records(digests(["a", "b", "a"]), 0)
    seen.add_records(digests(["c", "b"]), 3)
    np.testing.assert_array_equal(seen.find(digests(["b", "c", "a", "z"])), [1, 3, 0, -1])
    assert len(seen) == 3 and seen.keys.itemsize == 16 and seen.rows.itemsize == 8  # 24 bytes a distinct text
