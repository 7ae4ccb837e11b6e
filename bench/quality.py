"""Quality of quantization recipes: bits per weight vs cosine to the unquantized model on held-out texts.

    python bench/quality.py                       # random-weight 0.6B-width model, 4 layers (no download)
    python bench/quality.py --model PATH          # a real hub-layout checkpoint (Qwen/Qwen3-Embedding-0.6B)

Every recipe starts from the same float weights; the held-out texts are the part of the shipped calibration
set (mlx_qwen3_embed/data/calibration/) that DWQ never trains on: documents plain, queries in the instruction format.
Vectors are measured through the library's own loader path (dequantized, fp32), so the numbers are those of
the saved checkpoints. Writes bench/results/quality.md and quality.json. On CPU, run with an optimised BLAS:
LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 (see ../shared/REFERENCE.md).
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from mlx_qwen3_embed.batching import pad_right, plan_batches
from mlx_qwen3_embed.config import ModelArgs
from mlx_qwen3_embed.device import plan
from mlx_qwen3_embed.distill import distill, read_calibration, split_holdout
from mlx_qwen3_embed.models.qwen3 import Qwen3
from mlx_qwen3_embed.pooling import normalize, pool
from mlx_qwen3_embed.quantize import RECIPES, quantize
from mlx_qwen3_embed.tokenizer import Tokenizer
from mlx_qwen3_embed.weights import dequantize, load_model

ROOT = Path(__file__).resolve().parent.parent
# The real Qwen3-Embedding-0.6B shape, for bits per weight as a converted 0.6B checkpoint would have them
QWEN3_06B = ModelArgs(hidden_size=1024, num_hidden_layers=28, intermediate_size=3072, num_attention_heads=16,
                      num_key_value_heads=8, vocab_size=151669, head_dim=128)
SCALE_BITS = 16  # scales and biases are stored in the model dtype (bf16 for the hub models)


def recipes() -> dict:
    """name -> converter settings (mlx_qwen3_embed.quantize.quantize); group size 64 throughout."""
    return {"8-bit": dict(bits=8), "6-bit": dict(bits=6), "4-bit": dict(bits=4),
            "mixed_4_6": dict(recipe="mixed_4_6"), "mixed_4_8": dict(recipe="mixed_4_8")}


def bits_per_weight(settings: dict, args: ModelArgs = QWEN3_06B, group_size: int = 64) -> float:
    """Stored bits per weight of the embedding and linear layers of a model of shape `args` (norms excluded),
    counted from shapes and the recipe, scales and biases at SCALE_BITS."""
    choose = RECIPES[settings["recipe"]] if "recipe" in settings else (lambda path, n: settings["bits"])
    model = Qwen3(args)  # lazy: never evaluated, only its shapes are read
    bits = weights = 0
    for path, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            n = module.weight.size
            weights += n
            bits += n * choose(path, args.num_hidden_layers) + 2 * SCALE_BITS * n // group_size
    return bits / weights


def float_copy(student: Qwen3, args: ModelArgs, block: dict) -> Qwen3:
    """The quantized student as the library loads it on CPU: dequantized to fp32 (weights.dequantize)."""
    quantized_args = ModelArgs(**{**args.__dict__, "quantization": block})
    tensors = dequantize(dict(tree_flatten(student.parameters())), quantized_args, mx.float32)
    model = Qwen3(args)
    model.update(tree_unflatten(list(tensors.items())))
    mx.eval(model.parameters())
    return model


def pooled(model: Qwen3, sequences: list[list[int]], pad_id: int, batch_tokens: int = 2048) -> np.ndarray:
    """(N, D) unit vectors, pooled at each text's last token, in input order."""
    out = np.zeros((len(sequences), model.args.hidden_size), np.float32)
    for batch in plan_batches([len(s) for s in sequences], batch_tokens):
        input_ids, lengths = pad_right([sequences[i] for i in batch], pad_id)
        hidden = model(mx.array(input_ids)).astype(mx.float32)
        out[batch] = np.array(normalize(pool(hidden, mx.array(lengths))))
    return out


