"""The HTTP server: app.py (create_app, auth, limits, metrics), worker.py (the one model thread), and one module
per API dialect that translates its wire format to the same worker calls."""

from .app import create_app

__all__ = ["create_app"]
