"""Corpus jobs under `mlx.launch -n 2 --backend ring` on loopback: the one output rank 0 writes equals the
single-process job's, and a rank that dies stops the job with a message; the same command then resumes it."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.corpus.job import embed_corpus

BIN = Path(sys.executable).parent
LAUNCH, SCRIPT = str(BIN / "mlx.launch"), str(BIN / "mlx-embed")


def free_port_pair() -> int:
    """A port p with p and p+1 free: the ring listens on one port per rank."""
    for _ in range(100):
        port = random.randrange(20000, 60000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def launch(model: Path, source: Path, output: Path, *extra: str) -> subprocess.Popen:
    # one BLAS thread per rank: two ranks on a 2-core machine otherwise fight over the cores
    return subprocess.Popen([LAUNCH, "-n", "2", "--backend", "ring", "-p", str(free_port_pair()),
                             "--env", "OPENBLAS_NUM_THREADS=1", "--", SCRIPT, "embed", "-m", str(model),
                             "--dtype", "float32", "--file", str(source), "--output", str(output), *extra],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rank_pids(rank: int, marker: str) -> list[int]:
    """Processes with MLX_RANK=rank whose command line holds `marker` (this test's own files)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            command = (proc / "cmdline").read_bytes().decode(errors="ignore")
        except (OSError, ValueError):
            continue
        if f"MLX_RANK={rank}".encode() in environ and marker in command and "mlx-embed" in command:
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="module")
def embedder(hub_model):
    return mqe.load(str(hub_model), dtype="float32")


def corpus(path: Path, n: int) -> Path:
    texts = [f"passage {i}: " + " ".join(["ring", "rank", "vector", "gather"][: i % 4 + 1]) * (i % 6 + 1)
             for i in range(n)]
    path.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def test_two_ranks_write_one_output_equal_to_the_single_process_job(hub_model, embedder, tmp_path):
    source = corpus(tmp_path / "c.jsonl", 700)
    single = embed_corpus(embedder, source, tmp_path / "single.parquet", id_field="id")
    job = launch(hub_model, source, tmp_path / "ranks.parquet", "--id-field", "id")
    log, _ = job.communicate(timeout=240)
    assert "Node with rank" not in log, log  # mlx.launch exits 0 even when a rank fails: its warning shows it
    assert f"wrote {single.count} vectors" in log
    import pyarrow.parquet as pq

    one, two = pq.read_table(tmp_path / "single.parquet"), pq.read_table(tmp_path / "ranks.parquet")
    assert two.column("id").to_pylist() == one.column("id").to_pylist()
    np.testing.assert_allclose(np.array(two.column("embedding").to_pylist()),
                               np.array(one.column("embedding").to_pylist()), atol=1e-5)


def test_a_rank_that_dies_stops_the_job_with_a_message_and_it_resumes(hub_model, embedder, tmp_path):
    source = corpus(tmp_path / "c.jsonl", 4000)
    output, parts = tmp_path / "v.npy", tmp_path / ".v.npy.job" / "parts"
    job = launch(hub_model, source, output)
    deadline = time.monotonic() + 120
    while not (parts.is_dir() and any(parts.glob("*.npy"))) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victims = rank_pids(1, str(output))
    assert len(victims) == 1, victims
    os.kill(victims[0], signal.SIGKILL)
    log, _ = job.communicate(timeout=60)
    assert "Node with rank 1 exited with code -9" in log
    # rank 0 hears it from mlx.launch (SIGTERM) or from the ring itself, whichever comes first
    assert "error: stopped by SIGTERM" in log or "error: lost the other ranks" in log, log
    assert "run the same command again to resume" in log and "Traceback" not in log, log
    assert not output.exists() and any(parts.glob("*.npy"))
    done = int(sorted(parts.glob("*.npy"))[-1].stem.split("-")[1])

    again = launch(hub_model, source, output)
    log, _ = again.communicate(timeout=240)
    assert f"({done} done by an earlier run)" in log, log
    np.testing.assert_allclose(np.load(output), embedder.embed([json.loads(line)["text"] for line in
                                                                source.read_text().splitlines()]), atol=1e-5)
    assert [json.loads(line) for line in output.with_suffix(".ids.jsonl").read_text().splitlines()] == \
        list(range(4000))  # no --id-field: line numbers
