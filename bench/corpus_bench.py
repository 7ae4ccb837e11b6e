"""Corpus jobs, measured on small random-weight checkpoints (no download): the job's overhead against one
Embedder.embed call on the same texts, the job's peak memory for a small and a large corpus, and recall@10 of each
precision against float32 on a retrieval set.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 PYTHONPATH=. \\
        python bench/corpus_bench.py --texts 100000 --memory 10000,200000 --out bench/results/corpus.md

Random weights make the vectors meaningless as semantics, but throughput, memory and the precisions' fidelity to
float32 (what recall@10 against float32's own top 10 measures) do not depend on that.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_hub_checkpoint  # noqa: E402  (the tests' tiny checkpoint builder)

WORDS = ("apple silicon array framework vector index passage query retrieval model token layer attention "
         "memory window resume rank ring gather corpus embedding cosine search document answer language").split()


def corpus(n: int, seed: int = 0) -> list[str]:
    """n distinct texts of 4..60 words (about 6..80 tokens), like short passages."""
    rng = np.random.default_rng(seed)
    return [f"{i}: " + " ".join(rng.choice(WORDS, rng.integers(4, 61))) for i in range(n)]


def throughput(model: Path, n: int, folder: Path) -> dict:
    import mlx_qwen3_embed as mqe
    from mlx_qwen3_embed.corpus.job import embed_corpus

    texts = corpus(n)
    (folder / "t.txt").write_text("\n".join(texts))
    embedder = mqe.load(str(model), dtype="float32")
    embedder.embed(texts[:512])  # warm up
    t0 = time.perf_counter()
    reference = embedder.embed(texts)
    one_call = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = embed_corpus(embedder, folder / "t.txt", folder / "t.npy", overwrite=True)
    job = time.perf_counter() - t0
    same = float(np.abs(np.load(folder / "t.npy") - reference).max())
    return {"texts": n, "tokens": summary.tokens, "embed_s": one_call, "job_s": job, "max_abs_diff": same}


def peak_rss(model: Path, n: int, folder: Path) -> dict:
    """The job in a fresh process; its peak RSS is the kernel's VmHWM of that process, read at its end.

    (Not ru_maxrss: on Linux it keeps the forking parent's RSS across exec, which would report this script.)
    """
    (folder / f"m{n}.txt").write_text("\n".join(corpus(n, seed=1)))
    code = ("import sys, mlx_qwen3_embed as mqe; from mlx_qwen3_embed.corpus import embed_corpus; "
            "embed_corpus(mqe.load(sys.argv[1], dtype='float32'), sys.argv[2], sys.argv[3], overwrite=True); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    t0 = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", code, str(model), str(folder / f"m{n}.txt"),
                            str(folder / f"m{n}.npy")], capture_output=True, text=True, check=True)
    return {"texts": n, "peak_rss_mb": int(child.stdout.split()[-1]) / 1024, "seconds": time.perf_counter() - t0,
            "input_mb": (folder / f"m{n}.txt").stat().st_size / 2**20,
            "output_mb": (folder / f"m{n}.npy").stat().st_size / 2**20}


def recall(model: Path, docs: int, queries: int, folder: Path) -> list[dict]:
    """Queries are word subsets of documents; each precision's top 10 against float32's top 10."""
    import mlx_qwen3_embed as mqe
    from mlx_qwen3_embed import precision as P
    from mlx_qwen3_embed.corpus.job import embed_corpus

    texts = corpus(docs, seed=2)
    (folder / "docs.txt").write_text("\n".join(texts))
    rng = np.random.default_rng(3)
    asked = []
    for i in rng.choice(docs, queries, replace=False):
        words = texts[i].split()[1:]
        asked.append(" ".join(rng.choice(words, max(2, len(words) // 2), replace=False)))
    # the cache holds the documents' float32 vectors: each precision's job reuses them (equal to fresh ones)
    embedder = mqe.load(str(model), dtype="float32", cache_size=docs)
    q = embedder.embed(asked)
    rows = []
    truth = None
    for precision in P.PRECISIONS:
        out = folder / f"docs.{precision}.npy"
        embed_corpus(embedder, folder / "docs.txt", out, precision=precision, overwrite=True)
        codes = np.load(out)
        meta = json.loads(Path(f"{out}.meta.json").read_text())
        if precision in ("binary", "ubinary"):
            # Hamming distance between packed sign bits (the queries' bits made the same way)
            qb = np.unpackbits(np.packbits(q > 0, axis=-1), axis=-1).astype(np.int16)
            db = np.unpackbits(codes.view(np.uint8) if precision == "ubinary"
                               else (codes.astype(np.int16) + 128).astype(np.uint8), axis=-1).astype(np.int16)
            scores = -(qb.sum(1, keepdims=True) + db.sum(1)[None] - 2 * qb @ db.T)
        elif precision in ("int8", "uint8"):
            scores = q @ P.dequantize(codes, precision, np.array(meta["ranges"])).T
        else:
            scores = q @ codes.astype(np.float32).T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        if truth is None:
            truth = top
        hit = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, truth)])
        rows.append({"precision": precision, "recall_at_10": float(hit), "bytes_per_vector": codes[0].nbytes})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=100_000)
    parser.add_argument("--memory", default="10000,200000")
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", default="bench/results/corpus.md")
    parser.add_argument("--parts", default="speed,memory,recall",
                        help="what to measure now; the others come from the .json saved beside --out")
    args = parser.parse_args()
    saved = Path(args.out).with_suffix(".json")
    results = json.loads(saved.read_text()) if saved.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tiny = make_hub_checkpoint(folder / "tiny")  # hidden 64, 2 layers: the job's overhead shows, not the model
        wide = make_hub_checkpoint(folder / "wide", hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
                                   num_key_value_heads=8, head_dim=64)  # Qwen3-Embedding-0.6B's width, 2 layers
        for part in args.parts.split(","):
            if part == "speed":
                results["speed"] = throughput(tiny, args.texts, folder)
            elif part == "memory":
                results["memory"] = [peak_rss(tiny, int(n), folder) for n in args.memory.split(",")]
            else:
                results["recall"] = recall(wide, args.docs, args.queries, folder)
            results[part + "_measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            print(results[part], file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(results, indent=1))
    speed, memory, quality = results["speed"], results["memory"], results["recall"]
    blas = os.environ.get("LD_PRELOAD", "the wheel's reference BLAS")
    lines = [
        "# Corpus jobs: overhead, memory, precision recall", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, mlx[cpu], BLAS: {blas}; measured "
        + ", ".join(f"{k.split('_')[0]} {v}" for k, v in results.items() if k.endswith("_measured"))
        + f". Command: `python bench/corpus_bench.py --texts {args.texts} --memory {args.memory} "
        f"--docs {args.docs} --queries {args.queries}`.", "",
        "## Job vs one `Embedder.embed` call (tiny random model: hidden 64, 2 layers)", "",
        "| texts | tokens | one embed call (s) | corpus job (s) | job overhead | max abs diff |",
        "|---|---|---|---|---|---|",
        f"| {speed['texts']} | {speed['tokens']} | {speed['embed_s']:.1f} | {speed['job_s']:.1f} | "
        f"{100 * (speed['job_s'] / speed['embed_s'] - 1):+.0f}% | {speed['max_abs_diff']:.1e} |", "",
        "The job also scans the input (count, digest, validation), writes each window to disk and assembles the "
        "output; the embed call holds every text and vector in memory and writes nothing.", "",
        "## Peak memory of a job (fresh process, the kernel's VmHWM at its end)", "",
        "| texts | input (MB) | output (MB) | peak RSS (MB) | seconds |", "|---|---|---|---|---|",
        *[f"| {m['texts']} | {m['input_mb']:.1f} | {m['output_mb']:.1f} | {m['peak_rss_mb']:.0f} | "
          f"{m['seconds']:.0f} |" for m in memory], "",
        f"## recall@10 against float32 ({args.docs} documents, {args.queries} queries; random model 1024 wide, "
        "2 layers)", "",
        "| precision | recall@10 vs float32 | bytes per vector |", "|---|---|---|",
        *[f"| {r['precision']} | {r['recall_at_10']:.3f} | {r['bytes_per_vector']} |" for r in quality], "",
        "int8/uint8 documents are scored as their dequantized bucket starts with float32 queries (ranges from the "
        "job's first window, kept in x.npy.meta.json); binary/ubinary by Hamming distance of sign bits.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
