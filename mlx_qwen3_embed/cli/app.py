"""The `mlx-embed` command: thin Typer commands over the library.

Errors the library raises for bad input (built-in exceptions) become one line on stderr and exit code 1;
set MLX_EMBED_DEBUG=1 to see the traceback instead.
"""

import functools
import os
import sys
import warnings
from pathlib import Path

import typer

app = typer.Typer(help="Qwen3-Embedding vectors in MLX: embed, rerank, convert, info, serve, bench.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

DEFAULT_MODEL = "mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ"
MODEL_ENV = "MLX_EMBED_MODEL"
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
               MemoryError, NotADirectoryError, UnicodeDecodeError, KeyError, OSError)


def default_model() -> str:
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def friendly_errors(command):
    """Turn the library's exceptions into one line on stderr and exit code 1 (traceback with MLX_EMBED_DEBUG)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as e:
            if os.environ.get("MLX_EMBED_DEBUG"):
                raise
            message = str(e) if not isinstance(e, KeyError) else f"missing key {e}"
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(1)
    return wrapper


@app.callback()
def main():
    """Qwen3-Embedding vectors in MLX."""
    # Linux: re-run once with an installed OpenBLAS preloaded (50x faster CPU matmuls than the wheel's BLAS);
    # only when started as the `mlx-embed` program, never inside a host process (tests, notebooks)
    from ..blas import reexec_env

    # the library's warnings (e.g. the slow-BLAS one) as one line each, like the errors
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    if Path(sys.argv[0]).name == "mlx-embed":
        env = reexec_env()
        if env is not None:
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


MODEL_HELP = "Hub id or folder (default: $MLX_EMBED_MODEL, else mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ)."
DEVICE_HELP = "cpu or gpu (default: MLX's default device)."
DTYPE_HELP = "float32, bfloat16 or float16 (default per device)."


# each command lives in a module of its own; importing it registers it on `app`
from . import bench, convert, embed, info, rerank, serve, verify  # noqa: E402,F401
