"""Users mode for tests: a users file for a class (a teacher, operators in pools, a viewer), written as the CLI
writes it, and helpers to log in through the real login form."""
import json
import re

from argon2 import PasswordHasher

from webhyve.web.users import User, token_digest, write

# Tests hash with argon2id's smallest sane cost: the server verifies with whatever parameters a hash carries.
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery"
OP_TOKEN = "op!ci=op-secret-for-tests-0123456789"
CLASS = {"teacher": ("administrator", []), "op": ("operator", ["class1"]), "other": ("operator", ["class2"]),
         "view": ("viewer", ["class1"])}


def write_users(path, extra=()):
    """The class's users file at `path`; `extra`: (name, role, pools) more, all with PASSWORD."""
    users = {name: User(name, role, pools, CHEAP.hash(PASSWORD)) for name, (role, pools) in CLASS.items()}
    for name, role, pools in extra:
        users[name] = User(name, role, pools, CHEAP.hash(PASSWORD))
    users["op"].tokens["ci"] = token_digest(OP_TOKEN.partition("=")[2])
    write(str(path), users)
    return json.loads(path.read_text())


def csrf_of(html):
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def log_in(client, name, password=PASSWORD):
    """Log `client` in through the form; the response, and the page's CSRF token afterwards (None on failure)."""
    form = csrf_of(client.get("/login").get_data(as_text=True))
    answer = client.post("/login", data={"name": name, "password": password, "csrf_token": form, "next": "/"})
    if answer.status_code != 303:
        return answer, None
    page = client.get("/").get_data(as_text=True)
    return answer, re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)
