"""Which checkpoints we convert, with which settings: each a call to `mlx_qwen3_embed.quantize.convert`.

    python convert/recipes.py --list
    python convert/recipes.py Qwen3-Embedding-0.6B-4bit Qwen3-Embedding-0.6B-mixed_4_6 --out ~/models

Needs the original weights (downloaded from the hub, or already in the Hugging Face cache).
"""

import argparse
from pathlib import Path

from mlx_qwen3_embed.quant.quantize import convert

SOURCES = {"0.6B": "Qwen/Qwen3-Embedding-0.6B", "4B": "Qwen/Qwen3-Embedding-4B", "8B": "Qwen/Qwen3-Embedding-8B"}

# Group size 64 and bf16 scales, as the mlx-community conversions. Bits per weight on 0.6B: 4.50 (4bit), 5.22
# (mixed_4_6: embed_tokens and the sensitive v_proj/down_proj at 6), 6.30 (mixed_4_8), 6.50 (6bit), 8.50 (8bit).
SETTINGS = {
    "4bit": dict(bits=4, group_size=64),
    "6bit": dict(bits=6, group_size=64),
    "8bit": dict(bits=8, group_size=64),
    "mixed_4_6": dict(recipe="mixed_4_6", group_size=64),
    "mixed_4_8": dict(recipe="mixed_4_8", group_size=64),
}

# Embedding-distilled 4-bit (DWQ, mlx_qwen3_embed/distill.py) on the shipped calibration set. The 4B and 8B
# recompute blocks in the backward pass to bound memory; the 8B takes smaller steps (bench/results/quality.md
# measured the 0.6B width only: these are starting points).
DWQ = {
    "0.6B": dict(bits=4, group_size=64, dwq=True, steps=300),
    "4B": dict(bits=4, group_size=64, dwq=True, steps=300, checkpoint=True),
    "8B": dict(bits=4, group_size=64, dwq=True, steps=300, checkpoint=True, lr=5e-4, batch_tokens=1024),
}

RECIPES = {f"Qwen3-Embedding-{size}-{name}": (source, dict(settings, dtype="bfloat16"))
           for size, source in SOURCES.items() for name, settings in SETTINGS.items()}
RECIPES |= {f"Qwen3-Embedding-{size}-4bit-dwq": (SOURCES[size], dict(settings, dtype="bfloat16"))
            for size, settings in DWQ.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="recipes to run (default: none; see --list)")
    parser.add_argument("--out", default=".", help="folder to write the converted models into")
    parser.add_argument("--list", action="store_true", help="print the recipes and exit")
    options = parser.parse_args()
    if options.list or not options.names:
        for name, (source, settings) in RECIPES.items():
            print(f"{name:36} {source:28} {settings}")
        return
    unknown = [n for n in options.names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe {unknown[0]}: see --list")
    for name in options.names:
        source, settings = RECIPES[name]
        result = convert(source, str(Path(options.out).expanduser() / name), **settings)
        print(f"{name}: {result['size_bytes'] / 2**20:.1f} MiB, {result['bits_per_weight']:.3f} bits per weight")


if __name__ == "__main__":
    main()
