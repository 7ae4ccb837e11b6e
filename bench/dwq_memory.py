"""Peak memory of `mlx-embed convert SRC DST --bits 4 --dwq` against the bound the converter plans with
(distill.memory_need), on random bf16 checkpoints at the real 0.6B width and vocabulary.

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

from mlx_qwen3_embed.distill import CALIBRATION
from mlx_qwen3_embed.distill_memory import memory_need  # noqa: E402
from mlx_qwen3_embed.tokenizer import Tokenizer  # noqa: E402
from mlx_qwen3_embed.weights import read_config  # noqa: E402

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
    opts = parser.parse_args()
    work = Path(opts.dir)
    out = Path(opts.out)
    results = json.loads(out.read_text()) if out.is_file() else []
    for layers in [int(x) for x in opts.layers.split(",")]:
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
        bound = memory_need(read_config(src), bits=4, group_size=64, batch_tokens=opts.batch_tokens, max_length=512,
                            checkpoint=opts.checkpoint)
        row = dict(layers=layers, steps=opts.steps, batch_tokens=opts.batch_tokens, checkpoint=opts.checkpoint,
                   calibration_texts=texts, peak_gb=round(peak / GB, 2), bound_gb=round(bound["total"] / GB, 2),
                   parts_gb={k: round(v / GB, 2) for k, v in bound.items()}, seconds=round(seconds),
                   load_average=round(os.getloadavg()[0], 1))
        results = [r for r in results if (r["layers"], r["batch_tokens"], r["checkpoint"]) !=
                   (layers, opts.batch_tokens, opts.checkpoint)] + [row]
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(out)
        subprocess.run(["rm", "-rf", str(dst)], check=True)
        print(f"| 1024 x {layers} | {opts.batch_tokens} | {'yes' if opts.checkpoint else 'no'} | "
              f"{row['peak_gb']:.2f} | {row['bound_gb']:.2f} | {row['seconds']} |", flush=True)


def peak_of_fresh(command: list[str]) -> tuple[int, float]:
    """peak_of in a fresh Python process, so that each run's peak is its own (RUSAGE_CHILDREN keeps the maximum)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); from dwq_memory import peak_of; "
            f"print(*peak_of({command!r}))")
    peak, seconds = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                   text=True).stdout.split()
    return int(peak), float(seconds)


if __name__ == "__main__":
    main()
