"""The HTML pages need a token too; ?token= moves into a cookie and out of the URL; a change made with that cookie
needs the page's CSRF token; the browser libraries are served."""
import re

from tests.webhyve.conftest import CONTROL, VIEWER


def add_vm(app, name="demo"):
    """A VM for its page to show (loaded, not started: the page needs it to exist, not to run)."""
    answer = app.test_client().post("/api/v1/vms", json={"name": name, "guest": "hello", "start": False},
                                    headers={"Authorization": "Bearer " + CONTROL})
    assert answer.status_code == 201, answer.json


def test_pages_need_a_token(app):
    anonymous = app.test_client()
    response = anonymous.get("/")
    assert response.status_code == 401 and b"?token=" in response.data
    assert anonymous.get("/vms/demo?token=nope").status_code == 401


def test_token_in_url_moves_to_a_cookie_and_leaves_the_url(app):
    """?token= answers a redirect to the same URL without it (other parameters kept) that sets an HttpOnly
    SameSite=Lax cookie; the page it leads to works and does not hold the token either."""
    add_vm(app)
    browser = app.test_client()
    first = browser.get("/vms/demo?x=1&token=" + VIEWER)
    assert first.status_code == 303 and first.headers["Location"] == "/vms/demo?x=1"
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith("webhyve_token=%s;" % VIEWER) and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = browser.get(first.headers["Location"])
    assert page.status_code == 200 and b'data-role="view"' in page.data and VIEWER.encode() not in page.data
    assert browser.get("/").status_code == 200 and browser.get("/api/v1/vms").status_code == 200
    assert browser.get("/?token=" + CONTROL).headers["Location"] == "/"
    assert b'data-role="control"' in browser.get("/").data


def test_a_change_made_with_the_token_cookie_needs_the_pages_csrf_token(app):
    """The token cookie is sent by the browser itself, also with a form another page of this host (another port:
    the same site for SameSite) makes it post: a change by cookie needs the CSRF token the page carries, and is
    refused without it, changing nothing. Bearer and ?token= requests carry no ambient credential and need none."""
    browser = app.test_client()
    browser.get("/?token=" + CONTROL)
    page = browser.get("/").get_data(as_text=True)
    token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page).group(1)
    create = lambda name, **headers: browser.post("/api/v1/vms", json={"name": name, "guest": "hello", "start": False},
                                                  headers=headers)
    for headers in ({}, {"X-CSRF-Token": "wrong"}):
        refused = create("forged", **headers)
        assert refused.status_code == 403 and "CSRF" in refused.json["error"]
    assert "forged" not in [vm["name"] for vm in browser.get("/api/v1/vms").json["vms"]]
    assert create("fromthepage", **{"X-CSRF-Token": token}).status_code == 201
    assert create("bearer", Authorization="Bearer " + CONTROL).status_code == 201
    assert browser.post("/api/v1/vms?token=" + CONTROL, json={"name": "query", "guest": "hello",
                                                             "start": False}).status_code == 201


def test_a_wrong_token_in_the_url_sets_no_cookie(app):
    browser = app.test_client()
    response = browser.get("/vms/demo?token=nope")
    assert response.status_code == 401 and "Set-Cookie" not in response.headers


def test_a_missing_vm_is_a_404_page(app):
    browser = app.test_client()
    page = browser.get("/vms/nosuch?token=" + CONTROL, follow_redirects=True)
    assert page.status_code == 404 and b"No VM named" in page.data and b"data-action" not in page.data


def test_vm_page_loads_its_libraries(app):
    add_vm(app)
    browser = app.test_client()
    page = browser.get("/vms/demo?token=" + CONTROL, follow_redirects=True).get_data(as_text=True)
    assert 'data-vm="demo"' in page and 'data-role="control"' in page
    for path in ("/static/node_modules/@xterm/xterm/lib/xterm.js", "/static/node_modules/@xterm/addon-fit/lib/addon-fit.js",
                 "/static/node_modules/socket.io-client/dist/socket.io.min.js",
                 "/static/node_modules/asciinema-player/dist/bundle/asciinema-player.min.js",
                 "/static/js/console.js", "/static/js/panels.js", "/static/css/webhyve.css"):
        assert path in page
        assert browser.get(path).status_code == 200, path
