"""Command line: ``glasscockpit serve | demo | sync``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    from glasscockpit.server.serve import serve
    from glasscockpit.server.settings import Settings

    overrides = {
        k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None
    }
    settings = Settings(**overrides)
    print(
        f"glasscockpit: dashboard at http://{settings.host}:{settings.port}/",
        flush=True,
    )
    serve(settings)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from glasscockpit.demo import run_demo

    return run_demo(
        port=args.port,
        epochs=args.epochs,
        delay=args.delay,
        keep_serving=not args.exit,
        preset=args.instruments,
    )


def _sync(args: argparse.Namespace) -> int:
    from glasscockpit.sync import sync_files

    token = args.token
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip() or None
        except OSError as exc:
            print(f"glasscockpit sync: cannot read the token: {exc}", file=sys.stderr)
            return 2
    elif token and token != os.environ.get("GLASSCOCKPIT_TOKEN"):
        print(
            "glasscockpit sync: warning: a token on the command line is visible to "
            "other users (ps, shell history); use GLASSCOCKPIT_TOKEN or --token-file",
            file=sys.stderr,
        )
    try:
        results = sync_files(
            args.files, args.server, token=token, progress=not args.quiet
        )
    except (OSError, ValueError) as exc:
        print(f"glasscockpit sync: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for r in results:
        if r.error:
            failed += 1
            print(f"run {r.run}: not uploaded: {r.error}", file=sys.stderr)
        else:
            renamed = (
                f" (stored as {r.stored_as}: the id belongs to another run)"
                if r.stored_as and r.stored_as != r.run
                else ""
            )
            print(
                f"run {r.run}{renamed}: {r.uploaded} frame(s) uploaded, "
                f"{r.already_held} already on the server"
            )
    if not results:
        print("glasscockpit sync: no frames found in these files", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by tests)."""
    parser = argparse.ArgumentParser(prog="glasscockpit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server and dashboard")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8050)")
    serve.set_defaults(func=_serve)
    demo = sub.add_parser("demo", help="serve and stream a real training run into it")
    demo.add_argument("--port", type=int, default=8050)
    demo.add_argument("--epochs", type=int, default=40)
    demo.add_argument(
        "--delay", type=float, default=0.03, help="seconds slept per step"
    )
    demo.add_argument(
        "--instruments", default="full", help="preset or instrument names"
    )
    demo.add_argument("--exit", action="store_true", help="exit when training ends")
    demo.set_defaults(func=_demo)
    sync = sub.add_parser(
        "sync",
        help="upload spill files and recordings (exactly once; safe to repeat)",
    )
    sync.add_argument("files", nargs="+", metavar="FILE", help=".gcp files")
    sync.add_argument(
        "--server",
        default=os.environ.get("GLASSCOCKPIT_SERVER") or "ws://127.0.0.1:8050",
        help="server URL, ws:// or http:// (default GLASSCOCKPIT_SERVER or "
        "ws://127.0.0.1:8050)",
    )
    sync.add_argument(
        "--token",
        default=os.environ.get("GLASSCOCKPIT_TOKEN") or None,
        help="bearer token (default GLASSCOCKPIT_TOKEN; prefer the variable or "
        "--token-file: arguments are visible to other users in ps)",
    )
    sync.add_argument(
        "--token-file",
        metavar="PATH",
        help="read the bearer token from this file (first line)",
    )
    sync.add_argument("--quiet", action="store_true", help="no progress bar")
    sync.set_defaults(func=_sync)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``glasscockpit`` command."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
