"""CSRF protection for cookie-authenticated requests (a users mode login, the quick start's token cookie): a
synchroniser token kept in the signed session cookie.

Every page gets the token (a <meta name="csrf-token"> that common.js sends as the X-CSRF-Token header on its
fetch calls, and a hidden `csrf_token` field in each form); every cookie-authenticated POST, PUT and DELETE must
carry it, compared in constant time (access.py ambient). Requests with a bearer token or ?token= carry no ambient
credential and need none. SameSite=Lax alone is not enough: a page served from another port of the same host is
the same site, and its form would carry the token cookie.
Flask-WTF's CSRFProtect does the same for forms, but it would also want the token on the quick start's and the
API tokens' requests, and the pages send JSON: the twenty lines here fit better.
"""
import hmac
import secrets

from flask import request, session

from ..sessions.errors import ApiError

HEADER, FIELD = "X-CSRF-Token", "csrf_token"


def csrf_token():
    """The session's CSRF token, made on first use."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


def csrf_ok():
    given = request.headers.get(HEADER) or (request.form.get(FIELD) if request.mimetype in (
        "application/x-www-form-urlencoded", "multipart/form-data") else None)
    expected = session.get("csrf")
    return bool(given and expected) and hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def require_csrf():
    if not csrf_ok():
        raise ApiError(403, "missing or wrong CSRF token: reload the page (a form or script of another site "
                            "cannot act with your login)")
