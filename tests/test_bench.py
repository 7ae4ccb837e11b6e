"""`mlx-embed bench` and what it builds on: the JSON it prints, the FLOP count against transformers' own
parameter count, the percentile against numpy, the corpus generator, and the BLAS detection and re-exec rules.
No timing is asserted: timings live in bench/results."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed import bench, blas
from mlx_qwen3_embed.cli import app
from mlx_qwen3_embed.models.args import ModelArgs
from mlx_qwen3_embed.device import plan

import conftest
from vl_fixtures import vl_model  # noqa: F401  (session fixture)

QWEN3_06B = dict(conftest.QWEN3_06B, vocab_size=151669, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                 tie_word_embeddings=True)
FIELDS = {"model", "device", "dtype", "blas", "kernels", "batch_tokens", "texts", "tokens", "mean_tokens", "rounds",
          "corpus_seconds", "tokens_per_s", "texts_per_s", "query_p50_ms", "query_p95_ms", "queries_timed",
          "flops_per_token", "achieved_gflops", "gemm_gflops", "roofline_fraction", "peak_mlx_memory_mb",
          "peak_rss_mb", "load_seconds"}
QUICK = ["--count", "3", "--rounds", "1", "--query-repeats", "1"]


def small_gemm(monkeypatch) -> None:
    """The GEMM probe at a tiny shape: the 1024x1024x3072 one takes seconds on the wheel's reference BLAS."""
    probe = bench.gemm_gflops
    monkeypatch.setattr(bench, "gemm_gflops", lambda seconds=1.0, device=None: probe(64, 64, 64, seconds=0.01))


@pytest.fixture
def runner(runner, monkeypatch) -> CliRunner:
    """conftest's runner, with small matmuls in the bench's BLAS check."""
    small_gemm(monkeypatch)
    return runner


@pytest.fixture(scope="module")
def bench_json(hub_model) -> dict:
    with pytest.MonkeyPatch.context() as monkeypatch:
        small_gemm(monkeypatch)
        result = CliRunner().invoke(app, ["bench", "--model", str(hub_model), "--json", *QUICK])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_bench_json_has_every_figure(bench_json):
    assert set(bench_json) == FIELDS
    assert all(bench_json[k] > 0 for k in FIELDS - {"model", "device", "dtype", "blas", "kernels"})


def test_bench_counts_the_tokens_the_model_reads(bench_json, hub_model):
    embedder = mqe.load(str(hub_model))
    corpus = bench.sample_passages(3, count_tokens=lambda text: len(embedder.tokenize(text)[0]))
    assert (bench_json["texts"], bench_json["tokens"]) == (3, sum(len(s) for s in embedder.tokenize(corpus)))
    assert bench_json["queries_timed"] == len(bench.QUERIES)


def test_bench_flops_per_token_follow_the_config(bench_json, hub_model):
    embedder = mqe.load(str(hub_model))
    corpus = bench.sample_passages(3, count_tokens=lambda text: len(embedder.tokenize(text)[0]))
    lengths = [len(s) for s in embedder.tokenize(corpus)]
    expected = bench.forward_flops(embedder.args, lengths) / sum(lengths)
    assert bench_json["flops_per_token"] == pytest.approx(expected)
    assert bench_json["roofline_fraction"] == pytest.approx(bench_json["achieved_gflops"] / bench_json["gemm_gflops"])


def test_bench_table_names_the_blas_and_the_figures(runner, hub_model):
    result = runner.invoke(app, ["bench", "--model", str(hub_model), *QUICK])
    assert result.exit_code == 0, result.output
    for label in ("BLAS", "kernels", "tokens/s", "texts/s", "p50", "p95", "load", "GFLOP/token", "roofline",
                  "peak memory"):
        assert label in result.stdout


def test_bench_reads_a_texts_file(runner, hub_model, tmp_path, texts):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
    result = runner.invoke(app, ["bench", "--model", str(hub_model), "--texts", str(corpus), "--json", *QUICK])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["texts"] == len(texts)


