"""Soak: `mlx-embed serve` under 32 careless clients for 10 minutes, loopback only.

Each client loops over requests drawn from a fixed mix: normal ones (1-4 short texts; their latency is measured),
over-long texts without truncation (400), bodies over the cap (413), malformed ones (bad JSON, lone surrogates,
wrong types: 400), big requests whose client hangs up 50-1000 ms after sending them (in the handler or inside
the worker), stalled bodies (408 after --body-timeout), small bodies that ask for much work (issue #26: a long
rerank query x 2048 documents, an instruction x 2048 inputs, near-cap /tokenize and /embed bodies: 413), and
near-cap /api/embed bodies, which Ollama's default truncation makes one max_length input each (200).
Every answer is counted by kind and status; anything else (a 5xx, a wrong status, a broken connection where an
answer was due) is an error. The server's RSS is sampled every 10 s. Prints Markdown:

    python bench/soak.py                    # 32 clients, 600 s, 0.6B-wide random model with 4 layers
    python bench/soak.py --seconds 60 --out /tmp/soak.md
    python bench/soak.py --kinds normal --seconds 180     # the quiet run: normal requests only, for their p99

Needs the `test` extra (torch writes the checkpoint). Not a test: timings depend on the machine.
"""

import argparse
import asyncio
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from server_bench import WIDTH_06B, TOPICS, free_port, rss_mib, server_env  # noqa: E402

CAP = 1 << 20  # --max-request-bytes for the soak: 1 MiB
MIX = {"normal": 60, "overlong": 8, "oversized": 5, "malformed": 12, "disconnect": 10, "stalled": 5, "costly": 8,
       "truncated": 2}
EXPECTED = {"normal": {200}, "overlong": {400}, "oversized": {413}, "malformed": {400}, "disconnect": {None},
            "stalled": {408}, "costly": {413}, "truncated": {200}}
