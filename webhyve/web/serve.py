"""`python -m webhyve.web.serve`: start gunicorn (one worker, threads) on 127.0.0.1, say what it is doing while the
worker starts and boots the demo VM, and print the two URLs last, labelled.

The tokens are made here and handed to the app through the environment, so the printed URL is the one
that works. `make run` calls this with --demo shell. gunicorn runs as a child; Ctrl-C stops both.
With --redis the server is a node of a cluster (docs/cluster.md): the cluster's tokens (the first node's) are
fetched from Redis here, so the URLs printed work on every node.
"""
import argparse
import os
import signal
import subprocess
import sys
import time

import redis
import requests

from ..cluster.registry import Registry, connect, shown_url
from .access import new_token

PROGRESS_EVERY = 5.0          # seconds between "still booting" lines
READY_TIMEOUT = 600
SLOW = 20                     # seconds: beyond this, say the likely reason
SLOW_WHY = ("; without `make precompile` (make run does it) the engine's numba kernels compile on first use, "
            "a few minutes on 2 cores")


def say(text):
    print("webhyve: " + text, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m webhyve.web.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--demo", metavar="GUEST", help="boot this bundled guest as VM 'demo' (e.g. shell)")
    parser.add_argument("--threads", type=int, default=100, help="gunicorn threads: one per open websocket")
    parser.add_argument("--users", metavar="PATH", default=os.environ.get("WEBHYVE_USERS"),
                        help="users mode: accounts, roles and API tokens from this file, made with `python -m "
                             "webhyve.web.users` (WEBHYVE_USERS); without it, the two-token quick start")
    cluster = parser.add_argument_group("cluster mode (docs/cluster.md)")
    cluster.add_argument("--redis", metavar="URL", default=os.environ.get("WEBHYVE_REDIS"),
                         help="join the cluster on this Redis: redis://[:PASSWORD@]HOST:PORT/DB, rediss:// for TLS "
                              "(WEBHYVE_REDIS)")
    cluster.add_argument("--node", default=os.environ.get("WEBHYVE_NODE"),
                         help="this node's name (WEBHYVE_NODE; default the host name)")
    cluster.add_argument("--advertise", metavar="URL", default=os.environ.get("WEBHYVE_NODE_URL"),
                         help="where the other nodes reach this one (WEBHYVE_NODE_URL; default http://HOST:PORT)")
    cluster.add_argument("--cluster-secret", default=os.environ.get("WEBHYVE_CLUSTER_SECRET"),
                         help="the key that signs forwarded requests, the same on every node (WEBHYVE_CLUSTER_SECRET)")
    cluster.add_argument("--restart-on-failure", metavar="SECONDS", default=os.environ.get("WEBHYVE_RESTART_ON_FAILURE"),
                         help="checkpoint the running VMs this often into --shared-dir; when this node dies they "
                              "restart on another (WEBHYVE_RESTART_ON_FAILURE)")
    cluster.add_argument("--shared-dir", metavar="DIR", default=os.environ.get("WEBHYVE_SHARED_DIR"),
                         help="a folder at the same path on every node, for the checkpoints (WEBHYVE_SHARED_DIR)")
    args = parser.parse_args(argv)
    url = "http://%s:%d" % (args.host, args.port)
    env = dict(os.environ)
    env.setdefault("WEBHYVE_CONTROL_TOKEN", new_token())
    env.setdefault("WEBHYVE_VIEWER_TOKEN", new_token())
    env["WEBHYVE_PUBLIC_URL"] = url
    if args.users:
        if args.redis:
            parser.error("--users and --redis do not combine yet (docs/cluster.md)")
        if not os.path.isfile(args.users):
            parser.error("--users %s: no such file; make it with `python -m webhyve.web.users --file %s add NAME "
                         "--role administrator`" % (args.users, args.users))
        env["WEBHYVE_USERS"] = os.path.abspath(args.users)
    if args.redis:
        join_cluster(parser, args, env)
    if args.demo:
        env["WEBHYVE_DEMO_GUEST"] = args.demo
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    say("starting the server on %s (gunicorn, 1 worker, %d threads)" % (url, args.threads))
    server = subprocess.Popen([gunicorn, "--workers", "1", "--threads", str(args.threads), "--log-level", "warning",
                               "--bind", "%s:%d" % (args.host, args.port), "webhyve.web:create_app()"], env=env)
    signal.signal(signal.SIGTERM, lambda *_: server.send_signal(signal.SIGTERM))
    try:
        if args.users:
            if wait_until_ready(server, url, None, None):
                say("ready (users mode). Log in at %s/login" % url)
        elif wait_until_ready(server, url, env["WEBHYVE_CONTROL_TOKEN"], args.demo):
            page = "/vms/demo" if args.demo else "/"
            say("ready. Open one of these (the token leaves the address bar once the page loads):")
            print("  control:    %s%s?token=%s\n  read-only:  %s%s?token=%s" % (
                url, page, env["WEBHYVE_CONTROL_TOKEN"], url, page, env["WEBHYVE_VIEWER_TOKEN"]), flush=True)
        return server.wait()
    except KeyboardInterrupt:                     # Ctrl-C: gunicorn's quick shutdown (a terminal sent it one too)
        server.send_signal(signal.SIGINT)
        try:
            return server.wait(30)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            server.kill()
            return server.wait()


def join_cluster(parser, args, env):
    """Put the cluster settings into the app's environment, with the tokens the cluster already uses."""
    if not args.cluster_secret:
        parser.error("--redis needs --cluster-secret (or WEBHYVE_CLUSTER_SECRET), the same on every node")
    if args.host in ("0.0.0.0", "::") and not args.advertise:
        parser.error("--host %s: say with --advertise URL where the other nodes reach this one" % args.host)
    env.update(WEBHYVE_REDIS=args.redis, WEBHYVE_CLUSTER_SECRET=args.cluster_secret,
               WEBHYVE_NODE_URL=args.advertise or env["WEBHYVE_PUBLIC_URL"])
    for value, name in ((args.node, "NODE"), (args.restart_on_failure, "RESTART_ON_FAILURE"),
                        (args.shared_dir, "SHARED_DIR")):
        if value:
            env["WEBHYVE_" + name] = value
    registry = Registry(connect(args.redis))
    try:
        env["WEBHYVE_CONTROL_TOKEN"], env["WEBHYVE_VIEWER_TOKEN"] = registry.shared_tokens(
            env["WEBHYVE_CONTROL_TOKEN"], env["WEBHYVE_VIEWER_TOKEN"])
    except redis.RedisError as problem:
        say("Redis at %s does not answer (%s): this node starts with its own tokens" % (shown_url(args.redis), problem))


def wait_until_ready(server, url, token, demo):
    """Poll until the server answers and (with a demo) the demo VM shows its prompt, saying what it waits for;
    False if the server exited or never came up. Without a token (users mode), until it answers at all."""
    started = time.monotonic()
    phase, said = "server", 0.0
    headers = {"Authorization": "Bearer " + token} if token else {}
    while time.monotonic() - started < READY_TIMEOUT:
        if server.poll() is not None:
            say("the server exited (status %s); its messages are above" % server.returncode)
            return False
        elapsed = time.monotonic() - started
        try:
            if phase == "server":
                requests.get(url + ("/api/v1/session" if token else "/api/v1/openapi.json"), headers=headers,
                             timeout=5).raise_for_status()
                phase = "demo" if demo else "done"
                say("server up after %.0f s%s" % (elapsed, "; booting the demo VM (%s)" % demo if demo else ""))
            if phase == "demo":
                console = requests.get(url + "/api/v1/vms/demo/console", headers=headers, timeout=5)
                if console.ok and console.json()["text"].strip():
                    say("demo VM booted after %.0f s" % elapsed)
                    phase = "done"
        except requests.RequestException:
            pass
        if phase == "done":
            return True
        if elapsed - said >= PROGRESS_EVERY:
            said = elapsed
            say("%s (%.0f s)%s" % ("starting the worker and booting the demo VM" if phase == "server"
                                   else "demo VM booting", elapsed, "" if elapsed < SLOW else SLOW_WHY))
        time.sleep(0.25)
    say("still not ready after %d s; the server's messages are above" % READY_TIMEOUT)
    return False


if __name__ == "__main__":
    sys.exit(main())
