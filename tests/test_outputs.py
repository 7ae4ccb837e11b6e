"""`mlx-embed embed -o`: one writer per format, chosen by the suffix (any case), the same for texts in arguments
as for corpus jobs: .npy, .jsonl and .parquet hold the library's vectors; an unknown suffix or a --format that
contradicts it is one `error:` line, checked before the model loads, and no file."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.cli import app

TEXTS = ["MLX runs on Apple silicon.", "The quick brown fox.", "快速的棕色狐狸", "a"]


@pytest.fixture(scope="module")
def embedder(mlx_model):
    return mqe.load(str(mlx_model))


def assert_one_error_line(result, *phrases):
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    for phrase in phrases:
        assert phrase in lines[0]


def test_parquet_output_holds_index_vectors_and_tokens(runner, mlx_model, embedder, tmp_path):
    result = runner.invoke(app, ["embed", *TEXTS, "-m", str(mlx_model), "--dim", "32", "-o", str(tmp_path / "v.parquet")])
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "v.parquet")
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), np.float32),
                                  embedder.embed(TEXTS, dim=32))
    assert table.column("index").to_pylist() == list(range(len(TEXTS)))
    assert table.column("tokens").to_pylist() == [len(ids) for ids in embedder.tokenize(TEXTS)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.parquet"]


def test_npy_output_equals_library(runner, mlx_model, embedder, tmp_path):
    result = runner.invoke(app, ["embed", *TEXTS, "-m", str(mlx_model), "-o", str(tmp_path / "v.npy")])
    assert result.exit_code == 0, result.output
    saved = np.load(tmp_path / "v.npy")
    assert saved.dtype == np.float32
    np.testing.assert_array_equal(saved, embedder.embed(TEXTS))


def test_jsonl_output_lines_are_index_embedding_tokens(runner, mlx_model, embedder, tmp_path):
    result = runner.invoke(app, ["embed", *TEXTS, "-m", str(mlx_model), "-o", str(tmp_path / "v.jsonl")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [list(row) for row in rows] == [["index", "embedding", "tokens"]] * len(TEXTS)
    np.testing.assert_array_equal(np.array([row["embedding"] for row in rows], np.float32), embedder.embed(TEXTS))


def test_uppercase_suffix_chooses_the_same_format(runner, mlx_model, embedder, tmp_path):
    result = runner.invoke(app, ["embed", *TEXTS, "-m", str(mlx_model), "-o", str(tmp_path / "V.NPY")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(tmp_path / "V.NPY"), embedder.embed(TEXTS))


def test_matching_format_is_accepted(runner, mlx_model, embedder, tmp_path):
    result = runner.invoke(app, ["embed", *TEXTS, "-m", str(mlx_model), "--format", "parquet",
                                 "-o", str(tmp_path / "v.parquet")])
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "v.parquet").num_rows == len(TEXTS)


@pytest.mark.parametrize("name", ["v.csv", "v.txt", "v"])
def test_unknown_suffix_is_refused_before_the_model_loads_and_writes_nothing(runner, tmp_path, name):
    result = runner.invoke(app, ["embed", *TEXTS, "-m", str(tmp_path / "no-model"), "-o", str(tmp_path / name)])
    assert_one_error_line(result, "writes .npy, .jsonl or .parquet", repr(name))
    assert list(tmp_path.iterdir()) == []


def test_format_contradicting_the_suffix_is_refused_and_writes_nothing(runner, tmp_path):
    result = runner.invoke(app, ["embed", *TEXTS, "-m", str(tmp_path / "no-model"), "--format", "npy",
                                 "-o", str(tmp_path / "c.jsonl")])
    assert_one_error_line(result, "--format npy does not match --output", "c.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_format_contradicting_a_corpus_jobs_suffix_is_refused(runner, tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(TEXTS))
    result = runner.invoke(app, ["embed", "-m", str(tmp_path / "no-model"), "-f", str(tmp_path / "c.txt"),
                                 "--format", "parquet", "-o", str(tmp_path / "v.npy")])
    assert_one_error_line(result, "--format parquet does not match --output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_unknown_format_and_binary_format_on_the_terminal_are_refused(runner, tmp_path):
    assert_one_error_line(runner.invoke(app, ["embed", "x", "-m", str(tmp_path), "--format", "csv"]),
                          "--format must be one of jsonl, npy, parquet, got 'csv'")
    assert_one_error_line(runner.invoke(app, ["embed", "x", "-m", str(tmp_path), "--format", "parquet"]),
                          "--format parquet needs --output")


def test_missing_output_folder_is_refused_before_the_model_loads(runner, tmp_path):
    result = runner.invoke(app, ["embed", "x", "-m", str(tmp_path / "no-model"), "-o", str(tmp_path / "no" / "v.npy")])
    assert_one_error_line(result, "cannot write", "does not exist")
