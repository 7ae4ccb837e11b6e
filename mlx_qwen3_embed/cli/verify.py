"""`mlx-embed verify MODEL` (or `--model MODEL`): the model card's example, its similarity matrix against the
card's; exit 1 on FAIL."""

import json

import typer

from .options import DEVICE_HELP, DTYPE_HELP, MODEL_HELP, friendly_errors, one_model


@friendly_errors
def verify(
    model: str | None = typer.Argument(None, help="Hub id or folder of a Qwen3-Embedding 0.6B, 4B or 8B "
                                                  "checkpoint (default: as --model's). Also as --model."),
    model_flag: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    tolerance: float = typer.Option(0.03, help="Largest allowed difference from the card's values."),
    expected: str | None = typer.Option(None, help='The 2x2 matrix to compare with, as JSON (default: the card\'s).'),
    device: str | None = typer.Option(None, help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, help=DTYPE_HELP),
):
    """Embed the card's 2 queries x 2 documents; print the matrix, the card's, and PASS or FAIL (exit 1)."""
    from .. import load
    from ..verify import check_expected, check_tolerance
    from ..verify import verify as run

    given = None
    check_tolerance(tolerance, "--tolerance")  # before the model loads
    if expected is not None:
        try:
            given = json.loads(expected)
        except json.JSONDecodeError:
            raise ValueError(f"--expected must be JSON like [[0.76, 0.14], [0.13, 0.60]], got {expected!r}") from None
        check_expected(given, "--expected")
    verdict = run(load(one_model(model, model_flag), device=device, dtype=dtype), tolerance=tolerance,
                  expected=given)
    for name, matrix in (("got", verdict.scores), (f"card ({verdict.card})", verdict.expected)):
        rows = ", ".join("[" + ", ".join(f"{v:.4f}" for v in row) + "]" for row in matrix)
        typer.echo(f"{name}: [{rows}]")
    typer.echo(f"{'PASS' if verdict.passed else 'FAIL'}: max difference {verdict.max_error:.4f} "
               f"(tolerance {verdict.tolerance})")
    if not verdict.passed:
        raise typer.Exit(1)
