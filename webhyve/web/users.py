"""Users mode's accounts: the users file (JSON or TOML) the server is given, and `python -m webhyve.web.users`.

The file holds {"users": {NAME: {"role", "pools", "password", "tokens": {TOKENID: HASH}}}}. Passwords are argon2id
hashes (argon2-cffi). API tokens are Proxmox's `USER!TOKENID=SECRET`, sent as `Authorization: Bearer …`; only
their SHA-256 is stored: the secret is 144 random bits, so a slow hash adds nothing against guessing, and an
argon2 verify (64 MiB, about 0.3 s here) on every API request would be a denial of service on its own
(GitHub and PyPI store their tokens the same way). The server re-reads the file when its mtime changes, so the
CLI's edits apply without a restart. The CLI writes JSON atomically (temporary file and rename), mode 0600.
"""
import argparse
import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import tempfile
import threading
import tomllib

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("administrator", "operator", "viewer")
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")          # user, pool and token ids: engine/names.py's rule
HASHER = PasswordHasher()                           # argon2id, RFC 9106's second recommended parameters


class UsersError(Exception):
    """A users file or a CLI request that cannot be used; the message says why."""


class User:
    """One account. `password`: its argon2 hash; `tokens`: token id → SHA-256 hex of the secret."""

    def __init__(self, name, role, pools=(), password=None, tokens=None):
        self.name, self.role, self.pools = name, role, tuple(pools)
        self.password, self.tokens = password, dict(tokens or {})

    def as_json(self):
        return {"role": self.role, "pools": list(self.pools), "password": self.password, "tokens": self.tokens}

    def check_password(self, password):
        if not self.password:
            return False
        try:
            return HASHER.verify(self.password, password)
        except (VerificationError, InvalidHashError):
            return False

    def session_mark(self):
        """A short digest of the password hash: a session cookie carries it, so a new password logs every
        session of this user out."""
        return hashlib.sha256((self.password or "").encode()).hexdigest()[:16]


_NOBODY = []


def check_nobody(password):
    """Spend an argon2 verify for a name that has no account, so a wrong name takes as long as a wrong password
    and the login's timing does not tell which names exist."""
    if not _NOBODY:
        _NOBODY.append(HASHER.hash(secrets.token_urlsafe(12)))
    User("nobody", "viewer", password=_NOBODY[0]).check_password(password)
    return False


def token_digest(secret):
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def checked(name, what):
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UsersError("%s %r: use 1 to 64 ASCII letters, digits, '-' and '_'" % (what, name))
    return name


def parse(data, where):
    """{name: User} from the file's parsed contents; UsersError naming the first problem."""
    if not isinstance(data, dict) or not isinstance(data.get("users", {}), dict):
        raise UsersError("%s: expected {\"users\": {NAME: {...}}}" % where)
    out = {}
    for name, entry in data.get("users", {}).items():
        checked(name, "%s: user" % where)
        if not isinstance(entry, dict) or entry.get("role") not in ROLES:
            raise UsersError("%s: user %r needs a role, one of %s" % (where, name, ", ".join(ROLES)))
        pools = entry.get("pools", [])
        if not isinstance(pools, list):
            raise UsersError("%s: user %r: pools must be a list of names" % (where, name))
        tokens = entry.get("tokens", {})
        if not isinstance(tokens, dict) or not all(isinstance(v, str) for v in tokens.values()):
            raise UsersError("%s: user %r: tokens must map token ids to hashes" % (where, name))
        out[name] = User(name, entry["role"], [checked(p, "%s: pool" % where) for p in pools],
                         entry.get("password"), {checked(t, "%s: token id" % where): h for t, h in tokens.items()})
    return out


