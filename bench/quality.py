"""Quality of quantization settings: cosine to the unquantized model on the disjoint held-out set.

    python bench/quality.py                                  # the whole sweep (random weights, no download)
    python bench/quality.py --depths 2 --dwq-settings s100-bt1024 --bits 4     # one piece of it
    python bench/quality.py --report                         # only rewrite quality.md and the README table

Models: random weights at several depths, at the real Qwen3-Embedding-0.6B width (--width 1024: hidden 1024,
intermediate 3072, 16/8 heads, head_dim 128) or narrower ones of the same proportions (default 256, so that the
sweep fits a shared 2-core CPU), with a 4000-entry byte-level BPE trained on the tests' corpus, the calibration
set and the held-out set (tests/dwq_fixtures.py), so held-out texts use tokens calibration never does, as they
do with the real 151,669-token vocabulary. Texts: mlx_qwen3_embed/data/calibration/heldout.jsonl, which shares no
text with calibration.jsonl and is never trained on (documents plain, queries in the instruction format).

Every row goes through the converter a user runs (mlx_qwen3_embed.quantize.convert: round-to-nearest at
--bits/--group-size, the mixed recipes, --dwq at the given steps/batch tokens), then through the library's
loader (mqe.load: on CPU dequantized to fp32), so the numbers are those of the saved checkpoints. Seconds: the
conversion's wall time (DWQ: quantize + distill + save), with the load average beside it.

Resumable: each row is saved to quality.json as soon as it is measured and skipped when the sweep is run again
(same width, depth, method and settings); --redo measures again. On CPU, run with an optimised BLAS:
LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 (see ../shared/REFERENCE.md).
"""

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import mlx_qwen3_embed as mqe  # noqa: E402
from dwq_fixtures import HELDOUT, make_wide_checkpoint  # noqa: E402
from mlx_qwen3_embed.models.args import ModelArgs  # noqa: E402
from mlx_qwen3_embed.quant.distill import read_calibration  # noqa: E402
from mlx_qwen3_embed.models.qwen3 import Qwen3  # noqa: E402
from mlx_qwen3_embed.quant.quantize import RECIPES, convert  # noqa: E402

# The real Qwen3-Embedding-0.6B shape, for bits per weight as a converted 0.6B checkpoint would have them
QWEN3_06B = ModelArgs(hidden_size=1024, num_hidden_layers=28, intermediate_size=3072, num_attention_heads=16,
                      num_key_value_heads=8, vocab_size=151669, head_dim=128)
# --width: the real 0.6B width, or narrower ones of the same proportions (one DWQ step at 1024 wide and 2 layers
# takes ~8 s on the shared 2-core CPU, so a sweep of settings and depths fits only at a narrower width)
WIDTHS = {1024: dict(hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8,
                     head_dim=128),
          512: dict(hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=4, head_dim=64),
          256: dict(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2, head_dim=64)}
SCALE_BITS = 16  # scales and biases are stored in the model dtype (bf16 for the hub models)
# DWQ settings: name -> convert() keywords ({} = the converter's defaults, as `mlx-embed convert --dwq` runs)
DWQ_SETTINGS = {"defaults": {}, "s100-bt1024": dict(steps=100, batch_tokens=1024),
                "s50-bt1024": dict(steps=50, batch_tokens=1024), "s200-bt512": dict(steps=200, batch_tokens=512)}
README_START, README_END = "<!-- quality table: bench/quality.py --report -->", "<!-- end quality table -->"


def bits_per_weight(bits: int = None, recipe: str = None, group_size: int = 64, args: ModelArgs = QWEN3_06B) -> float:
    """Stored bits per weight of the embedding and linear layers of a model of shape `args` (norms excluded),
    counted from shapes and the recipe, scales and biases at SCALE_BITS."""
    choose = RECIPES[recipe] if recipe else (lambda path, n: bits)
    model = Qwen3(args)  # lazy: never evaluated, only its shapes are read
    total = weights = 0
    for path, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            n = module.weight.size
            weights += n
            total += n * choose(path, args.num_hidden_layers) + 2 * SCALE_BITS * n // group_size
    return total / weights


