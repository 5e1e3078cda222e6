"""The HTML pages: the VM list and one page per VM. They need a token like everything else.

A visit with ?token=… puts the token in an HttpOnly cookie and redirects to the same URL without it, as
Jupyter does, so the token leaves the address bar, the history, and the URLs that server logs and
Referer headers carry. The pages themselves never hold the token: their scripts' requests and Socket.IO
connections carry the cookie.
"""
from urllib.parse import urlencode

from flask import Blueprint, current_app, g, redirect, render_template, request

from ..sessions.fleet import LEGEND
from .access import COOKIE, role_of, request_token

bp = Blueprint("pages", __name__)


def _page(template, status=200, **context):
    if "token" in request.args:
        return _token_to_cookie()
    role = role_of(request_token())
    if role is None:
        return render_template("token.html"), 401
    g.role = role
    return render_template(template, role=role, **context), status


def _token_to_cookie():
    """303 to the same URL without `token`, setting the cookie; a wrong token is the token page, no cookie.
    SameSite=Lax, not Strict: a link to the page clicked on another site arrives as a cross-site navigation,
    and Strict would withhold the new cookie from the redirect that follows it. Lax lets only top-level GETs
    carry it across sites, and no GET here changes anything; Socket.IO refuses other origins."""
    token = request.args["token"]
    if role_of(token) is None:
        return render_template("token.html"), 401
    rest = urlencode([(k, v) for k, v in request.args.items(multi=True) if k != "token"])
    response = redirect(request.path + ("?" + rest if rest else ""), 303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="Lax")
    return response


@bp.get("/")
def vm_list():
    return _page("index.html")


@bp.get("/vms/<name>")
def vm_page(name):
    """The VM's page; a VM that does not exist is a 404 page saying so, not an empty page with live buttons."""
    fleet, cluster = current_app.extensions["webhyve.fleet"], current_app.extensions["webhyve.cluster"]
    if name not in {s.name for s in fleet.list()} and not (cluster is not None and cluster.knows(name)):
        return _page("novm.html", status=404, vm=name)
    return _page("vm.html", vm=name, legend=LEGEND, clustered=cluster is not None)
