"""`python -m webhyve.web.serve`: start gunicorn (one worker, threads) on 127.0.0.1 and print the URLs with tokens.

The tokens are made here and handed to the app through the environment, so the printed URL is the one
that works. `make run` calls this with --demo shell.
"""
import argparse
import os
import sys

from .access import new_token


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m webhyve.web.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--demo", metavar="GUEST", help="boot this bundled guest as VM 'demo' (e.g. shell)")
    parser.add_argument("--threads", type=int, default=100, help="gunicorn threads: one per open websocket")
    args = parser.parse_args(argv)
    url = "http://%s:%d" % (args.host, args.port)
    env = dict(os.environ)
    env.setdefault("WEBHYVE_CONTROL_TOKEN", new_token())
    env.setdefault("WEBHYVE_VIEWER_TOKEN", new_token())
    env["WEBHYVE_PUBLIC_URL"] = url
    if args.demo:
        env["WEBHYVE_DEMO_GUEST"] = args.demo
    page = "/vms/demo" if args.demo else "/"
    print("webhyve: open %s%s?token=%s\nwebhyve: read-only viewers: %s%s?token=%s" % (
        url, page, env["WEBHYVE_CONTROL_TOKEN"], url, page, env["WEBHYVE_VIEWER_TOKEN"]), flush=True)
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    os.execve(gunicorn, [gunicorn, "--workers", "1", "--threads", str(args.threads), "--bind", "%s:%d" % (args.host, args.port),
                         "webhyve.web:create_app()"], env)


if __name__ == "__main__":
    main()