def plan_rows(width: int, depth: int, bits: list[int], groups: list[int], dwq_settings: list[str], dwq_bits: list[int],
              dwq_groups: list[int]) -> list[dict]:
    """The rows of one depth: RTN at every bits x group, the mixed recipes (group 64), DWQ per setting, bits and
    group."""
    rows = [dict(method="rtn", bits=b, group=g) for b in bits for g in groups]
    rows += [dict(method=recipe, bits=None, group=64) for recipe in RECIPES]
    rows += [dict(method="dwq", bits=b, group=g, setting=s) for s in dwq_settings for b in dwq_bits for g in dwq_groups]
    for row in rows:
        row["width"], row["depth"] = width, depth
        bits = f" {row['bits']}b" if row["bits"] else ""
        row["key"] = f"w{width} {depth}L {row['method']}{bits} g{row['group']} {row.get('setting', '')}".strip()
    return rows


def measure(row: dict, folder: Path, texts: list[str], reference, work: Path) -> dict:
    """Convert `folder` as `row` says, load the result as the library does and compare on `texts`."""
    dst = work / re.sub(r"\W+", "_", row["key"])
    keywords = dict(group_size=row["group"])
    if row["method"] == "rtn":
        keywords["bits"] = row["bits"]
    elif row["method"] == "dwq":
        keywords |= dict(bits=row["bits"], dwq=True, **DWQ_SETTINGS[row["setting"]])
    else:
        keywords["recipe"] = row["method"]
    start = time.time()

    def progress(step, loss):
        if step % 10 == 0:
            print(f"  {row['key']} step {step}: loss {loss:.5f} ({time.time() - start:.0f} s)", file=sys.stderr,
                  flush=True)

    result = convert(str(folder), str(dst), **keywords, callback=progress if keywords.get("dwq") else None)
    seconds = time.time() - start
    cosines = (mqe.load(str(dst)).embed(texts) * reference).sum(-1)
    out = dict(row, seconds=round(seconds, 1), load_average=round(os.getloadavg()[0], 1),
               mean_cosine=float(cosines.mean()), worst_cosine=float(cosines.min()),
               mean_1_minus_cosine=float((1 - cosines).mean()),
               bits_per_weight=round(bits_per_weight(row["bits"], None if row["method"] in ("rtn", "dwq")
                                                     else row["method"], row["group"]), 3))
    if "dwq" in result:
        report = result["dwq"]
        out["dwq"] = dict(kept=report.kept, best_step=report.best_step, steps=report.steps,
                          split_before_mean=report.before_mean, split_after_mean=report.after_mean,
                          first_loss=report.losses[0] if report.losses else None,
                          last_loss=report.losses[-1] if report.losses else None)
    return out


def save_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)  # atomic: a killed sweep keeps every finished row


def with_cuts(rows: list[dict]) -> list[dict]:
    """Each DWQ row with `cut` = 1 - its mean (1 - cos) / that of RTN at the same depth, bits and group, and
    `worst_ok` = its worst text no worse than RTN's."""
    rtn = {(r["width"], r["depth"], r["bits"], r["group"]): r for r in rows if r["method"] == "rtn"}
    for r in rows:
        base = rtn.get((r["width"], r["depth"], r["bits"], r["group"])) if r["method"] == "dwq" else None
        if base:
            r["cut"] = 1 - r["mean_1_minus_cosine"] / base["mean_1_minus_cosine"]
            r["worst_ok"] = r["worst_cosine"] >= base["worst_cosine"]
    return rows


def label(r: dict) -> str:
    if r["method"] == "rtn":
        return f"{r['bits']}-bit, group {r['group']}"
    if r["method"] == "dwq":
        settings = DWQ_SETTINGS.get(r["setting"], {})
        what = "defaults (300 steps, 2048 tokens)" if not settings else \
            f"{settings['steps']} steps, {settings['batch_tokens']} tokens"
        return f"**{r['bits']}-bit DWQ**, group {r['group']}, {what}"
    return f"{r['method']}, group {r['group']}"


