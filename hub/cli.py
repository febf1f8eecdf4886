"""The command line: ``hub serve``, ``hub token`` (``python -m hub ...``).

Every command reads the same environment as the app (``HUB_DATA_DIR`` and the rest).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from hub.auth import Role, issue_token
from hub.config import Settings, SettingsError

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hub.app import create_app

    port = args.port if args.port is not None else int(os.environ.get("PORT") or 8000)
    app = create_app(Settings.from_env())
    uvicorn.run(
        app,
        host=args.host,
        port=port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
        ws_max_size=1 << 20,
        # Compression is per frame per subscriber: it costs more CPU than fan-out itself.
        ws_per_message_deflate=False,
    )
    return 0


def _token(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    try:
        print(issue_token(settings.secret, args.tenant, args.role, ttl=args.ttl))
    except ValueError as exc:
        print(f"hub token: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the hub under uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: $PORT, else 8000")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--graceful-timeout", type=float, default=10.0,
                       help="seconds open connections get to finish on shutdown")  # fmt: skip
    serve.set_defaults(run=_serve)

    token = sub.add_parser("token", help="print a token signed with the configured secret")
    token.add_argument("tenant")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--ttl", type=float, default=None, help="seconds until it expires")
    token.set_defaults(run=_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except SettingsError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2
    return code
