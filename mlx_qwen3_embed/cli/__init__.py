"""The `mlx-embed` command line (app.py)."""

from .app import app

__all__ = ["app"]
