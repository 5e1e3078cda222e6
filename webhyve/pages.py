"""The HTML pages: the VM list and one page per VM. They need a token like everything else; a visit with
?token=… sets a same-site cookie so later visits and downloads work without it in the URL."""
from flask import Blueprint, current_app, g, render_template, request

from .access import COOKIE, role_of, request_token

bp = Blueprint("pages", __name__)


def _page(template, **context):
    token = request_token()
    role = role_of(token)
    if role is None:
        return render_template("token.html"), 401
    g.role = role
    response = current_app.make_response(render_template(template, token=token, role=role, **context))
    if request.args.get("token"):
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
    return response


@bp.get("/")
def vm_list():
    return _page("index.html")


@bp.get("/vms/<name>")
def vm_page(name):
    return _page("vm.html", vm=name)
