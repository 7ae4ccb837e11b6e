"""The `mlx-embed` command: thin Typer commands over the library.

Errors the library raises for bad input (built-in exceptions) become one line on stderr and exit code 1;
set MLX_EMBED_DEBUG=1 to see the traceback instead.
"""

import functools
import os
import sys

import typer

app = typer.Typer(help="Qwen3-Embedding vectors in MLX: embed, convert, info, serve, bench.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

DEFAULT_MODEL = "mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ"
MODEL_ENV = "MLX_EMBED_MODEL"
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
               NotADirectoryError, UnicodeDecodeError, KeyError, OSError)


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


# Commands are registered below, one function each: embed, info, convert (issue 3), serve (issue 4), bench (issue 5).
