"""The speed cost of the up-cast plan: the same checkpoint loaded twice in one process, once with float32 weights
made at load and once keeping its stored weights (bf16 or 4-bit) and up-casting one matrix at a time
(`MLX_QWEN3_EMBED_MEMORY` set below the float32 need), then embedded in alternating rounds, so that both plans
see the same machine conditions. Random weights with the real 0.6B shape (speed does not depend on the values).

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 python bench/upcast_speed.py

Writes bench/results/upcast_speed.md.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from memory import SHAPES, write_checkpoint  # noqa: E402

import mlx_qwen3_embed as mqe  # noqa: E402
from mlx_qwen3_embed.quant import quantize  # noqa: E402
from mlx_qwen3_embed.device import MEMORY_ENV  # noqa: E402


def load(folder: Path, memory: str):
    os.environ[MEMORY_ENV] = memory
    try:
        return mqe.load(str(folder))
    finally:
        del os.environ[MEMORY_ENV]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/mlx-qwen3-embed-upcast")
    parser.add_argument("--texts", type=int, default=8, help="texts of 128 tokens per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lean", default="3GB", help="memory that forces the up-cast plan (float32 needs ~3.6 GB)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "upcast_speed.md"))
    opts = parser.parse_args()
    base = Path(opts.dir)
    src, q4 = base / "random-0.6B-bf16", base / "random-0.6B-4bit"
    if not (src / "config.json").is_file():
        write_checkpoint(src, SHAPES["0.6B"])
    if not q4.exists():
        quantize.convert(str(src), str(q4), bits=4)
    texts = ["word " * 126] * opts.texts  # 128 tokens each with <|endoftext|>
    lines = ["# Speed cost of the up-cast plan (bench/upcast_speed.py)", "",
             f"Random weights, Qwen3-Embedding-0.6B shape; {opts.texts} texts of 128 tokens per round, "
             f"median of {opts.rounds} alternating rounds after a warm-up; {platform.machine()}, {os.cpu_count()} "
             "cores, MLX CPU backend.", "",
             "| checkpoint | float32 at load: tokens/s | up-cast per matrix: tokens/s | up-cast vs float32 |", "|---|---|---|---|"]
    for name, folder in (("bf16 (hub)", src), ("4-bit (mlx-community layout)", q4)):
        models = {"float32": load(folder, "1000GB"), "upcast": load(folder, opts.lean)}
        assert not models["float32"].device.upcast and models["upcast"].device.upcast
        tokens = sum(map(len, models["float32"].tokenize(texts)))
        times = {plan: [] for plan in models}
        for model in models.values():
            model.embed(texts[:2])  # warm-up
        for _ in range(opts.rounds):
            for plan, model in models.items():
                start = time.perf_counter()
                model.embed(texts)
                times[plan].append(time.perf_counter() - start)
        speed = {plan: tokens / statistics.median(t) for plan, t in times.items()}
        change = 100 * (speed["upcast"] / speed["float32"] - 1)
        lines.append(f"| {name} | {speed['float32']:.1f} | {speed['upcast']:.1f} | {change:+.0f}% tokens/s |")
        del models
    Path(opts.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