def read(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return {}
    except OSError as problem:
        raise UsersError("%s: %s" % (path, problem.strerror)) from None
    try:
        data = tomllib.loads(raw.decode()) if path.endswith(".toml") else json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as problem:
        raise UsersError("%s: not valid %s: %s" % (path, "TOML" if path.endswith(".toml") else "JSON", problem)) from None
    return parse(data, path)


def write(path, users):
    """Atomically: a temporary file beside it, mode 0600, renamed over it."""
    if path.endswith(".toml"):
        raise UsersError("%s: the CLI writes JSON; name the file …json (the server reads either)" % path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".users-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"users": {n: u.as_json() for n, u in sorted(users.items())}}, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class UserStore:
    """The server's view of the users file, re-read when it changes. Legend: `users` is guarded by `lock`."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.users, self._stamp = read(path), self._mtime()

    def _mtime(self):
        try:
            stat = os.stat(self.path)
            return stat.st_mtime_ns, stat.st_size
        except OSError:
            return None

    def get(self, name):
        stamp = self._mtime()
        with self.lock:
            if stamp != self._stamp:
                try:
                    self.users = read(self.path)
                except UsersError:           # a half-edited file by hand: keep the last good one
                    pass
                self._stamp = stamp
            return self.users.get(name) if isinstance(name, str) else None

    def by_token(self, token):
        """The User a `USER!TOKENID=SECRET` token belongs to, or None."""
        user_part, _, secret = token.partition("=")
        name, _, token_id = user_part.partition("!")
        user = self.get(name) if secret and token_id else None
        stored = user.tokens.get(token_id) if user else None
        if stored is None or not hmac.compare_digest(stored, token_digest(secret)):
            return None
        return user


# -- the CLI -------------------------------------------------------------------------------------------------
def ask_password(args):
    """From the terminal (twice), or one line of stdin when it is not a terminal."""
    if sys.stdin.isatty():
        first = getpass.getpass("password for %s: " % args.name)
        if first != getpass.getpass("again: "):
            raise UsersError("the two passwords differ")
    else:
        first = sys.stdin.readline().rstrip("\n")
    if len(first) < 8:
        raise UsersError("a password needs at least 8 characters")
    return first


def command(args):
    users = read(args.file)
    name = getattr(args, "name", None)
    if args.what in ("passwd", "del", "token") and name not in users:
        raise UsersError("no user %r in %s" % (name, args.file))
    if args.what == "add":
        if checked(name, "user") in users:
            raise UsersError("user %r exists; `passwd` changes the password" % name)
        users[name] = User(name, args.role, [checked(p, "pool") for p in args.pool],
                           HASHER.hash(ask_password(args)))
    elif args.what == "passwd":
        users[name].password = HASHER.hash(ask_password(args))
    elif args.what == "del":
        del users[name]
    elif args.what == "token":
        user, token_id = users[name], checked(args.token_id, "token id")
        if args.token_what == "add":
            if token_id in user.tokens:
                raise UsersError("%s already has a token %r" % (name, token_id))
            secret = secrets.token_urlsafe(18)
            user.tokens[token_id] = token_digest(secret)
            print("%s!%s=%s" % (name, token_id, secret))
            print("(shown once: send it as Authorization: Bearer …)", file=sys.stderr)
        elif user.tokens.pop(token_id, None) is None:
            raise UsersError("%s has no token %r" % (name, token_id))
    else:
        for user in sorted(users.values(), key=lambda u: u.name):
            print("%-20s %-13s pools: %-20s tokens: %s" % (user.name, user.role, ",".join(user.pools) or "-",
                                                           ",".join(sorted(user.tokens)) or "-"))
        return
    write(args.file, users)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m webhyve.web.users", description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=os.environ.get("WEBHYVE_USERS") or "users.json",
                        help="the users file (WEBHYVE_USERS; default users.json)")
    sub = parser.add_subparsers(dest="what", required=True)
    add = sub.add_parser("add", help="add a user (password from a prompt, or one line of stdin)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--pool", action="append", default=[], help="a pool whose VMs the user sees (repeatable)")
    sub.add_parser("passwd", help="set a user's password").add_argument("name")
    sub.add_parser("del", help="delete a user").add_argument("name")
    token = sub.add_parser("token", help="API tokens: add prints the secret once, del revokes")
    token.add_argument("token_what", choices=("add", "del"))
    token.add_argument("name")
    token.add_argument("token_id")
    sub.add_parser("list", help="the users, their roles, pools and token ids")
    args = parser.parse_args(argv)
    try:
        command(args)
    except UsersError as problem:
        print("users: %s" % problem, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
