"""Faults and bad input: damaged model files, a full disk, interrupted jobs, a reader that goes away, bytes that
are not UTF-8, outputs that exist, blank lines, usage mistakes, and what the server calls its models. Each is a
built-in exception naming the file and the fix (the library) or one `error:` line and exit code 1 (the CLI)."""

import errno
import importlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed import atomic
from mlx_qwen3_embed.checkpoint.weights import read_header
from mlx_qwen3_embed.cli import app
from mlx_qwen3_embed.corpus import job as corpus_job
from mlx_qwen3_embed.serve import create_app

SCRIPT = str(Path(sys.executable).parent / "mlx-embed")
TEXTS = [f"text number {i} about {w}" for i, w in enumerate(["MLX", "foxes", "Paris", "rain"] * 80)]  # 320


def one_error_line(result, *phrases) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "[Errno" not in lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def damaged(hub_model, tmp_path) -> Path:
    """A copy of the tiny checkpoint, to break."""
    return Path(shutil.copytree(hub_model, tmp_path / "Qwen3-Embedding-tiny"))


@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write after the first `allowed` fails as a full disk does (OSError ENOSPC on write)."""
    real = os.fdopen
    state = {"allowed": 0}

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        state["allowed"] -= 1
        return f if state["allowed"] >= 0 else Full(f)

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)
    return state


# --- damaged or missing model files --------------------------------------------------------------------------

def test_a_cut_short_safetensors_names_the_file_its_size_and_the_fix(damaged):
    weights = damaged / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ValueError, match=rf"model.safetensors is truncated: {size // 2} of {size} bytes .*"
                                         r"delete it and download"):
        mqe.load(str(damaged))


def test_a_zero_byte_safetensors_says_it_is_empty(damaged):
    (damaged / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"model.safetensors is empty \(0 bytes\).*download"):
        mqe.load(str(damaged))


def test_a_truncated_file_in_the_hub_cache_says_which_blob_to_delete(damaged, tmp_path):
    repo = tmp_path / "hub" / "models--Qwen--Qwen3-Embedding-tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "abc").mkdir(parents=True)
    blob = repo / "blobs" / "0123"
    whole = (damaged / "model.safetensors").read_bytes()
    cut = 8 + int.from_bytes(whole[:8], "little") + 100  # the header and a little data
    blob.write_bytes(whole[:cut])
    (repo / "snapshots" / "abc" / "model.safetensors").symlink_to(blob)
    with pytest.raises(ValueError, match=rf"truncated: {cut} of {len(whole)} bytes.*Hugging Face cache \(rm .*blobs/0123 .*"
                                         r"download Qwen/Qwen3-Embedding-tiny again"):
        read_header(repo / "snapshots" / "abc" / "model.safetensors")


def test_cli_on_a_truncated_checkpoint_is_one_error_line(runner, damaged):
    with open(damaged / "model.safetensors", "r+b") as f:
        f.truncate(4096)
    one_error_line(runner.invoke(app, ["embed", "hello", "-m", str(damaged)]), "model.safetensors is truncated")


def test_info_flags_a_truncated_shard_instead_of_printing_a_table(runner, damaged):
    with open(damaged / "model.safetensors", "r+b") as f:
        f.truncate(4096)
    result = runner.invoke(app, ["info", str(damaged)])
    one_error_line(result, "model.safetensors is truncated: 4096 of")
    assert result.stdout == ""


def test_a_tokenizer_json_that_is_not_json_names_the_file(runner, damaged):
    (damaged / "tokenizer.json").write_text("<html>rate limited</html>")
    with pytest.raises(ValueError, match=r"tokenizer.json is not JSON .*download it again"):
        mqe.load(str(damaged))
    one_error_line(runner.invoke(app, ["embed", "hello", "-m", str(damaged)]), "tokenizer.json is not JSON")


def test_a_config_json_that_is_not_json_names_the_file(runner, damaged):
    (damaged / "config.json").write_text("")
    one_error_line(runner.invoke(app, ["embed", "hello", "-m", str(damaged)]), "config.json is not JSON")


# --- a full disk -----------------------------------------------------------------------------------------------

def test_full_disk_is_no_space_left_naming_the_file_and_leaves_nothing(tmp_path, full_disk):
    with pytest.raises(OSError, match=r"no space left on device writing .*v.npy") as caught:
        atomic.write_file(tmp_path / "v.npy", lambda f: f.write(b"x" * 100))
    assert caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_numpys_short_write_is_read_as_a_full_disk(tmp_path):
    def short(f):
        raise OSError("512000 requested and 262112 written")

    with pytest.raises(OSError, match="no space left on device writing"):
        atomic.write_file(tmp_path / "v.npy", short)
    assert list(tmp_path.iterdir()) == []


def test_cli_output_on_a_full_disk_is_one_line_and_no_file(runner, mlx_model, tmp_path, full_disk):
    out = tmp_path / "v.npy"
    result = runner.invoke(app, ["embed", "a", "b", "-m", str(mlx_model), "-o", str(out)])
    one_error_line(result, f"no space left on device writing {out}")
    assert list(tmp_path.iterdir()) == []


def test_job_on_a_full_disk_keeps_its_finished_windows_and_resumes(runner, hub_model, tmp_path, full_disk):
    (tmp_path / "c.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    full_disk["allowed"] = 2  # state.json and the first window's part
    args = ["embed", "-m", str(hub_model), "--file", str(tmp_path / "c.txt"), "--output", str(tmp_path / "v.npy")]
    result = runner.invoke(app, args)
    one_error_line(result, "no space left on device", f"256 of {len(TEXTS)} records are done and kept",
                   "run the same command again to resume")
    assert not (tmp_path / "v.npy").exists()
    assert len(list((tmp_path / ".v.npy.job" / "parts").glob("*.npy"))) == 1
    full_disk["allowed"] = 10**6  # space freed
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert "256 done by an earlier run" in resumed.stderr
    assert np.load(tmp_path / "v.npy").shape == (len(TEXTS), 64)


# --- convert checks its destination and its flags before loading ----------------------------------------------

@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if convert opens its source."""
    import mlx_qwen3_embed.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "open_checkpoint", lambda *a, **k: pytest.fail("the source was opened"))


