"""What every `mlx-embed` command shares: the default model, the help texts of shared flags, and the one place
the library's exceptions become one `error:` line and exit code 1 (MLX_EMBED_DEBUG=1 shows the traceback)."""

import functools
import os

import typer

DEFAULT_MODEL = "mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ"
MODEL_ENV = "MLX_EMBED_MODEL"
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
               MemoryError, NotADirectoryError, UnicodeDecodeError, KeyError, OSError)

MODEL_HELP = "Hub id or folder (default: $MLX_EMBED_MODEL, else mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ)."
DEVICE_HELP = "cpu or gpu (default: MLX's default device)."
DTYPE_HELP = "float32, bfloat16 or float16 (default per device)."


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
