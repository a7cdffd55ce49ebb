"""Command line: ``glasscockpit serve | demo``."""

from __future__ import annotations

import argparse
import logging
import sys


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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``glasscockpit`` command."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
