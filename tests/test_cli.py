"""The `mlx-embed` CLI on tiny checkpoints: outputs equal the library's vectors for every input and output form,
info and convert report what the files hold, and every user mistake is one `error:` line with exit code 1."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.quant import quantize
from mlx_qwen3_embed.cli import app
from mlx_qwen3_embed.device import plan

TEXTS = ["MLX runs on Apple silicon.", "The quick brown fox.", "快速的棕色狐狸", "a"]
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
SCRIPT = str(Path(sys.executable).parent / "mlx-embed")


@pytest.fixture(scope="module")
def embedder(mlx_model):
    return mqe.load(str(mlx_model))


def rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def vectors(stdout: str) -> np.ndarray:
    return np.array([r["embedding"] for r in rows(stdout)], dtype=np.float32)


def assert_one_error_line(result, *phrases):
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0]
    assert "Traceback" not in result.output


def run_script(*args, env=None, input=None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MLX_EMBED_", "HF_"))}
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, input=input, timeout=120,
                          env=environment | (env or {}))


def cache_hub_model(folder: Path, hf_home: Path, repo_id: str) -> None:
    """Put `folder` into a huggingface_hub cache as `repo_id`: models--org--name/snapshots/<commit>, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


# --- embed: every input form equals the library -----------------------------------------------------------

def test_embed_arguments_equal_library(runner, mlx_model, embedder):
    result = runner.invoke(app, ["embed", *TEXTS, "--model", str(mlx_model)])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(vectors(result.stdout), embedder.embed(TEXTS))
    assert [r["index"] for r in rows(result.stdout)] == list(range(len(TEXTS)))


def test_embed_reports_token_counts(runner, mlx_model, embedder):
    result = runner.invoke(app, ["embed", *TEXTS, "--model", str(mlx_model)])
    assert [r["tokens"] for r in rows(result.stdout)] == [len(ids) for ids in embedder.tokenize(TEXTS)]


