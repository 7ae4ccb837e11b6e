"""Peak memory of `mlx-embed convert SRC DST --bits 4 --dwq` against the bound the converter plans with
(distill_memory.memory_need), on random bf16 checkpoints at the real 0.6B width and vocabulary.

    python bench/dwq_memory.py --layers 2,4 --steps 2          # each run in a fresh process, peak RSS (VmHWM)
    python bench/dwq_memory.py --layers 28 --steps 2           # the real 0.6B shape (1.2 GB of disk)

Calibration: the shipped texts that fill max_length (512) tokens under the checkpoint's tokenizer, so every
training batch is as large as --batch-tokens allows (the worst case for activations). Peak memory is reached in the
first steps (teacher pass, then the first backward pass), so a couple of steps measure it. Writes
bench/results/dwq_memory.json and prints a Markdown row per run. Run with
LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 on Linux.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from memory import SHAPES, write_checkpoint  # noqa: E402

from mlx_qwen3_embed.models.args import ModelArgs  # noqa: E402
from mlx_qwen3_embed.quant.distill import CALIBRATION, read_calibration  # noqa: E402
from mlx_qwen3_embed.quant.distill_memory import memory_need  # noqa: E402
from mlx_qwen3_embed.tokenizer import Tokenizer  # noqa: E402

GB = 1 << 30


def long_calibration(folder: Path, path: Path, max_length: int = 512) -> int:
    """Write the shipped calibration records whose text fills `max_length` tokens; returns their count."""
    tokenizer = Tokenizer(folder)
    lines = CALIBRATION.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if len(tokenizer.encode([json.loads(line)["text"]], 10**6)[0]) >= max_length]
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return len(kept)


def peak_of(command: list[str]) -> tuple[int, float]:
    """(peak RSS in bytes, seconds) of `command` in a fresh process (the child's VmHWM via getrusage)."""
    import resource

    start = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="2,4")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--checkpoint", action="store_true", help="also pass --checkpoint to the converter")
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "mlx-embed-dwq-memory"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "dwq_memory.json"))
    parser.add_argument("--report", action="store_true", help="only rewrite dwq_memory.md from the json")
    opts = parser.parse_args()
    work = Path(opts.dir)
    out = Path(opts.out)
    results = json.loads(out.read_text()) if out.is_file() else []
    for layers in [] if opts.report else [int(x) for x in opts.layers.split(",")]:
        src = work / f"w1024-{layers}L-bf16"
        if not (src / "config.json").is_file():
            write_checkpoint(src, {**SHAPES["0.6B"], "num_hidden_layers": layers})
        calibration = work / "long.jsonl"
        texts = long_calibration(src, calibration)
        dst = work / f"dwq-{layers}L-{os.getpid()}"
        command = [shutil.which("mlx-embed") or "mlx-embed", "convert", str(src), str(dst), "--bits", "4",
                   "--dwq", "--steps", str(opts.steps), "--batch-tokens", str(opts.batch_tokens),
                   "--calibration", str(calibration)] + (["--checkpoint"] if opts.checkpoint else [])
        peak, seconds = peak_of_fresh(command)
        tokens = sum(len(ids) for ids in Tokenizer(src).encode(read_calibration(calibration), 512))
        row = dict(layers=layers, steps=opts.steps, batch_tokens=opts.batch_tokens, checkpoint=opts.checkpoint,
                   calibration_texts=texts, calibration_tokens=tokens, peak_gb=round(peak / GB, 2),
                   seconds=round(seconds), load_average=round(os.getloadavg()[0], 1))
        results = [r for r in results if (r["layers"], r["batch_tokens"], r["checkpoint"]) !=
                   (layers, opts.batch_tokens, opts.checkpoint)] + [row]
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(out)
        subprocess.run(["rm", "-rf", str(dst)], check=True)
    report(results, out)


def bound(row: dict, layers: int = None) -> dict:
    """The converter's plan (distill_memory.memory_need) for a measured row, or for the same run at `layers`."""
    shape = {k: v for k, v in SHAPES["0.6B"].items() if k != "max_position_embeddings"}
    args = ModelArgs(**{**shape, "num_hidden_layers": layers or row["layers"]})
    return memory_need(args, bits=4, group_size=64, batch_tokens=row["batch_tokens"], max_length=512,
                       calibration_tokens=row["calibration_tokens"], checkpoint=row["checkpoint"])


def report(results: list[dict], out: Path) -> None:
    """dwq_memory.md: measured peak against the plan, and the plan for the real 0.6B's 28 layers."""
    lines = ["# Peak memory of `mlx-embed convert SRC DST --bits 4 --dwq` (CPU)", "",
             "Random bf16 checkpoints at the Qwen3-Embedding-0.6B width and vocabulary (hidden 1024, intermediate "
             "3072, 16/8 heads, vocab 151,669) with fewer layers; calibration: the shipped texts that fill 512 "
             "tokens, so every training batch is full (4 x 512 tokens at --batch-tokens 2048); 2 steps (the peak "
             "comes with the teacher pass and the first backward pass). Peak: VmHWM of the converter's process. "
             "Plan: what the converter estimates before loading (mlx_qwen3_embed/distill_memory.py) and refuses "
             "above. Machine: x86_64, 2 cores shared (load average beside the seconds), MLX "
             f"{__import__('mlx.core').core.__version__}.", "",
             "| layers | batch tokens | --checkpoint | peak RSS (GB) | plan (GB) | seconds (load) |",
             "|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["checkpoint"], r["layers"])):
        lines.append(f"| {r['layers']} | {r['batch_tokens']} | {'yes' if r['checkpoint'] else 'no'} | "
                     f"{r['peak_gb']:.2f} | {bound(r)['total'] / GB:.2f} | {r['seconds']} ({r['load_average']}) |")
    lines += ["", "Plan for the real 0.6B (28 layers), same batches: " + "; ".join(
        f"{'with' if r['checkpoint'] else 'without'} --checkpoint {bound(r, 28)['total'] / GB:.1f} GB"
        for r in {r["checkpoint"]: r for r in results}.values()) + "."]
    plain = sorted((r["layers"], r["peak_gb"]) for r in results if not r["checkpoint"])
    if len(plain) >= 2:  # measured growth per layer, carried to 28 layers, next to the plan
        (l0, p0), (l1, p1) = plain[0], plain[-1]
        slope = (p1 - p0) / (l1 - l0)
        lines.append(f"Measured growth without --checkpoint: {slope:.3f} GB a layer ({l0} -> {l1} layers), so "
                     f"about {p1 + slope * (28 - l1):.1f} GB at 28 layers, under the plan.")
    lines += ["", "Command: `python bench/dwq_memory.py --layers 2,4,8 --steps 2`, and `--layers 8 --checkpoint`.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


def peak_of_fresh(command: list[str]) -> tuple[int, float]:
    """peak_of in a fresh Python process, so that each run's peak is its own (RUSAGE_CHILDREN keeps the maximum)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); from dwq_memory import peak_of; "
            f"print(*peak_of({command!r}))")
    peak, seconds = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                   text=True).stdout.split()
    return int(peak), float(seconds)


if __name__ == "__main__":
    main()
