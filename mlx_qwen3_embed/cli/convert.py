"""`mlx-embed convert`: original weights -> the mlx-community quantized layout."""

import os
import shutil
from pathlib import Path

import typer

from .options import friendly_errors

DWQ_DEFAULTS = {"steps": 300, "lr": 1e-3, "batch_tokens": 2048}  # quant.quantize.convert's


@friendly_errors
def convert(
    src: str = typer.Argument(..., help="Original float weights: a hub id (Qwen/Qwen3-Embedding-0.6B) or a folder."),
    dst: str = typer.Argument(..., help="New folder for the mlx-community layout; must not exist."),
    bits: int | None = typer.Option(None, help="Bits per weight: 4, 6 or 8 (also 2, 3, 5); default 4."),
    group_size: int = typer.Option(64, help="Weights sharing one scale and bias: 32, 64 or 128."),
    recipe: str | None = typer.Option(None, help="Mixed precision instead of --bits: mixed_4_6 or mixed_4_8."),
    dtype: str | None = typer.Option(None, help="bfloat16, float16 or float32 for scales and norms "
                                                "(default: the source's)."),
    dwq: bool = typer.Option(False, "--dwq", help="Embedding-distilled quantization: tune scales and biases so "
                                                  "the vectors match the float model's on calibration texts. "
                                                  "Peak memory: the float32 teacher while it loads (~6 bytes a "
                                                  "parameter), then fp32 copies of the student's matrices and one "
                                                  "batch's activations for every layer (--checkpoint: one block's); "
                                                  "estimated from config.json and refused before loading when above "
                                                  "the memory available (0.6B: ~14 GB, ~5.2 GB with --checkpoint)."),
    calibration: str | None = typer.Option(None, help="--dwq texts: JSON Lines {text, kind: query|document} "
                                                      "(default: mlx_qwen3_embed/data/calibration/calibration.jsonl)."),
    # None: not given, so that a --dwq setting without --dwq is refused rather than ignored
    steps: int | None = typer.Option(None, help=f"--dwq training steps [{DWQ_DEFAULTS['steps']}]."),
    lr: float | None = typer.Option(None, help="--dwq learning rate, in units of each layer's quantization step "
                                               f"[{DWQ_DEFAULTS['lr']}]."),
    batch_tokens: int | None = typer.Option(None, help="--dwq padded tokens per training step "
                                                       f"[{DWQ_DEFAULTS['batch_tokens']}]."),
    checkpoint: bool = typer.Option(False, help="--dwq: recompute blocks in the backward pass (less memory: 4B/8B)."),
    vision_bits: int = typer.Option(8, help="Qwen3-VL: bits of the vision tower (0: keep it float)."),
):
    """Quantize original Qwen3-Embedding (or Qwen3-VL) weights into a folder that this package loads."""
    # before anything loads (a --dwq run trains for minutes before it writes): the settings and the destination
    given = {"--steps": steps, "--lr": lr, "--batch-tokens": batch_tokens, "--calibration": calibration,
             "--checkpoint": checkpoint or None}
    stray = [flag for flag, value in given.items() if value is not None]
    if stray and not dwq:
        raise ValueError(f"{', '.join(stray)} only appl{'ies' if len(stray) == 1 else 'y'} with --dwq: add --dwq, "
                         f"or leave {'it' if len(stray) == 1 else 'them'} out")
    steps = DWQ_DEFAULTS["steps"] if steps is None else steps
    lr = DWQ_DEFAULTS["lr"] if lr is None else lr
    batch_tokens = DWQ_DEFAULTS["batch_tokens"] if batch_tokens is None else batch_tokens
    check_destination(Path(dst).expanduser())

    from ..checkpoint import open_checkpoint
    from ..quant import quantize

    source = open_checkpoint(src, weights=False)
    check_space(Path(dst).expanduser(), output_bytes(source, bits or 4, group_size, vision_bits if source.vision else 0))

    def progress(step: int, loss: float):
        if step % 10 == 0 or step == steps:
            typer.echo(f"dwq step {step}/{steps}: loss {loss:.5f}", err=True)

    if source.vision:  # Qwen3-VL, embedder or reranker (vl_quantize.py; --dwq: vl_distill.py)
        if recipe is not None:
            raise ValueError("--recipe is for Qwen3 text models; Qwen3-VL takes --bits and --vision-bits")
        from ..quant.vl_quantize import convert_vl

        result = convert_vl(src, dst, bits=bits, group_size=group_size, vision_bits=vision_bits or None, dtype=dtype,
                            dwq=dwq, calibration=calibration, steps=steps, lr=lr, batch_tokens=batch_tokens,
                            checkpoint=checkpoint, callback=progress if dwq else None)
        typer.echo(f"wrote {result['path']}: {result['size_bytes'] / 2**20:.1f} MiB "
                   f"({result['quantization']['bits']}-bit decoder, vision tower "
                   f"{f'{vision_bits}-bit' if vision_bits else 'float'}, group size {group_size})")
        if "dwq" in result:
            typer.echo(result["dwq"].summary())
        return

    result = quantize.convert(src, dst, bits=bits, group_size=group_size, recipe=recipe, dtype=dtype, dwq=dwq,
                              calibration=calibration, steps=steps, lr=lr, batch_tokens=batch_tokens,
                              checkpoint=checkpoint, callback=progress if dwq else None)
    overrides = sum(isinstance(v, dict) for v in result["quantization"].values())
    typer.echo(f"wrote {result['path']}: {result['size_bytes'] / 2**20:.1f} MiB, "
               f"{result['bits_per_weight']:.3f} bits per weight ({result['quantization']['bits']}-bit, "
               f"group size {result['quantization']['group_size']}, {overrides} modules at other bits)")
    if "dwq" in result:
        typer.echo(result["dwq"].summary())


def check_destination(dst: Path) -> None:
    """`dst` must not exist and its nearest existing parent must be a folder this user may write in (the
    conversion makes the missing ones): said before minutes of loading, quantizing or training."""
    from ..atomic import refuse_existing

    refuse_existing(dst)
    parent = dst.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {dst}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {dst}: no permission to write in {parent}; choose a destination "
                              "you can write to")


def output_bytes(source, bits: int, group_size: int, vision_bits: int) -> int:
    """About what the converted folder will take: each weight at the widest of its bits, plus a 16-bit scale and
    bias per group (0 when the source's weights are not on this disk yet: a hub id still to download)."""
    from ..checkpoint import decoder_args
    from ..checkpoint.summary import summary
    from ..checkpoint.weights import has_weights

    if not has_weights(source.folder):
        return 0
    return int(summary(source.folder, decoder_args(source))["parameters"] * (max(bits, vision_bits) + 32 / group_size) / 8)


def check_space(dst: Path, need: int) -> None:
    """Refuse, before anything loads, a destination whose disk has less free space than the output needs."""
    parent = dst.absolute().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if need > free:
        raise OSError(f"not enough space for {dst}: the converted model needs about {need / 2**20:.0f} MiB and "
                      f"{parent}'s disk has {free / 2**20:.0f} MiB free; free some space or choose another place")
