"""The `mlx-embed` command: the Typer app; each command is a function in a module of its own, registered here.

Errors the library raises for bad input (built-in exceptions) become one line on stderr and exit code 1
(options.friendly_errors); set MLX_EMBED_DEBUG=1 to see the traceback instead.
"""

import os
import sys
import warnings
from pathlib import Path

import typer

from . import bench, convert, embed, info, rerank, serve, verify

app = typer.Typer(help="Qwen3-Embedding vectors in MLX: embed, rerank, serve, convert, info, verify, bench.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


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


for command in (embed.embed, rerank.rerank, serve.serve, convert.convert, info.info, verify.verify, bench.bench):
    app.command()(command)
