"""The measurement behind `mlx-embed bench`: throughput, single-query latency, load time, memory, GEMM roofline.

MLX is lazy: every clock here stops only after the vectors are numpy arrays, which forces evaluation. A warm-up
pass comes first so that one-time costs (kernel selection, compiled graphs, allocator growth) stay out of it.
"""

import random
import resource
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

import mlx.core as mx

from .blas import blas
from .contracts import EmbeddingModel
from .models.args import ModelArgs
from .tokenizer import DEFAULT_INSTRUCTION

# RAG-like passages, generated so that every run and every system reads the same text
TOPICS = ["the database", "the cache", "the scheduler", "the compiler", "a neural network", "the kernel",
          "the river basin", "the central bank", "the vaccine trial", "the solar panel", "the supply chain",
          "the orchestra", "the election", "the glacier", "the protein", "the telescope"]
VERBS = ["stores", "reduces", "measures", "predicts", "explains", "improves", "limits", "controls",
         "describes", "balances", "delays", "compresses", "transports", "filters", "ranks", "estimates"]
OBJECTS = ["the latency of each request", "seasonal rainfall", "interest rates over a decade",
           "the cost of inference", "memory bandwidth", "the spread of infection", "sediment in the delta",
           "energy output in winter", "the order of operations", "the shape of the folded chain",
           "light from distant galaxies", "the number of voters", "the tempo of the second movement",
           "shipping delays at the port", "gradient noise during training", "page faults under load"]
CLAUSES = ["according to the annual report", "when the load is high", "in most of the measured cases",
           "although the effect is small", "which surprised the reviewers", "as the appendix shows",
           "under the default configuration", "before the second phase began", "in every region studied",
           "despite earlier estimates", "once the data was cleaned", "for the first time since 1998"]
QUERIES = ["what limits memory bandwidth", "how do central banks set interest rates", "why do glaciers retreat",
           "which telescope measures distant light", "what reduces inference cost", "how is rainfall predicted",
           "when do shipping delays happen", "what does the scheduler control"]


def _sentence(rng: random.Random) -> str:
    s = f"{rng.choice(TOPICS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    if rng.random() < 0.6:
        s += f", {rng.choice(CLAUSES)}"
    if rng.random() < 0.3:
        s += f", and {rng.choice(TOPICS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    return s[0].upper() + s[1:] + "."


def sample_passages(count: int = 64, seed: int = 0, min_tokens: int = 32, max_tokens: int = 256,
                    count_tokens: Optional[Callable[[str], int]] = None) -> list[str]:
    """`count` passages of min_tokens..max_tokens tokens, skewed towards full-size chunks as a chunker makes.

    Retrieval chunkers cut documents into pieces of up to ~256 tokens and the last piece of each is shorter.
    count_tokens: the checkpoint tokenizer's length function; lengths are targets in ITS tokens, because a
    tiny-vocabulary test tokenizer splits ~4 tokens a word where Qwen's splits ~1.3. Default: 1.3 per word.
    """
    count_tokens = count_tokens or (lambda text: round(1.3 * len(text.split())))
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        target = int(min_tokens + (max_tokens - min_tokens) * rng.random() ** 0.5)
        words: list[str] = []
        while count_tokens(" ".join(words)) < target:
            words += _sentence(rng).split()
        while len(words) > 1 and count_tokens(" ".join(words)) > target:
            words.pop()
        out.append(" ".join(words))
    return out


def gemm_gflops(m: int = 1024, k: int = 1024, n: int = 3072, seconds: float = 1.0, device=mx.cpu) -> float:
    """This machine's fp32 matmul rate on `device`, GFLOP/s: the roofline for a dense fp32 model.

    The shape is the 0.6B model's MLP projection for 1024 tokens, so it is the GEMM the model spends its time in.
    """
    with mx.stream(device):
        a = mx.random.normal((m, k))
        b = mx.random.normal((k, n))
        mx.eval(a, b, a @ b)  # warm-up: BLAS threads start, buffers allocate
        runs, start = 0, time.perf_counter()
        while runs < 1 or time.perf_counter() - start < seconds:
            mx.eval(a @ b)
            runs += 1
        elapsed = time.perf_counter() - start
    return 2 * m * k * n * runs / elapsed / 1e9


def linear_params(args: ModelArgs) -> int:
    """Weights of every matmul outside the embedding table (q, k, v, o, gate, up, down of each layer)."""
    D, F = args.hidden_size, args.intermediate_size
    q = args.num_attention_heads * args.head_dim
    kv = args.num_key_value_heads * args.head_dim
    return args.num_hidden_layers * (D * q + 2 * D * kv + q * D + 3 * D * F)


