"""What authentication costs a request: the quick-start token, a users-mode API token, a login cookie; and one login.

`.venv/bin/python bench/users_auth.py`: 500 `GET /api/v1/vms` each through Flask's test client (no VM), then one
login through the form with an argon2id hash at argon2-cffi's default cost (docs/web.md, Users and roles).
"""
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.webhyve.usersmode import csrf_of  # noqa: E402  (after the path)
from webhyve.web import create_app, shutdown  # noqa: E402
from webhyve.web.users import HASHER, User, token_digest, write  # noqa: E402

tmp = pathlib.Path(tempfile.mkdtemp())
write(str(tmp / "u.json"), {"op": User("op", "operator", ["c"], HASHER.hash("password123"), {"t": token_digest("sekret")})})
N = 500


def bench(client, headers):
    client.get("/api/v1/vms", headers=headers)
    t = time.perf_counter()
    for _ in range(N):
        assert client.get("/api/v1/vms", headers=headers).status_code == 200
    return (time.perf_counter() - t) / N * 1e6


quick = create_app({"TESTING": True, "CONTROL_TOKEN": "c", "VIEWER_TOKEN": "v", "RECORDINGS_DIR": str(tmp / "r1")})
print("quick-start token: %.0f us/request" % bench(quick.test_client(), {"Authorization": "Bearer c"}))
shutdown(quick)
app = create_app({"TESTING": True, "USERS": str(tmp / "u.json"), "RECORDINGS_DIR": str(tmp / "r2")})
print("users-mode API token: %.0f us/request" % bench(app.test_client(), {"Authorization": "Bearer op!t=sekret"}))
c = app.test_client()
form = csrf_of(c.get("/login").get_data(as_text=True))
t = time.perf_counter()
assert c.post("/login", data={"name": "op", "password": "password123", "csrf_token": form}).status_code == 303
print("login (argon2id verify, default cost): %.0f ms" % ((time.perf_counter() - t) * 1e3))
print("users-mode login cookie: %.0f us/request" % bench(c, {}))
shutdown(app)