def test_convert_dwq_to_an_existing_destination_is_refused_before_loading(runner, hub_model, tmp_path, no_loading):
    (tmp_path / "taken").mkdir()
    result = runner.invoke(app, ["convert", str(hub_model), str(tmp_path / "taken"), "--dwq"])
    one_error_line(result, "taken already exists")


def test_convert_dwq_to_an_unwritable_folder_is_refused_before_loading(runner, hub_model, tmp_path, no_loading,
                                                                       monkeypatch):
    convert = importlib.import_module("mlx_qwen3_embed.cli.convert")
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(convert.os, "access", lambda path, mode: False if Path(path) == locked else real(path, mode))
    result = runner.invoke(app, ["convert", str(hub_model), str(locked / "deep" / "out"), "--dwq"])
    one_error_line(result, f"no permission to write in {locked}")


def test_convert_refuses_dwq_settings_without_dwq(runner, hub_model, tmp_path, no_loading):
    result = runner.invoke(app, ["convert", str(hub_model), str(tmp_path / "out"), "--steps", "5"])
    one_error_line(result, "--steps only applies with --dwq")
    assert not (tmp_path / "out").exists()



def test_convert_to_a_disk_without_room_is_refused_before_loading(runner, hub_model, tmp_path, monkeypatch):
    """The output's size (its parameters at the bits asked, with scales and biases) against the disk's free space,
    before any weight is read."""
    import mlx_qwen3_embed.quant.quantize as quantize
    from mlx_qwen3_embed.checkpoint.summary import summary

    convert = importlib.import_module("mlx_qwen3_embed.cli.convert")
    monkeypatch.setattr(quantize, "convert", lambda *a, **k: pytest.fail("weights were read"))
    need = int(summary(hub_model)["parameters"] * (4 + 32 / 64) / 8)
    monkeypatch.setattr(convert.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12, need - 1))
    result = runner.invoke(app, ["convert", str(hub_model), str(tmp_path / "out"), "--bits", "4"])
    one_error_line(result, f"not enough space for {tmp_path / 'out'}")
    assert not (tmp_path / "out").exists()


