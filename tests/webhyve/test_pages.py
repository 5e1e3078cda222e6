"""The HTML pages need a token too; a visit with ?token= sets a same-site cookie; the browser libraries are served."""
from tests.webhyve.conftest import CONTROL, VIEWER


def test_pages_need_a_token(app):
    anonymous = app.test_client()
    response = anonymous.get("/")
    assert response.status_code == 401 and b"?token=" in response.data
    assert anonymous.get("/vms/demo?token=nope").status_code == 401


def test_token_in_url_sets_a_cookie_for_later_visits(app):
    browser = app.test_client()
    first = browser.get("/?token=" + VIEWER)
    assert first.status_code == 200 and b'data-role="view"' in first.data
    assert "SameSite=Strict" in first.headers["Set-Cookie"] and "HttpOnly" in first.headers["Set-Cookie"]
    assert browser.get("/vms/anything").status_code == 200
    assert browser.get("/api/v1/vms").status_code == 200


def test_vm_page_loads_its_libraries(app):
    browser = app.test_client()
    page = browser.get("/vms/demo?token=" + CONTROL).get_data(as_text=True)
    assert 'data-vm="demo"' in page and 'data-role="control"' in page
    for path in ("/static/node_modules/@xterm/xterm/lib/xterm.js", "/static/node_modules/@xterm/addon-fit/lib/addon-fit.js",
                 "/static/node_modules/socket.io-client/dist/socket.io.min.js",
                 "/static/node_modules/asciinema-player/dist/bundle/asciinema-player.min.js",
                 "/static/js/console.js", "/static/js/panels.js", "/static/css/webhyve.css"):
        assert path in page
        assert browser.get(path).status_code == 200, path