NEAR_CAP = "lorem ipsum " * (CAP // 13)  # a text just under the body cap
COSTLY = [  # (path, body): refused before anything is tokenized
    ("/v1/rerank", {"query": "q " * 10_000, "documents": ["d"] * 2048}),  # the query read 2048 times
    ("/v1/embeddings", {"input": ["a"] * 2048, "instruction": "x " * 4000}),  # 16 MB to tokenize
    ("/tokenize", {"inputs": NEAR_CAP}),
    ("/embed", {"inputs": NEAR_CAP}),
]
MALFORMED = [b'{"input": ', b'{"input": "\\ud800"}', b'{"input": ["ok", "\\ud83d"]}', b'{"input": 3}',
             b'{"input": [[1.5]]}', b'{"input": "a", "dimensions": 0}', b'\xff\xfe', b'[]']


def post(body: bytes, *, length: int | None = None, path: str = "/v1/embeddings") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body


def request_for(kind: str, rng: random.Random) -> bytes:
    """The bytes sent for one request of `kind` (a stalled one's last bytes never come)."""
    if kind == "normal":
        texts = [f"what is {rng.choice(TOPICS)} {rng.randrange(1000)}?" for _ in range(rng.randint(1, 4))]
        return post(json.dumps({"input": texts}).encode())
    if kind == "overlong":
        return post(json.dumps({"input": "lorem ipsum " * 60_000}).encode())
    if kind == "oversized":
        return post(b"", length=50 * CAP)  # answered from Content-Length, body never sent
    if kind == "malformed":
        return post(rng.choice(MALFORMED))
    if kind == "costly":
        path, body = rng.choice(COSTLY)
        return post(json.dumps(body).encode(), path=path)
    if kind == "truncated":  # Ollama truncates by default: a 1 MB text is one max_length (512-token) input
        return post(json.dumps({"input": NEAR_CAP}).encode(), path="/api/embed")
    if kind == "disconnect":
        return post(json.dumps({"input": ["lorem ipsum dolor " * 150] * 64, "truncate": True}).encode())
    body = post(json.dumps({"input": "never finished"}).encode())
    return body[:-5]


async def one(port: int, kind: str, rng: random.Random) -> tuple[int | None, float]:
    """One request of `kind`: (its status, None when the client hung up; seconds)."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        sent = request_for(kind, rng)
        writer.write(sent)
        await writer.drain()
        if kind == "disconnect":
            await asyncio.sleep(rng.uniform(0.05, 1.0))
            return None, time.perf_counter() - start
        data = await asyncio.wait_for(reader.read(), 120)
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else -1
        return status, time.perf_counter() - start
    finally:
        writer.close()


async def soak(port: int, clients: int, seconds: float, seed: int,
               mix: dict) -> tuple[Counter, list[float], list[str]]:
    counts, latencies, errors = Counter(), [], []
    kinds, weights = zip(*mix.items())
    stop = time.monotonic() + seconds

    async def client(c: int):
        rng = random.Random(seed * 1000 + c)
        while time.monotonic() < stop:
            kind = rng.choices(kinds, weights)[0]
            try:
                status, elapsed = await one(port, kind, rng)
            except (OSError, asyncio.TimeoutError, IndexError, ValueError) as e:
                status, elapsed = f"{type(e).__name__}", 0.0
            counts[(kind, status)] += 1
            if status not in EXPECTED[kind]:
                errors.append(f"{kind}: {status}")
            elif kind == "normal":
                latencies.append(elapsed)

    await asyncio.gather(*(client(c) for c in range(clients)))
    return counts, latencies, errors


async def sample_rss(pid: int, every: float, samples: list, done: asyncio.Event):
    start = time.monotonic()
    while not done.is_set():
        samples.append((time.monotonic() - start, rss_mib(pid)))
        try:
            await asyncio.wait_for(done.wait(), every)
        except asyncio.TimeoutError:
            pass


async def run(port: int, pid: int, args) -> tuple:
    samples, done = [], asyncio.Event()
    sampler = asyncio.ensure_future(sample_rss(pid, 10.0, samples, done))
    mix = {kind: MIX[kind] for kind in args.kinds.split(",")}
    result = await soak(port, args.clients, args.seconds, args.seed, mix)
    done.set()
    await sampler
    return (*result, samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the 0.6B-wide random model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(MIX), help=f"request kinds to mix (default all: {','.join(MIX)})")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = parser.parse_args()

    from conftest import make_hub_checkpoint
    from rerank_checkpoints import make_reranker_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        model = make_hub_checkpoint(Path(tmp) / "qwen3-0.6b-width", num_hidden_layers=args.layers, **WIDTH_06B)
        reranker = make_reranker_checkpoint(Path(tmp) / "reranker-tiny")  # for the rerank routes' costly bodies
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", "from mlx_qwen3_embed.cli import app; app()", "serve", "--model", str(model),
             "--reranker", str(reranker), "--port", str(port),
             "--max-request-bytes", str(CAP), "--body-timeout", "2", "--header-timeout", "2",
             "--log-level", "warning"], env=server_env(), stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start: {server.stderr.read().decode()[-2000:]}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            counts, latencies, errors, samples = asyncio.run(run(port, server.pid, args))
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        finally:
            server.terminate()
            code = server.wait(60)
    report = markdown(args, counts, latencies, errors, samples, metrics, code)
    print(report)
    if args.out:
        args.out.write_text(report)


def markdown(args, counts, latencies, errors, samples, metrics, exit_code) -> str:
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    lines = [f"# Soak: {args.clients} clients, {args.seconds:g} s, kinds {args.kinds}",
             "", f"Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}; "
             f"server: 0.6B-wide random model, {args.layers} layers (512 tokens), a tiny reranker, fp32 CPU, "
             "OpenBLAS preloaded when installed; "
             f"--max-request-bytes {CAP} --body-timeout 2 --header-timeout 2.", "",
             "| kind | status | count |", "|---|---|---|"]
    for (kind, status), n in sorted(counts.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        lines.append(f"| {kind} | {status if status is not None else 'hung up'} | {n} |")
    lines += ["", f"Unexpected answers (errors): {len(errors)}" + (f": {Counter(errors).most_common(5)}"
                                                                   if errors else ""),
              f"Normal requests: {len(latencies)}, p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms",
              "", "Worker counters at the end: " + ", ".join(
                  line for line in metrics.splitlines() if line.startswith(
                      ("mlx_embed_cancelled_requests_total", "mlx_embed_dropped_inputs_total",
                       'mlx_embed_requests_total{path="/v1/embeddings",code="499"}', "mlx_embed_batches_total"))),
              f"Server exit status after SIGTERM: {exit_code}", "", "| t (s) | server RSS (MiB) |", "|---|---|"]
    lines += [f"| {t:.0f} | {rss:.0f} |" for t, rss in samples]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
