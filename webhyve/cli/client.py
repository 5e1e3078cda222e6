"""vmmctl's side of the REST API: where the server is, which token to send, and one clear line per failure.

The server and token come from WEBHYVE_URL / WEBHYVE_TOKEN, else from the [server] section of
$XDG_CONFIG_HOME/webhyve/vmmctl.conf (~/.config/webhyve/vmmctl.conf): `url = …` and `token = …`.
"""
import configparser
import os

import click
import requests

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT = 30


class ServerError(click.ClickException):
    """A refusal or an unreachable server: vmmctl prints the message as one line and exits 1."""


def config_path():
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "webhyve", "vmmctl.conf")


def settings(url=None):
    """(url, token): the --url option, then the environment, then the config file."""
    parser = configparser.ConfigParser()
    path = config_path()
    try:
        parser.read(path)
    except configparser.Error as problem:
        raise ServerError("%s is not an INI file with a [server] section: %s" % (path, problem.message)) from None
    section = parser["server"] if parser.has_section("server") else {}
    url = url or os.environ.get("WEBHYVE_URL") or section.get("url") or DEFAULT_URL
    token = os.environ.get("WEBHYVE_TOKEN") or section.get("token")
    if not token:
        raise ServerError("no token: set WEBHYVE_TOKEN, or `token = …` under [server] in %s, to the token the "
                          "server printed" % path)
    return url.rstrip("/"), token


class Client:
    """JSON over HTTP to one webhyve server; every failure becomes a ServerError naming it."""

    def __init__(self, url, token):
        self.url, self.token = url, token
        self.http = requests.Session()
        self.http.headers["Authorization"] = "Bearer " + token

    def call(self, method, path, raw=False, **kwargs):
        try:
            answer = self.http.request(method, self.url + path, timeout=TIMEOUT, **kwargs)
        except requests.ConnectionError:
            raise ServerError("cannot reach the webhyve server at %s: is it running? (`make run`; or set "
                              "WEBHYVE_URL)" % self.url) from None
        except requests.Timeout:
            raise ServerError("the webhyve server at %s did not answer within %ds" % (self.url, TIMEOUT)) from None
        if answer.status_code == 401:
            raise ServerError("the server at %s refused the token: set WEBHYVE_TOKEN to the control or viewer "
                              "token it printed" % self.url)
        if not answer.ok:
            raise ServerError(error_text(answer))
        if raw:
            return answer
        try:
            return answer.json()
        except ValueError:
            raise ServerError("%s did not answer with JSON: is it a webhyve server?" % self.url) from None

    def get(self, path, **kwargs):
        return self.call("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.call("POST", path, **kwargs)

    def put(self, path, **kwargs):
        return self.call("PUT", path, **kwargs)

    def delete(self, path, **kwargs):
        return self.call("DELETE", path, **kwargs)


def error_text(answer):
    try:
        return str(answer.json()["error"])
    except (ValueError, KeyError, TypeError):
        return "the server answered %d %s for %s" % (answer.status_code, answer.reason, answer.url.split("?")[0])
