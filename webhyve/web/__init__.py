"""The browser console: create_app(config) builds the Flask app (app.py); `python -m webhyve.web.serve` runs it.

create_app and shutdown are imported on first use (PEP 562), so `python -m webhyve.web.users` manages the users
file without loading the engine."""
__all__ = ["create_app", "shutdown"]


def __getattr__(name):
    if name in __all__:
        from . import app
        return getattr(app, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