def forward_flops(args: ModelArgs, lengths: Sequence[int]) -> float:
    """FLOPs of the useful work for texts of these token counts, each alone (no padding).

    Per token: 2 x linear_params (a multiply and an add per weight), plus, per layer, attention's two products
    (q.k and p.v, 2 FLOPs each per element of the query width) over the (i+1) keys a causal token i sees:
    4 x hidden_q x (i+1), which summed over a text of n tokens is 2 x hidden_q x n x (n+1).
    """
    q = args.num_attention_heads * args.head_dim
    dense = 2 * linear_params(args) * sum(lengths)
    attention = args.num_hidden_layers * sum(2 * q * n * (n + 1) for n in lengths)
    return float(dense + attention)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), interpolated between the nearest ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def measure(embedder: EmbeddingModel, texts: Sequence[str], *, rounds: int = 3, queries: Sequence[str] = QUERIES,
            query_repeats: int = 3, batch_tokens: Optional[int] = None, gemm_seconds: float = 1.0) -> dict:
    """Time `embedder` on `texts` (a corpus) and on single queries; returns a JSON-ready dict.

    throughput: the median of `rounds` full passes over the corpus; latency: each query alone, `query_repeats`
    times, with its instruction as a retrieval query carries one.
    """
    if rounds < 1 or query_repeats < 1 or not texts or not queries:
        raise ValueError(f"need rounds >= 1, query_repeats >= 1 and some texts and queries, got rounds={rounds}, "
                         f"query_repeats={query_repeats}, {len(texts)} texts, {len(queries)} queries")
    lengths = [len(p) for p in embedder.prepare_inputs(list(texts))]
    embedder.embed(list(texts[:8]), batch_tokens=batch_tokens)  # warm-up
    embedder.embed(queries[0], instruction=DEFAULT_INSTRUCTION)
    mx.reset_peak_memory()

    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        embedder.embed(list(texts), batch_tokens=batch_tokens)  # returns numpy: evaluation is inside the clock
        seconds.append(time.perf_counter() - start)
    latencies = []
    for _ in range(query_repeats):
        for query in queries:
            start = time.perf_counter()
            embedder.embed(query, instruction=DEFAULT_INSTRUCTION)
            latencies.append(time.perf_counter() - start)

    corpus_seconds = statistics.median(seconds)
    tokens = sum(lengths)
    flops = forward_flops(embedder.describe()["decoder"], lengths)
    gemm = gemm_gflops(seconds=gemm_seconds, device=embedder.device.stream)
    achieved = flops / corpus_seconds / 1e9
    return {
        "model": embedder.name,
        "device": embedder.device.device,
        "dtype": str(embedder.device.dtype).replace("mlx.core.", ""),
        "blas": blas() if embedder.device.device == "cpu" else "n/a (gpu)",
        "kernels": embedder.device.kernels.describe(),
        "batch_tokens": batch_tokens or embedder.device.batch_tokens,
        "texts": len(lengths),
        "tokens": tokens,
        "mean_tokens": tokens / len(lengths),
        "rounds": rounds,
        "corpus_seconds": corpus_seconds,
        "tokens_per_s": tokens / corpus_seconds,
        "texts_per_s": len(lengths) / corpus_seconds,
        "query_p50_ms": 1000 * percentile(latencies, 50),
        "query_p95_ms": 1000 * percentile(latencies, 95),
        "queries_timed": len(latencies),
        "flops_per_token": flops / tokens,
        "achieved_gflops": achieved,
        "gemm_gflops": gemm,
        "roofline_fraction": achieved / gemm,
        "peak_mlx_memory_mb": mx.get_peak_memory() / 2**20,
        "peak_rss_mb": peak_rss_mb(),
    }


def table(result: dict) -> str:
    """The measurement as aligned `name  value` lines for a terminal."""
    rows = [
        ("model", result["model"]),
        ("device / dtype", f"{result['device']} / {result['dtype']}"),
        ("BLAS", result["blas"]),
        ("kernels", result["kernels"]),
        ("corpus", f"{result['texts']} texts, {result['tokens']} tokens (mean {result['mean_tokens']:.0f})"),
        ("batch_tokens", str(result["batch_tokens"])),
        ("load", f"{result.get('load_seconds', float('nan')):.2f} s"),
        ("throughput", f"{result['tokens_per_s']:.1f} tokens/s, {result['texts_per_s']:.2f} texts/s "
                       f"(median of {result['rounds']})"),
        ("query latency", f"p50 {result['query_p50_ms']:.1f} ms, p95 {result['query_p95_ms']:.1f} ms "
                          f"({result['queries_timed']} single queries)"),
        ("compute", f"{result['flops_per_token'] / 1e9:.3f} GFLOP/token, {result['achieved_gflops']:.1f} GFLOP/s"),
        ("fp32 GEMM", f"{result['gemm_gflops']:.1f} GFLOP/s measured -> {100 * result['roofline_fraction']:.0f}% "
                      "of roofline"),
        ("peak memory", f"MLX {result['peak_mlx_memory_mb']:.0f} MB, process RSS {result['peak_rss_mb']:.0f} MB"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
