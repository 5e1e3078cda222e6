"""No log line prints a token: werkzeug's request log, a traceback, the filter itself (gunicorn's: test_server.py)."""
import logging
import threading

import pytest
import requests
from werkzeug.serving import make_server

from tests.webhyve.conftest import CONTROL, VIEWER
from webhyve.web.logs import redact


@pytest.mark.parametrize("line, shown", [
    ('"GET /vms/demo?token=abc-_1 HTTP/1.1" 303', '"GET /vms/demo?token=[redacted] HTTP/1.1" 303'),
    ("GET /api/v1/vms?x=1&token=abc&y=2", "GET /api/v1/vms?x=1&token=[redacted]&y=2"),
    ("Authorization: Bearer abc", "Authorization: Bearer [redacted]"),
    ("Cookie: webhyve_token=abc; other=1", "Cookie: webhyve_token=[redacted]; other=1"),
    ('0/console,{"token":"abc"}', '0/console,{"token":"[redacted]"}'),
    ("GET /vms/demo HTTP/1.1", "GET /vms/demo HTTP/1.1"),
])
def test_what_the_filter_rewrites(line, shown):
    assert redact(line) == shown


def test_werkzeugs_request_log_and_a_traceback_show_no_token(app, caplog):
    """`flask run` or socketio.run serve with werkzeug, whose request log prints each request line."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d" % server.server_port
    try:
        with caplog.at_level(logging.INFO):
            assert requests.get(url + "/vms/demo?token=" + CONTROL, allow_redirects=False).status_code == 303
            assert requests.get(url + "/api/v1/vms?token=" + VIEWER).status_code == 200
            try:
                raise ValueError("a request for /?token=%s failed" % CONTROL)
            except ValueError:
                app.logger.exception("handling %s", "/?token=" + VIEWER)
    finally:
        server.shutdown()
    logged = caplog.text
    assert "GET /vms/demo?token=[redacted] HTTP/1.1" in logged and "/api/v1/vms?token=[redacted]" in logged
    assert "a request for /?token=[redacted] failed" in logged
    assert CONTROL not in logged and VIEWER not in logged