def table(rows: list[dict]) -> list[str]:
    lines = ["| width x depth | recipe | bits/weight | mean cosine | worst cosine | mean (1 - cos) | cut vs RTN | "
             "DWQ kept (best step) | seconds (load) |", "|---|---|---|---|---|---|---|---|---|"]
    order = {"rtn": 0, "mixed_4_6": 1, "mixed_4_8": 2, "dwq": 3}
    for r in sorted(rows, key=lambda r: (-r["width"], r["depth"], order.get(r["method"], 9), -(r["bits"] or 0),
                                         r["group"], r.get("setting", ""))):
        cut = f"{r['cut']:+.1%}{'' if r['worst_ok'] else ' (worst worse)'}" if "cut" in r else ""
        kept = f"{r['dwq']['kept']} ({r['dwq']['best_step']})" if "dwq" in r else ""
        lines.append(f"| {r['width']} x {r['depth']} | {label(r)} | {r['bits_per_weight']:.2f} | "
                     f"{r['mean_cosine']:.5f} | {r['worst_cosine']:.5f} | {r['mean_1_minus_cosine']:.5f} | {cut} | {kept} | "
                     f"{r['seconds']:.0f} ({r['load_average']}) |")
    return lines


def report(data: dict, out: Path, readme: Path) -> None:
    """quality.md from quality.json, and the README's table between its markers."""
    rows = with_cuts(data["rows"])
    dwq = [r for r in rows if "cut" in r]
    passed = [r for r in dwq if r["cut"] >= 0.15 and r["worst_ok"]]
    lines = [f"# Quantization quality on {data['held_out']} held-out texts disjoint from calibration", "",
             "Models: random weights, " + "; ".join(
                 f"hidden {w['hidden_size']}, intermediate {w['intermediate_size']}, {w['num_attention_heads']}/"
                 f"{w['num_key_value_heads']} heads of {w['head_dim']}" for w in
                 [WIDTHS[x] for x in sorted({r['width'] for r in rows}, reverse=True)]) +
             f" (1024: the real 0.6B width), depths {sorted({r['depth'] for r in rows})}, vocabulary "
             f"{data['vocab']} (a BPE trained on calibration and "
             "held-out texts, so held-out texts use tokens calibration never does). Texts: "
             "mlx_qwen3_embed/data/calibration/heldout.jsonl, no text shared with calibration.jsonl, never trained "
             f"on; max_length {data['max_length']}. Bits per weight: embedding + linear layers of the real 0.6B "
             f"shape (vocab 151,669), scales and biases at {SCALE_BITS} bits. Seconds: the conversion's wall time "
             "(DWQ: quantize + distill + save) with the 1-minute load average of the machine beside it; "
             f"{data['machine']}.", "",
             "Cut vs RTN: 1 - DWQ's mean (1 - cos) / round-to-nearest's at the same depth, bits and group size; "
             "the issue's bar is a cut >= 15% with the worst text no worse. DWQ kept: what the converter saved "
             "('rounded' = distillation did not beat round-to-nearest on its own 20% split of calibration, so "
             "round-to-nearest was kept), and its best step.", ""]
    lines += table(rows)
    lines += ["", f"DWQ rows meeting the bar: {len(passed)} of {len(dwq)}."]
    lines += [f"- {r['key']}: cut {r['cut']:+.1%}, worst {r['worst_cosine']:.5f}" for r in dwq if r not in passed]
    lines += [""] + data.get("notes", [])
    lines += ["", "Random weights have no outlier channels; real checkpoints were not measured (no weights can be "
              "downloaded where this was built).", "", "Commands:", ""]
    lines += [f"    {c}" for c in data.get("commands", [])]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if readme.is_file():
        text = readme.read_text()
        if README_START in text and README_END in text:
            head, rest = text.split(README_START, 1)
            _, tail = rest.split(README_END, 1)
            # the README keeps group size 64 (the converter's default) and every DWQ row; quality.md has them all
            compact = [r for r in rows if r["group"] == 64 or r["method"] == "dwq"]
            readme.write_text(head + README_START + "\n" + "\n".join(table(compact)) + "\n" + README_END + tail)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256, choices=sorted(WIDTHS),
                        help="hidden size of the random models (1024: the real 0.6B width)")
    parser.add_argument("--depths", default="2,6", help="layers of the random models, comma-separated")
    parser.add_argument("--bits", default="8,6,4,3", help="round-to-nearest bits, comma-separated")
    parser.add_argument("--groups", default="32,64,128", help="round-to-nearest group sizes")
    parser.add_argument("--dwq-settings", default=",".join(DWQ_SETTINGS), help=f"of {', '.join(DWQ_SETTINGS)}")
    parser.add_argument("--dwq-bits", default="4,3")
    parser.add_argument("--dwq-groups", default="64")
    parser.add_argument("--no-rtn", action="store_true", help="DWQ rows only (RTN rows of other runs still count)")
    parser.add_argument("--redo", action="store_true", help="measure rows already in quality.json again")
    parser.add_argument("--report", action="store_true", help="only rewrite quality.md and the README table")
    parser.add_argument("--note", help="a line for quality.md (e.g. what was left out, and why)")
    parser.add_argument("--merge", action="append", default=[],
                        help="quality.json of a piece run in parallel (its own --out): add its rows and commands")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "mlx-embed-quality"),
                        help="random checkpoints (kept, so pieces of a sweep use the same models) and conversions")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    opts = parser.parse_args()

    out = Path(opts.out)
    path = out.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    texts = read_calibration(HELDOUT)
    data = json.loads(path.read_text()) if path.is_file() else {"rows": [], "commands": []}
    if not opts.report:
        data["commands"] = data.get("commands", []) + [" ".join(["python", "bench/quality.py"] + sys.argv[1:])]
    data |= dict(held_out=len(texts),
                 machine=f"{platform.machine()} CPU ({platform.system()}, {os.cpu_count()} cores, shared, nice 19), "
                         f"MLX {mx.__version__}")
    if opts.note:
        data["notes"] = data.get("notes", []) + [opts.note]
    for other in map(Path, opts.merge):  # pieces run side by side write their own files; one table from all
        piece = json.loads(other.read_text())
        keys = {r["key"] for r in piece["rows"]}
        data["rows"] = [r for r in data["rows"] if r["key"] not in keys] + piece["rows"]
        data["commands"] += [c for c in piece.get("commands", []) if c not in data["commands"]]
    split = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    work = Path(opts.work)
    for depth in [] if opts.report else split(opts.depths):
        folder = work / f"random-w{opts.width}-{depth}L"
        if not (folder / "config.json").is_file():
            make_wide_checkpoint(folder.with_name(folder.name + ".partial"), **WIDTHS[opts.width],
                                 num_hidden_layers=depth, max_position_embeddings=32768)
            folder.with_name(folder.name + ".partial").rename(folder)
        model = mqe.load(str(folder))
        data |= dict(vocab=json.loads((folder / "config.json").read_text())["vocab_size"],
                     max_length=model.max_length)
        reference = model.embed(texts)
        del model
        rtn_bits, rtn_groups = ([], []) if opts.no_rtn else (split(opts.bits), split(opts.groups))
        rows = plan_rows(opts.width, depth, rtn_bits, rtn_groups, [s for s in opts.dwq_settings.split(",") if s],
                         split(opts.dwq_bits), split(opts.dwq_groups))
        if opts.no_rtn:
            rows = [r for r in rows if r["method"] == "dwq"]
        for row in rows:
            done = {r["key"] for r in data["rows"]}
            if row["key"] in done and not opts.redo:
                continue
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                result = measure(row, folder, texts, reference, Path(tmp))
            data["rows"] = [r for r in data["rows"] if r["key"] != row["key"]] + [result]
            save_json(path, data)
            print(f"{row['key']:32s} {result['bits_per_weight']:5.2f} bpw  mean {result['mean_cosine']:.6f}  worst "
                  f"{result['worst_cosine']:.6f}  {result['seconds']:.0f} s  {result.get('dwq', '')}", flush=True)
    save_json(path, data)
    report(data, out, Path(opts.readme))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
