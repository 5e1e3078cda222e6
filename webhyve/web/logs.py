"""Log lines without tokens: one filter on every logger that may print a request, its URL or its headers.

A token reaches the server in a page's first URL (?token=…), an Authorization header, the cookie or a
Socket.IO auth object; gunicorn's access and error logs, werkzeug's request log, engine.io's packet log
and our own tracebacks could each print one. The filter rewrites the value after `token=`, `Bearer ` and
`"token": "` as [redacted] before any handler formats the record.
"""
import logging
import re

SECRET = re.compile(r"""(token=|bearer\s+|"token"\s*:\s*")[^\s&;"',]+""", re.IGNORECASE)
LOGGERS = ("gunicorn.access", "gunicorn.error", "werkzeug", "engineio.server", "socketio.server")


def redact(text):
    return SECRET.sub(r"\1[redacted]", text)


class Redact(logging.Filter):
    def filter(self, record):
        message = record.getMessage()
        if SECRET.search(message):
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def install(app_logger):
    """Put the filter on the app's logger and on each named logger a server may log requests through."""
    for logger in (app_logger, *map(logging.getLogger, LOGGERS)):
        if not any(isinstance(f, Redact) for f in logger.filters):
            logger.addFilter(Redact())