def test_embed_instruction_and_dim_equal_library(runner, mlx_model, embedder):
    result = runner.invoke(app, ["embed", *TEXTS, "-m", str(mlx_model), "--instruction", INSTRUCTION, "--dim", "32"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(vectors(result.stdout), embedder.embed(TEXTS, instruction=INSTRUCTION, dim=32))


def test_embed_prompt_name_max_length_no_normalize_equal_library(runner, mlx_model, embedder):
    result = runner.invoke(app, ["embed", *TEXTS, "-m", str(mlx_model), "--prompt-name", "query",
                                 "--max-length", "4", "--no-normalize", "--batch-tokens", "8"])
    assert result.exit_code == 0, result.output
    expected = embedder.embed(TEXTS, prompt_name="query", max_length=4, normalize=False)
    np.testing.assert_allclose(vectors(result.stdout), expected, rtol=1e-5, atol=1e-6)


def test_embed_text_file_one_per_line(runner, mlx_model, embedder, tmp_path):
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["embed", "-m", str(mlx_model), "--file", str(tmp_path / "texts.txt")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(vectors(result.stdout), embedder.embed(TEXTS))


def test_embed_jsonl_file_text_field(runner, mlx_model, embedder, tmp_path):
    lines = [json.dumps({"id": i, "text": t}) for i, t in enumerate(TEXTS)]
    (tmp_path / "texts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["embed", "-m", str(mlx_model), "-f", str(tmp_path / "texts.jsonl")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(vectors(result.stdout), embedder.embed(TEXTS))


def test_embed_stdin_dash(runner, mlx_model, embedder):
    result = runner.invoke(app, ["embed", "-", "-m", str(mlx_model)], input="\n".join(TEXTS) + "\n")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(vectors(result.stdout), embedder.embed(TEXTS))


def test_embed_stdin_jsonl_pipe_without_arguments(runner, mlx_model, embedder):
    piped = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS)
    result = runner.invoke(app, ["embed", "-m", str(mlx_model), "--jsonl"], input=piped)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(vectors(result.stdout), embedder.embed(TEXTS))


def test_embed_output_npy_is_float32_n_by_dim(runner, mlx_model, embedder, tmp_path):
    result = runner.invoke(app, ["embed", *TEXTS, "-m", str(mlx_model), "--dim", "48", "-o", str(tmp_path / "v.npy")])
    assert result.exit_code == 0, result.output
    saved = np.load(tmp_path / "v.npy")
    assert saved.dtype == np.float32 and saved.shape == (len(TEXTS), 48)
    np.testing.assert_array_equal(saved, embedder.embed(TEXTS, dim=48))
    assert result.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == ["v.npy"]


def test_embed_output_jsonl_file(runner, mlx_model, embedder, tmp_path):
    result = runner.invoke(app, ["embed", *TEXTS, "-m", str(mlx_model), "-o", str(tmp_path / "v.jsonl")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(vectors((tmp_path / "v.jsonl").read_text()), embedder.embed(TEXTS))


def test_embed_long_input_in_chunks_equals_library(runner, mlx_model, embedder, tmp_path):
    texts = [f"text number {i} " + "word " * (i % 7) for i in range(300)]  # > one progress chunk
    (tmp_path / "many.txt").write_text("\n".join(texts))
    result = runner.invoke(app, ["embed", "-m", str(mlx_model), "-f", str(tmp_path / "many.txt")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(vectors(result.stdout), embedder.embed(texts))
    assert [r["index"] for r in rows(result.stdout)] == list(range(300))


def test_progress_bar_on_stderr_for_long_inputs_only(runner, mlx_model, tmp_path):
    (tmp_path / "many.txt").write_text("\n".join(f"text {i}" for i in range(300)))
    long = runner.invoke(app, ["embed", "-m", str(mlx_model), "-f", str(tmp_path / "many.txt")])
    short = runner.invoke(app, ["embed", *TEXTS, "-m", str(mlx_model)])
    assert "embedding" in long.stderr and short.stderr == ""


def test_model_from_environment_variable(runner, mlx_model, embedder, monkeypatch):
    monkeypatch.setenv("MLX_EMBED_MODEL", str(mlx_model))
    result = runner.invoke(app, ["embed", *TEXTS])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(vectors(result.stdout), embedder.embed(TEXTS))


def test_console_script_equals_library(mlx_model, embedder):
    result = run_script("embed", "-m", str(mlx_model), "--dim", "32", "-", input="\n".join(TEXTS))
    assert result.returncode == 0, result.stderr
    # the console script preloads OpenBLAS where installed: its sums may round differently from this process's BLAS
    np.testing.assert_allclose(vectors(result.stdout), embedder.embed(TEXTS, dim=32), atol=1e-6)


def test_offline_hub_id_from_the_cache(hub_model, tmp_path):
    cache_hub_model(hub_model, tmp_path, "org/tiny-embed")
    result = run_script("embed", "-m", "org/tiny-embed", *TEXTS, env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(vectors(result.stdout), mqe.load(str(hub_model)).embed(TEXTS), atol=1e-6)


# --- embed: each mistake is one line and exit code 1 ---------------------------------------------------------

def test_error_bad_path(runner, tmp_path):
    result = runner.invoke(app, ["embed", "x", "-m", str(tmp_path / "missing")])
    assert_one_error_line(result, "no model folder at", "missing")


def test_error_folder_that_is_no_model(runner, tmp_path):
    result = runner.invoke(app, ["embed", "x", "-m", str(tmp_path)])
    assert_one_error_line(result, "no config.json in", "is this a model folder?")


def test_error_unknown_hub_id_offline(tmp_path):
    result = run_script("embed", "x", "-m", "org/not-cached", env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: org/not-cached is not in the Hugging Face cache and the hub cannot be reached (offline?): "
        "download it once with network, or give a local folder"]


def test_error_missing_input_file(runner, mlx_model, tmp_path):
    result = runner.invoke(app, ["embed", "-m", str(mlx_model), "-f", str(tmp_path / "nope.txt")])
    assert_one_error_line(result, "cannot read", "nope.txt", "No such file")


def test_error_input_file_not_text(runner, mlx_model, tmp_path):
    (tmp_path / "blob.txt").write_bytes(b"\xff\xfe\x00binary")
    result = runner.invoke(app, ["embed", "-m", str(mlx_model), "-f", str(tmp_path / "blob.txt")])
    assert_one_error_line(result, "blob.txt", "not UTF-8")


def test_error_jsonl_line_without_text(runner, mlx_model, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    result = runner.invoke(app, ["embed", "-m", str(mlx_model), "-f", str(tmp_path / "bad.jsonl")])
    assert_one_error_line(result, "bad.jsonl line 2", "'text'")


@pytest.mark.parametrize("dim", ["0", "1000"])
def test_error_bad_dim(runner, mlx_model, dim):
    result = runner.invoke(app, ["embed", "x", "-m", str(mlx_model), "--dim", dim])
    assert_one_error_line(result, f"dim must be between 1 and 64, got {dim}")


def test_error_over_long_text_without_truncation(runner, mlx_model):
    result = runner.invoke(app, ["embed", "a b c d e f", "-m", str(mlx_model), "--max-length", "3", "--no-truncate"])
    assert_one_error_line(result, "input 0 has", "more than max_length 3")


def test_error_no_texts(runner, mlx_model):
    result = runner.invoke(app, ["embed", "-m", str(mlx_model)], input="")
    assert_one_error_line(result, "no texts in stdin")


def test_error_output_folder_missing(runner, mlx_model, tmp_path):
    result = runner.invoke(app, ["embed", "x", "-m", str(mlx_model), "-o", str(tmp_path / "no" / "v.npy")])
    assert_one_error_line(result, "cannot write", "does not exist")


def test_error_npy_without_output(runner, mlx_model):
    result = runner.invoke(app, ["embed", "x", "-m", str(mlx_model), "--format", "npy"])
    assert_one_error_line(result, "--format npy needs --output")


def test_debug_variable_shows_the_exception(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_EMBED_DEBUG", "1")
    result = runner.invoke(app, ["embed", "x", "-m", str(tmp_path / "missing")])
    assert isinstance(result.exception, FileNotFoundError)


# --- info -----------------------------------------------------------------------------------------------------

def test_info_json_describes_the_checkpoint(runner, mlx_model):
    result = runner.invoke(app, ["info", str(mlx_model), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    config = json.loads((mlx_model / "config.json").read_text())
    assert (facts["dim"], facts["layers"], facts["heads"], facts["kv_heads"]) == (64, 2, 4, 2)
    assert facts["architecture"] == "Qwen3ForCausalLM" and facts["max_length"] == 512
    assert facts["quantization"] == {k: config["quantization"][k] for k in ("group_size", "bits", "mode")}
    assert facts["quantization_overrides"] == {"model.layers.0.mlp.down_proj": {"bits": 8, "group_size": 64,
                                                                                "mode": "affine"}}
    assert facts["size_bytes"] == sum(p.stat().st_size for p in mlx_model.rglob("*") if p.is_file())
    assert facts["compute"] == {"device": "cpu", "dtype": "float32", "dequantize": True, "batch_tokens": 1024,
                                "kernels": plan("cpu").kernels.describe()}
    assert facts["blas"]


def test_info_bits_per_weight_equals_mlx_lm(runner, mlx_model):
    from mlx_lm.utils import compute_bits_per_weight, load_model

    facts = json.loads(runner.invoke(app, ["info", str(mlx_model), "--json"]).stdout)
    assert facts["bits_per_weight"] == pytest.approx(compute_bits_per_weight(load_model(mlx_model)[0]), abs=1e-3)


def test_info_text_names_float_checkpoints(runner, hub_model):
    result = runner.invoke(app, ["info", str(hub_model)])
    assert result.exit_code == 0, result.output
    assert "quantization: float (not quantized)" in result.stdout and "dim: 64" in result.stdout


@pytest.fixture
def offline_hub_cache(monkeypatch, tmp_path):
    """An in-process offline huggingface_hub whose cache is tmp_path/hub (constants are read at call time)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def fake_hub_api(monkeypatch, folder: Path) -> list[str]:
    """The hub's safetensors headers and file list, answered from `folder`; returns the calls made."""
    import types

    import huggingface_hub
    from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

    calls = []

    def metadata(repo_id, revision=None, **_):
        calls.append("get_safetensors_metadata")
        tables = {f.name: SafetensorsFileMetadata(metadata={}, tensors={
            key: TensorInfo(dtype=t["dtype"], shape=t["shape"], data_offsets=tuple(t["data_offsets"]))
            for key, t in quantize.read_header(f).items()}) for f in folder.glob("*.safetensors")}
        weight_map = {key: name for name, table in tables.items() for key in table.tensors}
        return SafetensorsRepoMetadata(metadata=None, sharded=False, weight_map=weight_map, files_metadata=tables)

    real_model_info = huggingface_hub.HfApi.model_info

    def model_info(self, repo_id, revision=None, files_metadata=False, **kwargs):
        if not files_metadata:  # snapshot_download's own look-up: offline, it falls back to the cache
            return real_model_info(self, repo_id, revision=revision, **kwargs)
        calls.append("model_info")
        return types.SimpleNamespace(siblings=[
            types.SimpleNamespace(rfilename=str(f.relative_to(folder)), size=f.stat().st_size)
            for f in folder.rglob("*") if f.is_file()])

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", metadata)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    return calls


def test_info_on_a_hub_id_downloads_no_weights(runner, mlx_model, offline_hub_cache, monkeypatch):
    config_only = offline_hub_cache / "config-only"
    shutil.copytree(mlx_model, config_only, ignore=shutil.ignore_patterns("*.safetensors"))
    cache_hub_model(config_only, offline_hub_cache, "org/tiny-info")
    calls = fake_hub_api(monkeypatch, mlx_model)
    result = runner.invoke(app, ["info", "org/tiny-info", "--json"])
    assert result.exit_code == 0, result.output
    remote = json.loads(result.stdout)
    local = json.loads(runner.invoke(app, ["info", str(mlx_model), "--json"]).stdout)
    for key in ("size_bytes", "parameters", "bits_per_weight", "dim", "quantization", "quantization_overrides"):
        assert remote[key] == local[key], key
    assert calls == ["get_safetensors_metadata", "model_info"]
    assert not list(offline_hub_cache.rglob("*.safetensors"))  # nothing was downloaded


def test_info_on_a_cached_hub_model_asks_the_hub_nothing(runner, mlx_model, offline_hub_cache, monkeypatch):
    cache_hub_model(mlx_model, offline_hub_cache, "org/tiny-cached")
    calls = fake_hub_api(monkeypatch, mlx_model)
    result = runner.invoke(app, ["info", "org/tiny-cached", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["parameters"] == quantize.summary(mlx_model)["parameters"] and calls == []


def test_info_error_offline_without_the_weights(runner, mlx_model, offline_hub_cache):
    config_only = offline_hub_cache / "config-only"
    shutil.copytree(mlx_model, config_only, ignore=shutil.ignore_patterns("*.safetensors"))
    cache_hub_model(config_only, offline_hub_cache, "org/tiny-offline")
    result = runner.invoke(app, ["info", "org/tiny-offline"])
    assert_one_error_line(result, "the weights of org/tiny-offline are not downloaded and the hub cannot describe")


def test_info_error_folder_that_is_no_model(runner, tmp_path):
    assert_one_error_line(runner.invoke(app, ["info", str(tmp_path)]), "no config.json in")


# --- convert --------------------------------------------------------------------------------------------------

def test_convert_writes_a_folder_the_library_loads(runner, hub_model, tmp_path):
    dst = tmp_path / "tiny-8bit"
    result = runner.invoke(app, ["convert", str(hub_model), str(dst), "--bits", "8", "--group-size", "32"])
    assert result.exit_code == 0, result.output
    summary = quantize.summary(dst)
    assert f"{summary['bits_per_weight']:.3f} bits per weight" in result.stdout and str(dst) in result.stdout
    cos = (mqe.load(str(dst)).embed(TEXTS) * mqe.load(str(hub_model)).embed(TEXTS)).sum(1)
    assert cos.min() >= 0.9995


def test_convert_from_an_offline_hub_id(hub_model, tmp_path):
    cache_hub_model(hub_model, tmp_path / "hf", "Qwen/Qwen3-Embedding-tiny")
    result = run_script("convert", "Qwen/Qwen3-Embedding-tiny", str(tmp_path / "out"), "--bits", "8",
                        env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    cos = (mqe.load(str(tmp_path / "out")).embed(TEXTS) * mqe.load(str(hub_model)).embed(TEXTS)).sum(1)
    assert cos.min() >= 0.9995


def test_convert_dwq_reports_held_out_cosine_and_writes_a_loadable_folder(runner, hub_model, tmp_path):
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text("\n".join(json.dumps({"text": t, "kind": "query"}) for t in TEXTS if t))
    dst = tmp_path / "tiny-4bit-dwq"
    result = runner.invoke(app, ["convert", str(hub_model), str(dst), "--group-size", "32", "--dwq",
                                 "--calibration", str(calibration), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "held-out cosine to the float model" in result.stdout and "dwq step 2/2" in result.stderr
    assert mqe.load(str(dst)).embed(TEXTS).shape == (len(TEXTS), 64)


def test_convert_dwq_error_missing_calibration(runner, hub_model, tmp_path):
    result = runner.invoke(app, ["convert", str(hub_model), str(tmp_path / "out"), "--dwq",
                                 "--calibration", str(tmp_path / "none.jsonl")])
    assert_one_error_line(result, "no calibration file at")
    assert not (tmp_path / "out").exists()


def test_convert_refuses_an_existing_destination(runner, hub_model, tmp_path):
    (tmp_path / "taken").mkdir()
    result = runner.invoke(app, ["convert", str(hub_model), str(tmp_path / "taken")])
    assert_one_error_line(result, "taken already exists")
    assert list((tmp_path / "taken").iterdir()) == []


def test_convert_error_bad_bits(runner, hub_model, tmp_path):
    result = runner.invoke(app, ["convert", str(hub_model), str(tmp_path / "out"), "--bits", "7"])
    assert_one_error_line(result, "bits must be one of 2, 3, 4, 5, 6, 8, got 7")


@pytest.mark.parametrize("command", ["embed", "info", "convert"])
def test_help(runner, command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.stdout
