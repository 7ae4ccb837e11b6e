"""Corpus jobs full of repeated texts: peak memory stays flat as the rows grow 10x (the job keeps a 24-byte digest
map per distinct text and copies repeats from its parts on disk), and only the distinct texts reach the model.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 PYTHONPATH=. \\
        python bench/corpus_dedup_bench.py --rows 20000,200000 --distinct 0.1 --out bench/results/corpus_dedup.md
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_bench import corpus, make_hub_checkpoint  # noqa: E402  (the same texts and tiny checkpoint)

JOB = ("import sys, json, mlx_qwen3_embed as mqe; from mlx_qwen3_embed.corpus import embed_corpus; "
       "s = embed_corpus(mqe.load(sys.argv[1], dtype='float32'), sys.argv[2], sys.argv[3], overwrite=True); "
       "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
       "print(json.dumps({'unique': s.unique, 'duplicates': s.duplicates, 'tokens': s.tokens, 'hwm_kb': int(hwm)}))")


def job(model: Path, rows: int, distinct: int, folder: Path) -> dict:
    """`rows` rows drawn from `distinct` texts (each at least once, the rest at random), in a fresh process."""
    rng = np.random.default_rng(rows)
    texts = corpus(distinct, seed=2)
    order = np.concatenate([np.arange(distinct), rng.integers(0, distinct, rows - distinct)])
    rng.shuffle(order)
    source, output = folder / f"d{rows}.txt", folder / f"d{rows}.npy"
    source.write_text("\n".join(texts[i] for i in order))
    t0 = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", JOB, str(model), str(source), str(output)], capture_output=True,
                           text=True, check=True)
    seconds = time.perf_counter() - t0
    summary = json.loads(child.stdout.splitlines()[-1])
    vectors = np.load(output, mmap_mode="r")
    first = {t: i for i, t in reversed(list(enumerate(texts[k] for k in order)))}
    same = all(np.array_equal(vectors[i], vectors[first[texts[k]]]) for i, k in enumerate(order[:2000]))
    return {"rows": rows, "distinct": distinct, "unique_embedded": summary["unique"],
            "duplicates": summary["duplicates"], "tokens": summary["tokens"], "seconds": seconds,
            "peak_rss_mb": summary["hwm_kb"] / 1024, "repeats_equal_first": same}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="20000,200000")
    parser.add_argument("--distinct", type=float, default=0.1, help="distinct texts as a share of the rows")
    parser.add_argument("--out", default="bench/results/corpus_dedup.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tiny = make_hub_checkpoint(folder / "tiny")
        results = [job(tiny, int(n), int(int(n) * args.distinct), folder) for n in args.rows.split(",")]
    for r in results:
        print(r, file=sys.stderr)
    blas = os.environ.get("LD_PRELOAD", "the wheel's reference BLAS")
    lines = ["# Corpus jobs with repeated texts: memory and model work", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, mlx[cpu], BLAS: {blas}; measured "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Command: `python bench/corpus_dedup_bench.py "
             f"--rows {args.rows} --distinct {args.distinct}` (tiny random model, hidden 64, 2 layers).", "",
             "| rows | distinct texts | embedded | repeats reused | tokens embedded | peak RSS (MB) | seconds |",
             "|---|---|---|---|---|---|---|",
             *[f"| {r['rows']} | {r['distinct']} | {r['unique_embedded']} | {r['duplicates']} | {r['tokens']} | "
               f"{r['peak_rss_mb']:.0f} | {r['seconds']:.0f} |" for r in results], "",
             "Each job runs in a fresh process; peak RSS is the kernel's VmHWM at its end. Every repeat of the first "
             "2000 rows equals its first occurrence's row: "
             f"{all(r['repeats_equal_first'] for r in results)}.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