def test_bench_bad_rounds_is_one_error_line(runner, hub_model):
    result = runner.invoke(app, ["bench", "--model", str(hub_model), "--rounds", "0"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: --count, --rounds and --query-repeats must be at least 1, got 64, 0, 3"


def test_linear_params_equal_transformers_linear_layers():
    torch = pytest.importorskip("torch")
    from transformers import Qwen3Config, Qwen3Model

    with torch.device("meta"):  # shapes only: no 600M parameters in memory
        reference = Qwen3Model(Qwen3Config(**QWEN3_06B))
    linear = sum(m.weight.numel() for m in reference.modules() if isinstance(m, torch.nn.Linear))
    assert bench.linear_params(ModelArgs.from_dict({"model_type": "qwen3", **QWEN3_06B})) == linear == 440_401_920


def test_attention_flops_count_each_causal_key_once():
    args = ModelArgs.from_dict({"model_type": "qwen3", **QWEN3_06B})
    # one text of 3 tokens sees 1 + 2 + 3 keys; each costs 4 FLOPs per query channel (2048) in each of 28 layers
    attention = bench.forward_flops(args, [3]) - 2 * bench.linear_params(args) * 3
    assert attention == 28 * 4 * 2048 * (1 + 2 + 3)


def test_percentile_matches_numpy():
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    for p in (0, 50, 95, 100):
        assert bench.percentile(values, p) == pytest.approx(np.percentile(values, p))


def test_sample_passages_are_repeatable_and_within_the_token_range():
    passages = bench.sample_passages(16, min_tokens=32, max_tokens=256)
    assert passages == bench.sample_passages(16, min_tokens=32, max_tokens=256)
    lengths = [round(1.3 * len(p.split())) for p in passages]
    assert len(passages) == 16 and min(lengths) >= 30 and max(lengths) <= 256


# --- BLAS detection and the CLI's re-exec (no test needs OpenBLAS installed) ---------------------------------

def test_blas_is_named_from_the_library_that_provides_sgemm(monkeypatch):
    monkeypatch.setattr(blas.sys, "platform", "linux")
    monkeypatch.setattr(blas, "global_sgemm", lambda: "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0")
    assert blas.blas() == "OpenBLAS (/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0)"
    assert not blas.is_slow()


def test_no_global_sgemm_means_the_bundled_reference_blas(monkeypatch):
    monkeypatch.setattr(blas.sys, "platform", "linux")
    monkeypatch.setattr(blas, "global_sgemm", lambda: None)
    assert blas.blas() == blas.REFERENCE and blas.is_slow()


def test_reexec_env_preloads_the_found_blas_once(monkeypatch, tmp_path):
    library = tmp_path / "libopenblas.so.0"
    library.write_bytes(b"")
    monkeypatch.setattr(blas.sys, "platform", "linux")
    monkeypatch.setattr(blas, "global_sgemm", lambda: None)
    env = blas.reexec_env({"MLX_EMBED_BLAS": str(library), "LD_PRELOAD": "/other.so"})
    assert env["LD_PRELOAD"] == f"{library}:/other.so" and env[blas.REEXEC_GUARD_ENV] == "1"
    assert blas.reexec_env(env) is None  # the guard stops a second re-exec


@pytest.mark.parametrize("environ", [{"MLX_EMBED_NO_BLAS_REEXEC": "1"}, {"MLX_EMBED_BLAS_REEXEC": "1"}])
def test_reexec_env_respects_the_opt_out_and_the_guard(monkeypatch, environ):
    monkeypatch.setattr(blas.sys, "platform", "linux")
    monkeypatch.setattr(blas, "global_sgemm", lambda: None)
    assert blas.reexec_env(environ) is None


def test_reexec_env_is_none_when_a_fast_blas_is_in_use(monkeypatch):
    monkeypatch.setattr(blas.sys, "platform", "linux")
    monkeypatch.setattr(blas, "global_sgemm", lambda: "/usr/lib/libopenblas.so.0")
    assert blas.reexec_env({}) is None


def test_bad_blas_path_names_the_variable(monkeypatch):
    monkeypatch.setenv("MLX_EMBED_BLAS", "/no/such/libblas.so")
    with pytest.raises(FileNotFoundError, match="MLX_EMBED_BLAS=/no/such/libblas.so is not a file"):
        blas.find_fast_blas()


def test_slow_blas_warns_once_per_process(monkeypatch):
    monkeypatch.setattr(blas, "is_slow", lambda: True)
    monkeypatch.setattr(blas, "find_fast_blas", lambda: None)
    monkeypatch.setattr(blas, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan("cpu")
        plan("cpu")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "apt-get install -y libopenblas0-pthread" in messages[0]


def test_fast_blas_does_not_warn(monkeypatch):
    monkeypatch.setattr(blas, "is_slow", lambda: False)
    monkeypatch.setattr(blas, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan("cpu")
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


def run_script(*args, env: dict) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MLX_EMBED_", "LD_PRELOAD"))}
    script = str(Path(sys.executable).parent / "mlx-embed")
    result = subprocess.run([script, *args], capture_output=True, text=True, timeout=300, env=environment | env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_console_script_preloads_an_installed_blas(hub_model):
    if not sys.platform.startswith("linux") or blas.find_fast_blas() is None:
        pytest.skip("Linux with OpenBLAS installed only: elsewhere there is nothing to preload")
    result = run_script("bench", "--model", str(hub_model), "--json", *QUICK, env={})
    assert result["blas"].startswith("OpenBLAS (")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the bundled reference BLAS is Linux's mlx-cpu")
def test_console_script_opt_out_keeps_the_bundled_blas(hub_model):
    result = run_script("bench", "--model", str(hub_model), "--json", *QUICK, env={"MLX_EMBED_NO_BLAS_REEXEC": "1"})
    assert result["blas"] == blas.REFERENCE


def test_bench_runs_a_qwen3_vl_model_on_texts(runner, vl_model):
    """The bench is written against the contract: a Qwen3-VL model's text items count the tokens it reads."""
    result = runner.invoke(app, ["bench", "--model", str(vl_model), "--json", *QUICK])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    vl = mqe.load(str(vl_model))
    corpus = bench.sample_passages(3, count_tokens=lambda text: len(vl.prepare_inputs([text])[0]))
    assert figures["tokens"] == sum(len(p) for p in vl.prepare_inputs(corpus))
    assert figures["flops_per_token"] == pytest.approx(
        bench.forward_flops(vl.args.text, [len(p) for p in vl.prepare_inputs(corpus)]) / figures["tokens"])
