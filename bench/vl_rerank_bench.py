"""Qwen3-VL-Reranker speed, this package against transformers running the official recipe on the same random
weights, in one process, alternating rounds: pairs/s for text documents and for image documents against one text
query. Writes bench/results/vl_rerank.md.

    python bench/vl_rerank_bench.py                       # text 256 wide x 4 layers, vision 128 x 2 (minutes)
    python bench/vl_rerank_bench.py --text-docs 8 --image-docs 4 --rounds 2   # quicker

The checkpoint is tests/vl_fixtures.py's make_vl_reranker_checkpoint at a bigger shape than the tests' (the
fixture's config builder is given the widths below), and transformers runs the recipe through the tests'
RerankReference: the official Qwen3VLReranker's conversation, chat template, truncation and yes - no direction,
one pair at a time as its `process` scores them; ours packs pairs by token count. Speed does not depend on the
weights' values, so random weights stand in for real ones (not downloadable here). Both run fp32 on the CPU.

Threads: MLX's CPU matmuls need the OpenBLAS the script preloads (LD_PRELOAD, as the CLI does), and in the same
process torch's BLAS calls then reach it too; torch's two OpenMP threads over OpenBLAS's own threads oversubscribe
a small machine (a 400x256 by 256x768 linear ran 4-5x slower with 2 torch threads than with 1 on 2 cores). So
torch runs 1 thread by default; `OPENBLAS_NUM_THREADS=1` puts MLX on one thread too (equal footing), and
`--torch-threads 0 --no-preload` shows torch at its own default with MLX on the slow reference BLAS.
"""

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mlx_qwen3_embed.blas import reexec_env  # noqa: E402  (ctypes only: MLX is not imported yet)

# head_dim 64: the rotary sections cover its 32 frequencies, in the 2B's proportions (24, 20, 20 of 64)
TEXT = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=64, rope_scaling={"rope_type": "default", "mrope_interleaved": True,
                                                              "mrope_section": [12, 10, 10]})
VISION = dict(depth=2, hidden_size=128, intermediate_size=512, num_heads=2, out_hidden_size=256,
              deepstack_visual_indexes=[0, 1])
QUERY = "which passage or picture shows how the reranker reads a scanned page"
WORDS = ("retrieval augmented generation reads scanned pages slides diagrams photos tables charts receipts "
         "invoices screenshots of code and handwritten notes about the quarterly revenue").split()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--text-docs", type=int, default=16)
    parser.add_argument("--words", type=int, default=60, help="words per text document")
    parser.add_argument("--image-docs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=448, help="px a side (448: 196 image tokens)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="0: torch's own choice (see the module docstring for why 1 is the default)")
    parser.add_argument("--no-preload", action="store_true",
                        help="leave MLX on the BLAS it has (on Linux the slow reference one): torch's threads then "
                             "run as in a process of their own")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "vl_rerank.md"))
    a = parser.parse_args()
    env = None if a.no_preload else reexec_env()
    if env is not None:  # OpenBLAS for MLX's CPU matmuls, as the CLI does
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    workdir = Path(tempfile.mkdtemp(prefix="vl_rerank_bench_"))
    try:
        run(a, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def make_checkpoint(folder: Path) -> Path:
    """make_vl_reranker_checkpoint at the bench's shape: its config builder, given TEXT and VISION."""
    import vl_fixtures

    tests_config = vl_fixtures.vl_config

    def bigger(ids, vision_overrides=None, **text_overrides):
        return tests_config(ids, {**VISION, **(vision_overrides or {})}, **{**TEXT, **text_overrides})

    vl_fixtures.vl_config = bigger
    try:
        return vl_fixtures.make_vl_reranker_checkpoint(folder)
    finally:
        vl_fixtures.vl_config = tests_config


def run(a, workdir: Path):
    import mlx.core as mx
    import numpy as np
    import torch
    from PIL import Image

    import mlx_qwen3_embed as mqe
    from mlx_qwen3_embed.blas import blas
    from vl_fixtures import RerankReference

    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    folder = make_checkpoint(workdir / "Qwen3-VL-Reranker-bench")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, a.words)) for _ in range(a.text_docs)]
    side = a.image_size
    photos = [Image.fromarray(rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)).resize((side, side))
              for _ in range(a.image_docs)]

    ours = mqe.load_reranker(str(folder), dtype="float32")
    reference = RerankReference(folder)
    suites = {"text": texts, "image": [{"image": p} for p in photos]}
    tokens = {kind: sum(len(p) for p in ours.prepare_pairs([(QUERY, d) for d in docs]))
              for kind, docs in suites.items()}
    runs = {"mlx_qwen3_embed": lambda docs: ours.score(QUERY, docs),
            "transformers (recipe)": lambda docs: reference.score(
                [(QUERY, {"images": [d["image"]]} if isinstance(d, dict) else d) for d in docs])}
    times = {name: {kind: [] for kind in suites} for name in runs}
    for score in runs.values():  # warm-up: MLX's first graphs, torch's first kernels
        for docs in suites.values():
            with torch.no_grad():
                score(docs[:2])
    scores = {}
    for _ in range(a.rounds):  # alternating: a change in the machine's load hits both systems alike
        for name, score in runs.items():
            for kind, docs in suites.items():
                with torch.no_grad():
                    start = time.perf_counter()
                    scores[name, kind] = score(docs)
                    times[name][kind].append(time.perf_counter() - start)
    gap = max(float(np.abs(scores["mlx_qwen3_embed", k] - scores["transformers (recipe)", k]).max())
              for k in suites)

    blas_threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    lines = ["# Qwen3-VL-Reranker speed: text 256 wide x 4 layers, vision 128 wide x 2 (random weights)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"MLX {mx.__version__} (CPU, {blas()}, OPENBLAS_NUM_THREADS={blas_threads}), "
             f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
             f"fp32; median of {a.rounds} alternating rounds after a warm-up on 2 pairs of each kind.",
             f"One text query; {a.text_docs} text documents of {a.words} words ({tokens['text']} tokens as pairs), "
             f"{a.image_docs} image documents of {side}x{side} px ({tokens['image']} tokens as pairs). "
             f"Largest |score difference| between the two systems: {gap:.1e}.", "",
             "| system | text pairs/s | text tokens/s | image pairs/s | image tokens/s |", "|---|---:|---:|---:|---:|"]
    for name, t in times.items():
        text, image = statistics.median(t["text"]), statistics.median(t["image"])
        lines.append(f"| {name} | {a.text_docs / text:.1f} | {tokens['text'] / text:.0f} | "
                     f"{a.image_docs / image:.1f} | {tokens['image'] / image:.0f} |")
    ratio = lambda kind: statistics.median(times["transformers (recipe)"][kind]) / \
        statistics.median(times["mlx_qwen3_embed"][kind])
    lines += ["", f"mlx_qwen3_embed / transformers: {ratio('text'):.2f}x on text pairs, {ratio('image'):.2f}x on "
                  "image pairs."]
    text = "\n".join(lines) + "\n"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
