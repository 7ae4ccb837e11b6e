"""The `mlx-embed` command: the Typer app; each command is a function in a module of its own, registered here.

Errors the library raises for bad input (built-in exceptions) become one line on stderr and exit code 1
(options.friendly_errors); set MLX_EMBED_DEBUG=1 to see the traceback instead. Usage errors (an unknown flag,
`--dim abc`, a missing argument) are one `error:` line and exit code 1 too (OneLineUsageErrors), not click's box
and code 2.
"""

import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import typer
try:  # Typer >= 0.25 ships its own copy of click; older ones use click itself
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:
    from click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from . import bench, convert, embed, info, rerank, serve, verify


class OneLineUsageErrors(TyperGroup):
    """The command group, with click's usage errors printed as one `error:` line (and where to find the usage),
    exit code 1, as every other mistake; `mlx-embed` alone still prints the help."""

    def make_context(self, info_name, args, parent=None, **extra):
        with one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with one_line_usage_errors():
            return super().invoke(ctx)


@contextmanager
def one_line_usage_errors():
    try:
        yield
    except NoArgsIsHelpError:  # `mlx-embed` alone: click prints the help
        raise
    except UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "mlx-embed"
        typer.echo(f"error: {e.format_message().rstrip('.')} (see {where} --help)", err=True)
        raise typer.Exit(1) from None


app = typer.Typer(cls=OneLineUsageErrors,
                  help="Qwen3-Embedding vectors in MLX: embed, rerank, serve, convert, info, verify, bench.",
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
