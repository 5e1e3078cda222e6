"""The browser console: create_app(config) builds the Flask app (app.py); `python -m webhyve.web.serve` runs it."""
from .app import create_app, shutdown

__all__ = ["create_app", "shutdown"]