# --- the command line ------------------------------------------------------------------------------------------

def test_a_reader_that_goes_away_ends_embed_quietly(mlx_model):
    process = subprocess.Popen([SCRIPT, "embed", "-m", str(mlx_model)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write("\n".join(TEXTS * 2).encode())
    process.stdin.close()
    assert json.loads(process.stdout.readline())["index"] == 0
    process.stdout.close()  # `| head -1`
    assert process.wait(120) in (0, 141)
    stderr = process.stderr.read().decode()
    assert "error" not in stderr and "Traceback" not in stderr and "Exception" not in stderr, stderr


def test_stdin_that_is_not_utf8_names_the_line(runner, mlx_model):
    result = runner.invoke(app, ["embed", "-m", str(mlx_model)], input=b"fine\nalso fine\nbad \xff byte\n")
    one_error_line(result, "stdin: it is not UTF-8 at line 3")


def test_a_file_that_is_not_utf8_names_the_line(runner, mlx_model, hub_model, tmp_path):
    (tmp_path / "c.txt").write_bytes(b"fine\n\xc3(\n")
    one_error_line(runner.invoke(app, ["embed", "-m", str(mlx_model), "--file", str(tmp_path / "c.txt")]),
                   "not UTF-8 at line 2")
    job = ["embed", "-m", str(hub_model), "--file", str(tmp_path / "c.txt"), "-o", str(tmp_path / "v.npy")]
    one_error_line(runner.invoke(app, job), "not UTF-8 at line 2")


def test_ctrl_c_in_a_job_says_what_is_kept_and_how_to_resume(runner, hub_model, tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    real = corpus_job.embed_corpus

    def interrupted(*args, progress, **kwargs):
        def stop(p):
            progress(p)
            raise KeyboardInterrupt
        return real(*args, progress=stop, **kwargs)

    monkeypatch.setattr(corpus_job, "embed_corpus", interrupted)
    args = ["embed", "-m", str(hub_model), "--file", str(tmp_path / "c.txt"), "--output", str(tmp_path / "v.npy")]
    result = runner.invoke(app, args)
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines() == [
        f"stopped by Ctrl-C; 256 of {len(TEXTS)} records are done; finished windows are kept beside "
        f"{tmp_path / 'v.npy'}: run the same command again to resume"]
    monkeypatch.setattr(corpus_job, "embed_corpus", real)
    assert "256 done by an earlier run" in runner.invoke(app, args).stderr


def test_argument_mode_output_is_not_replaced_without_overwrite(runner, mlx_model, tmp_path):
    out = tmp_path / "v.npy"
    out.write_bytes(b"precious")
    one_error_line(runner.invoke(app, ["embed", "a", "-m", str(mlx_model), "-o", str(out)]),
                   f"{out} exists: pass --overwrite")
    assert out.read_bytes() == b"precious"
    result = runner.invoke(app, ["embed", "a", "-m", str(mlx_model), "-o", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert np.load(out).shape == (1, 64)


def test_overwrite_without_output_is_refused(runner, mlx_model):
    one_error_line(runner.invoke(app, ["embed", "a", "-m", str(mlx_model), "--overwrite"]), "give --output")


def test_argument_mode_output_gets_the_umask_permissions(runner, mlx_model, tmp_path):
    previous = os.umask(0o027)
    try:
        result = runner.invoke(app, ["embed", "a", "-m", str(mlx_model), "-o", str(tmp_path / "v.jsonl")])
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "v.jsonl").stat().st_mode) == 0o640


def test_blank_lines_from_stdin_are_skipped_and_counted(runner, mlx_model):
    embedder = mqe.load(str(mlx_model))
    result = runner.invoke(app, ["embed", "-m", str(mlx_model)], input="first\n\nsecond\n   \n")
    assert result.exit_code == 0, result.output
    got = np.array([json.loads(line)["embedding"] for line in result.stdout.splitlines()], np.float32)
    np.testing.assert_array_equal(got, embedder.embed(["first", "second"]))
    assert "skipped 2 blank lines of stdin (line 2, 4)" in result.stderr


def test_blank_arguments_are_skipped_too_and_all_blank_is_an_error(runner, mlx_model):
    result = runner.invoke(app, ["embed", "a", "", "-m", str(mlx_model)])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 1
    assert "skipped 1 blank argument" in result.stderr
    one_error_line(runner.invoke(app, ["embed", "-m", str(mlx_model)], input="\n \n"), "no texts in stdin")


@pytest.mark.parametrize("command", ["info", "verify"])
def test_info_and_verify_take_the_model_as_a_flag_too(runner, mlx_model, command):
    extra = ["--expected", "[[1, 0], [0, 1]]", "--tolerance", "0.99"] if command == "verify" else []
    positional = runner.invoke(app, [command, str(mlx_model), *extra])
    flagged = runner.invoke(app, [command, "--model", str(mlx_model), *extra])
    short = runner.invoke(app, [command, "-m", str(mlx_model), *extra])
    assert positional.stdout == flagged.stdout == short.stdout and positional.stdout, positional.output
    one_error_line(runner.invoke(app, [command, "a/b", "--model", "c/d"]), "two models given")


def test_top_level_help_lists_every_command(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in app.registered_commands:
        assert command.callback.__name__ in result.stdout


def test_output_help_names_every_format(runner):
    help_text = runner.invoke(app, ["embed", "--help"], terminal_width=200).stdout
    assert all(suffix in help_text for suffix in ("npy", "jsonl", "parquet"))


@pytest.mark.parametrize("args, phrase", [
    (["embed", "x", "--dim", "abc"], "--dim"), (["embed", "--bogus"], "No such option: --bogus"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"), (["convert"], "Missing argument")])
def test_usage_errors_are_one_error_line_and_exit_1(runner, args, phrase):
    one_error_line(runner.invoke(app, args), phrase, "--help")


def test_verify_names_expected_when_it_is_not_a_matrix(runner, tmp_path):
    # a model that does not exist: the check comes first
    result = runner.invoke(app, ["verify", str(tmp_path / "none"), "--expected", "[[0.1,0.2],[0.3]]"])
    one_error_line(result, "--expected must be a 2x2 matrix", "[[0.1, 0.2], [0.3]]")


def test_serve_flags_are_checked_by_their_names_before_loading(runner, tmp_path):
    one_error_line(runner.invoke(app, ["serve", "-m", str(tmp_path / "none"), "--max-inputs", "0"]),
                   "--max-inputs must be a positive int, got 0")
    one_error_line(runner.invoke(app, ["serve", "-m", str(tmp_path / "none"), "--header-timeout", "0"]),
                   "--header-timeout must be a positive number of seconds")


# --- the server names its models ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def both(hub_model, reranker_hub):
    embedder, reranker = mqe.load(str(hub_model)), mqe.load_reranker(str(reranker_hub))
    with TestClient(create_app(embedder, reranker=reranker)) as client:
        yield client


def test_every_dialect_answers_the_models_name_not_its_path(both, hub_model):
    name = hub_model.name
    assert both.post("/v1/embeddings", json={"input": "a"}).json()["model"] == name
    assert both.post("/api/embed", json={"model": "whatever", "input": "a"}).json()["model"] == name
    assert both.get("/info").json()["model_id"] == name
    assert both.get("/api/tags").json()["models"][0]["name"] == name


def test_models_lists_the_reranker_too(both, hub_model, reranker_hub):
    data = both.get("/v1/models").json()["data"]
    assert [(m["id"], m["type"]) for m in data] == [(hub_model.name, "embedding"), (reranker_hub.name, "reranker")]


def test_serve_says_what_it_serves_and_where(hub_model, tmp_path):
    from server_process import running_server

    with running_server(["--model", str(hub_model), "--log-level", "warning"], tmp_path / "log") as url:
        log = (tmp_path / "log").read_text()
    assert f"serving {hub_model} on {url}" in log


def test_cli_messages_give_commands_not_python_names(runner, hub_model, reranker_hub):
    wrong_kind = runner.invoke(app, ["embed", "-m", str(reranker_hub), "hello"])
    one_error_line(wrong_kind, "holds a reranker")
    assert "use `mlx-embed rerank`" in wrong_kind.stderr and "mlx_qwen3_embed." not in wrong_kind.stderr
    other_way = runner.invoke(app, ["rerank", "-m", str(hub_model), "q", "doc"])
    one_error_line(other_way, "holds an embedding model")
    assert "use `mlx-embed embed`" in other_way.stderr and "mlx_qwen3_embed." not in other_way.stderr


@pytest.mark.parametrize("path, body, named", [
    ("/v1/rerank", '{"query": "q\\ud800", "documents": ["a"]}', "query holds a lone UTF-16 surrogate U+D800"),
    ("/v2/rerank", '{"query": "q", "documents": ["a", "b\\udfff"]}', "documents[1]"),
    ("/rerank", '{"query": "q", "texts": ["ok", "a\\ud800"]}', "texts[1]"),
    ("/v1/rerank", '{"query": "q", "documents": ["a"], "instruction": "x\\udc00"}', "instruction holds a lone"),
])
def test_a_lone_surrogate_in_a_rerank_request_is_a_400_naming_it(reranker_hub, path, body, named):
    with TestClient(create_app(None, reranker=mqe.load_reranker(str(reranker_hub)))) as client:
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and named in response.text and "surrogate" in response.text


@pytest.mark.parametrize("path, body, field", [
    ("/rerank", {"query": "q", "texts": ["a"], "truncation_direction": "sideways"}, "truncation_direction"),
    ("/rerank", {"query": "q", "texts": ["a"], "truncation_direction": "Left"}, "truncation_direction"),
    ("/v2/rerank", {"query": "q", "documents": ["a"], "max_tokens_per_doc": -5}, "max_tokens_per_doc"),
])
def test_rerank_options_it_cannot_honour_are_a_400_naming_them(reranker_hub, path, body, field):
    with TestClient(create_app(None, reranker=mqe.load_reranker(str(reranker_hub)))) as client:
        response = client.post(path, json=body)
        assert response.status_code == 400 and field in response.text
        assert client.post(path, json={k: v for k, v in body.items() if k != field}).status_code == 200


@pytest.mark.parametrize("path, body", [
    ("/v1/embeddings", {"input": "word " * 400_000}),                      # refused by its characters
    ("/v1/embeddings", {"input": "word " * 400_000, "truncate": True}),    # cut: read as far as the limit needs
    ("/api/embed", {"input": "word " * 400_000}),                          # Ollama truncates by default
    ("/embed", {"inputs": "word " * 400_000, "truncate": True}),
])
def test_a_huge_text_is_never_tokenized_whole(hub_model, monkeypatch, path, body):
    """Every dialect prepares through the model's own bounds (serve/jobs.fit): no request makes the tokenizer read
    more than 2 x max_length x chars_per_token characters of an input."""
    embedder = mqe.load(str(hub_model))
    tokenizer = embedder.tokenizer
    read = []
    inner = tokenizer._tokenizer
    real = inner.encode_batch

    class Recording:
        def __getattr__(self, name):
            return getattr(inner, name)

        def encode_batch(self, texts, **kwargs):
            read.extend(len(t) for t in texts)
            return real(texts, **kwargs)

    monkeypatch.setattr(tokenizer, "_tokenizer", Recording())
    with TestClient(create_app(embedder)) as client:
        response = client.post(path, json=body)
    assert response.status_code in (200, 400, 413), response.text
    bound = 2 * (embedder.max_length + 1) * tokenizer.chars_per_token
    assert max(read, default=0) <= bound < len("word " * 400_000)