def random_checkpoint(folder: Path, layers: int) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_hub_checkpoint  # the tests' random-weight checkpoint builder

    return make_hub_checkpoint(folder, hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
                               num_key_value_heads=8, head_dim=128, num_hidden_layers=layers)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="hub-layout checkpoint folder (default: random 0.6B-width weights)")
    parser.add_argument("--layers", type=int, default=4, help="layers of the random model (real 0.6B: 28)")
    parser.add_argument("--calibration", help="JSON Lines calibration file (default: mlx_qwen3_embed/data/calibration)")
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--token-weight", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality"))
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(opts.model) if opts.model else random_checkpoint(Path(tmp) / "random-0.6B-width", opts.layers)
        device = plan("cpu", "float32")
        teacher, args = load_model(folder, device)
        tokenizer = Tokenizer(folder)
        texts = read_calibration(opts.calibration)
        _, held = split_holdout(texts, opts.holdout)
        held_ids = tokenizer.encode(held, opts.max_length)
        reference = pooled(teacher, held_ids, tokenizer.eos_id)
        shape = (f"hidden {args.hidden_size}, intermediate {args.intermediate_size}, "
                 f"{args.num_attention_heads}/{args.num_key_value_heads} heads, head_dim {args.head_dim}, "
                 f"{args.num_hidden_layers} layers, vocab {args.vocab_size}")
        rows = []

        config = json.loads((folder / "config.json").read_text())

        def measure(name, student, block, settings, seconds=None, note=""):
            cosines = (pooled(float_copy(student, args, block), held_ids, tokenizer.eos_id) * reference).sum(-1)
            rows.append({"recipe": name, "bits_per_weight_0.6B": round(bits_per_weight(settings), 3),
                         "mean_cosine": float(cosines.mean()), "worst_cosine": float(cosines.min()),
                         "mean_1_minus_cosine": float((1 - cosines).mean()), "seconds": seconds, "note": note})
            print(f"{name:40s} {rows[-1]['bits_per_weight_0.6B']:6.3f} bpw  mean {cosines.mean():.6f}  "
                  f"worst {cosines.min():.6f}", flush=True)

        for name, settings in recipes().items():
            student, _ = load_model(folder, device)
            measure(name, student, quantize(student, config, **settings)["quantization"], settings)

        student, _ = load_model(folder, device)
        block = quantize(student, config, bits=4)["quantization"]

        def progress(step, loss):
            if step % 10 == 0:
                print(f"  DWQ step {step}/{opts.steps}: loss {loss:.5f} ({time.time() - start:.0f} s)", file=sys.stderr)

        start = time.time()
        report = distill(teacher, student, tokenizer, texts, steps=opts.steps, lr=opts.lr,
                         batch_tokens=opts.batch_tokens, holdout=opts.holdout, max_length=opts.max_length,
                         token_weight=opts.token_weight, through="float", callback=progress)
        seconds = time.time() - start
        measure("4-bit DWQ (embedding-distilled)", student, block, dict(bits=4), round(seconds, 1),
                f"{opts.steps} steps, lr {opts.lr}, best step {report.best_step}, kept {report.kept}")
        print(report.summary())

    plain, dwq = rows[2], rows[-1]
    gain = 1 - dwq["mean_1_minus_cosine"] / plain["mean_1_minus_cosine"]
    lines = [f"# Quantization quality: cosine to the unquantized model on {len(held)} held-out texts", "",
             f"Model: {'random weights, ' if not opts.model else ''}{shape} ({opts.model or 'tests/conftest.py'}). "
             f"Held-out: {len(held)} of {len(texts)} calibration texts (documents plain, queries instructed), "
             f"max_length {opts.max_length}. Group size 64. Bits per weight: embedding + linear layers of the real "
             f"0.6B shape, scales and biases at {SCALE_BITS} bits.", "",
             "| recipe | bits/weight | mean cosine | worst cosine | mean (1 - cosine) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['bits_per_weight_0.6B']:.3f} | {r['mean_cosine']:.6f} | "
                     f"{r['worst_cosine']:.6f} | {r['mean_1_minus_cosine']:.6f} |")
    lines += ["", f"4-bit DWQ vs plain 4-bit rounding: mean (1 - cosine) {gain:+.1%} lower"
              f" ({'cut' if gain > 0 else 'no gain'}); worst {dwq['worst_cosine']:.6f} vs {plain['worst_cosine']:.6f}.",
              f"DWQ: {dwq['note']}, batch_tokens {opts.batch_tokens}, token_weight {opts.token_weight}, "
              f"{dwq['seconds']} s wall on {platform.machine()} CPU ({platform.system()}), MLX {mx.__version__}.", ""]
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text("\n".join(lines))
    Path(f"{out}.json").write_text(json.dumps({"shape": shape, "held_out": len(held), "options": vars(opts),
                                                "rows": rows, "dwq_gain": gain}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
