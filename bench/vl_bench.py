"""Qwen3-VL-Embedding speed, this package against transformers on the same random weights, in one process:
images/s (448x448 photos, 196 LLM tokens each) and text tokens/s, with the real 2B widths (text 2048 wide,
vision 1024 wide). Writes bench/results/vl_bench.md.

    python bench/vl_bench.py                                # the full 2B depth: ~17 GB of fp32 weights
    python bench/vl_bench.py --text-layers 4 --vision-layers 6   # a slice of it, to fit a small machine

Speed does not depend on the weights' values, so random weights stand in for the real ones (which cannot be
downloaded here); fewer layers scale both systems' time alike, the widths (and so the per-layer kernels) are the
2B's. Both run fp32 on the CPU: MLX through OpenBLAS (preloaded), torch with its own threads.
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mlx_qwen3_embed.blas import reexec_env  # noqa: E402  (ctypes only: MLX is not imported yet)

TEXT_2B = dict(hidden_size=2048, intermediate_size=6144, num_attention_heads=16, num_key_value_heads=8,
               head_dim=128, rope_scaling={"rope_type": "default", "mrope_interleaved": True,
                                           "mrope_section": [24, 20, 20]})
VISION_2B = dict(hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--text-layers", type=int, default=28)
    parser.add_argument("--vision-layers", type=int, default=24)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "vl_bench.md"))
    a = parser.parse_args()
    env = reexec_env()
    if env is not None:  # OpenBLAS for MLX's CPU matmuls, as the CLI does
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    depth = a.vision_layers
    deepstack = sorted({depth * k // 4 for k in (1, 2, 3)} - {depth})[: a.text_layers]
    workdir = Path(tempfile.mkdtemp(prefix="vl_bench_"))
    try:
        run(a, workdir, deepstack)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # gigabytes of random weights


def run(a, workdir: Path, deepstack: list):
    import numpy as np
    import torch
    from PIL import Image

    import mlx_qwen3_embed as mqe
    from vl_fixtures import Reference, make_vl_checkpoint

    depth = a.vision_layers
    folder = make_vl_checkpoint(workdir / "Qwen3-VL-Embedding-2B-shape", num_hidden_layers=a.text_layers,
                                intermediate_size=TEXT_2B["intermediate_size"],
                                vision_overrides={**VISION_2B, "depth": depth, "deepstack_visual_indexes": deepstack},
                                **{k: v for k, v in TEXT_2B.items() if k != "intermediate_size"})
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)).resize((448, 448))
              for _ in range(a.images)]
    words = "retrieval augmented generation reads scanned pages slides diagrams and photos".split()
    texts = [" ".join(rng.choice(words, 60)) for _ in range(a.texts)]

    ours = mqe.load(str(folder), dtype="float32")
    reference = Reference(folder)
    tokens = sum(len(ours.prepare(t).ids) for t in texts)
    image_tokens = sum(len(ours.prepare({"image": p}).ids) for p in photos)
    runs = {"mlx_qwen3_embed": (lambda items: ours.embed(items)),
            "transformers": (lambda items: reference.embed([{"images": [i["image"]]} if isinstance(i, dict)
                                                            else {"text": i} for i in items]))}
    results = {name: {"images": [], "texts": []} for name in runs}
    check = {}
    for _ in range(a.rounds):
        for name, run in runs.items():
            with torch.no_grad():
                start = time.perf_counter()
                check[name] = run([{"image": p} for p in photos])
                results[name]["images"].append(time.perf_counter() - start)
                start = time.perf_counter()
                run(texts)
                results[name]["texts"].append(time.perf_counter() - start)
    cosine = float((check["mlx_qwen3_embed"] * check["transformers"]).sum(-1).min())
    lines = [f"# Qwen3-VL-Embedding speed: 2B widths, {a.text_layers}/28 text and {depth}/24 vision layers",
             "", f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
             f"torch {torch.__version__} ({torch.get_num_threads()} threads); fp32 on CPU; best of {a.rounds}.",
             f"{a.images} images of 448x448 px ({image_tokens} tokens with the prompt), {a.texts} texts "
             f"({tokens} tokens). Minimum cosine of the two systems' image vectors: {cosine:.6f}.", "",
             "| system | images/s | text tokens/s |", "|---|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {a.images / min(r['images']):.2f} | {tokens / min(r['texts']):.0f} |")
    text = "\n".join(lines) + "\n"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
