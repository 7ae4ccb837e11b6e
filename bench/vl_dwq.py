"""DWQ for Qwen3-VL on a random checkpoint bigger than the tests' (no download): held-out mean and worst
cosine to the float model for round-to-nearest, DWQ of the text decoder, and DWQ of the decoder and the vision
tower, on held-out texts (mlx_qwen3_embed/data/calibration/heldout.jsonl) and synthetic held-out images
(vl_distill.heldout_items: a random stream of their own), with each conversion's wall time.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        nice -n 19 python bench/vl_dwq.py --text-hidden 256 --text-layers 4 --vision-hidden 128 --vision-layers 4

Writes bench/results/vl_dwq.md (and prints it). Each conversion goes through mlx_qwen3_embed.vl_quantize.convert_vl,
vectors through mlx_qwen3_embed.load (the saved checkpoints, dequantized fp32).
"""

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' random Qwen3-VL checkpoint writer

import mlx_qwen3_embed as mqe  # noqa: E402
from mlx_qwen3_embed.blas import blas  # noqa: E402
from mlx_qwen3_embed.quant.vl_distill import heldout_items  # noqa: E402
from mlx_qwen3_embed.quant.vl_quantize import convert_vl  # noqa: E402
from vl_fixtures import make_vl_checkpoint  # noqa: E402

VARIANTS = {"rtn": {}, "dwq": dict(dwq=True), "dwq+vision": dict(dwq=True, vision_dwq=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-hidden", type=int, default=256)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--vision-hidden", type=int, default=128)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--vision-bits", type=int, default=8, help="0: the vision tower stays float")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "vl_dwq.md"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vl-dwq-"))
    t, v = args.text_hidden, args.vision_hidden
    src = make_vl_checkpoint(work / "src", vision_overrides=dict(
        depth=args.vision_layers, hidden_size=v, intermediate_size=4 * v, num_heads=max(1, v // 64),
        out_hidden_size=t, deepstack_visual_indexes=[0, 1]), hidden_size=t, intermediate_size=3 * t,
        num_hidden_layers=args.text_layers, num_attention_heads=max(2, t // 64), num_key_value_heads=max(1, t // 128),
        head_dim=64, rope_scaling={"rope_type": "default", "mrope_interleaved": True, "mrope_section": [12, 10, 10]})
    items = heldout_items()
    image = np.array(["image" in i for i in items])
    reference = mqe.load(str(src)).embed(items)
    rows = []
    for name in args.variants.split(","):
        settings = {}
        if name != "rtn":
            settings = dict(VARIANTS[name], steps=args.steps, batch_tokens=args.batch_tokens,
                            callback=lambda step, loss: print(f"{name} step {step}: loss {loss:.5f}", flush=True)
                            if step % 10 == 0 else None)
        start = time.perf_counter()
        result = convert_vl(str(src), str(work / name), bits=args.bits, group_size=args.group_size,
                            vision_bits=args.vision_bits or None, **settings)
        seconds = time.perf_counter() - start
        cos = (mqe.load(str(work / name)).embed(items) * reference).sum(1)
        report = result.get("dwq")
        rows.append((name, cos, seconds, report))
        print(name, f"{seconds:.0f} s", report.summary() if report else "", flush=True)

    rtn = next((cos for name, cos, _, _ in rows if name == "rtn"), None)
    lines = [f"# DWQ for Qwen3-VL: random checkpoint, text {t} wide x {args.text_layers} layers, vision {v} wide x "
             f"{args.vision_layers} blocks", "",
             f"Machine: {platform.machine()}, {platform.python_version()}, BLAS {blas()}; {args.bits}-bit decoder, "
             f"group size {args.group_size}, vision tower {f'{args.vision_bits}-bit' if args.vision_bits else 'float'}; "
             f"DWQ --steps {args.steps} --batch-tokens {args.batch_tokens} (the converter's defaults: 300 / 2048).",
             f"Held out: {int((~image).sum())} items without an image (heldout.jsonl's texts and image captions as "
             f"queries) and {int(image.sum())} with a synthetic image, none of them in calibration. Cosine to the "
             "float model's vectors through `mqe.load` of each saved folder.", "",
             "| conversion | mean 1-cos, all | cut vs RTN | worst cos | mean 1-cos, texts | mean 1-cos, images | "
             "worst image cos | kept | time |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name, cos, seconds, report in rows:
        cut = f"{1 - (1 - cos).mean() / (1 - rtn).mean():.0%}" if rtn is not None and name != "rtn" else ""
        lines.append(f"| {name} | {(1 - cos).mean():.2e} | {cut} | {cos.min():.5f} | {(1 - cos[~image]).mean():.2e} | "
                     f"{(1 - cos[image]).mean():.2e} | {cos[image].min():.5f} | "
                     f"{report.kept + f' (step {report.best_step})' if report else ''} | {seconds:.0f} s |")
    lines += ["", "Command: `" + " ".join(["python", "bench/vl_dwq.py", *sys.argv[1:]]) + "`"]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
