"""What every `mlx-embed` command shares: the default model, the help texts of shared flags, and the one place
the library's exceptions become one `error:` line and exit code 1 (MLX_EMBED_DEBUG=1 shows the traceback)."""

import functools
import os
import sys

import typer

DEFAULT_MODEL = "mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ"
SIGPIPE_EXIT = 141  # 128 + SIGPIPE: how a shell reports a Unix tool that stopped because its reader left
MODEL_ENV = "MLX_EMBED_MODEL"
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
               MemoryError, NotADirectoryError, UnicodeDecodeError, KeyError, OSError)

MODEL_HELP = "Hub id or folder (default: $MLX_EMBED_MODEL, else mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ)."
DEVICE_HELP = "cpu or gpu (default: MLX's default device)."
DTYPE_HELP = "float32, bfloat16 or float16 (default per device)."


def default_model() -> str:
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def one_model(positional: str | None, flag: str | None) -> str:
    """The model of a command that takes it either way (`info M` or `info --model M`), else the default."""
    if positional is not None and flag is not None and positional != flag:
        raise ValueError(f"two models given, {positional} and --model {flag}: give one")
    return positional or flag or default_model()


def friendly_errors(command):
    """Turn the library's exceptions into one line on stderr and exit code 1 (traceback with MLX_EMBED_DEBUG).
    A reader that went away (`mlx-embed embed ... | head -1`) ends the command quietly, as Unix tools end."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BrokenPipeError:
            quiet_stdout()
            raise typer.Exit(SIGPIPE_EXIT)
        except USER_ERRORS as e:
            if os.environ.get("MLX_EMBED_DEBUG"):
                raise
            typer.echo(f"error: {message(e)}", err=True)
            raise typer.Exit(1)
    return wrapper


# the library's advice names Python functions; on the command line the same advice is a command
CLI_ADVICE = {"load it with mlx_qwen3_embed.load_reranker": "use `mlx-embed rerank` (or `mlx-embed serve --reranker`)",
              "load it with mlx_qwen3_embed.load": "use `mlx-embed embed` (or `mlx-embed serve --model`)",
              "pass overwrite=True": "pass --overwrite"}


def message(e: Exception) -> str:
    """The one line an exception becomes: its text, without Python's "[Errno N]" (the library's OSErrors carry
    an errno and a whole sentence), with the library's Python advice given as commands."""
    if isinstance(e, KeyError):
        return f"missing key {e}"
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        return e.strerror + (f": {e.filename}" if e.filename is not None else "")
    text = str(e)
    for python, command in CLI_ADVICE.items():  # longest first: load_reranker before load
        text = text.replace(python, command)
    return text


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing what is left at exit raises no second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test runner's stdout)
        pass
