"""`mlx-embed convert`: original weights -> the mlx-community quantized layout."""

import typer

from .options import friendly_errors


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
    steps: int = typer.Option(300, help="--dwq training steps."),
    lr: float = typer.Option(1e-3, help="--dwq learning rate, in units of each layer's quantization step."),
    batch_tokens: int = typer.Option(2048, help="--dwq padded tokens per training step."),
    checkpoint: bool = typer.Option(False, help="--dwq: recompute blocks in the backward pass (less memory: 4B/8B)."),
    vision_bits: int = typer.Option(8, help="Qwen3-VL: bits of the vision tower (0: keep it float)."),
):
    """Quantize original Qwen3-Embedding (or Qwen3-VL) weights into a folder that this package loads."""
    from ..checkpoint import open_checkpoint
    from ..quant import quantize

    def progress(step: int, loss: float):
        if step % 10 == 0 or step == steps:
            typer.echo(f"dwq step {step}/{steps}: loss {loss:.5f}", err=True)

    if open_checkpoint(src, weights=False).kind == "qwen3_vl":  # Qwen3-VL (vl_quantize.py; --dwq: vl_distill.py, texts and synthetic images)
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
