"""``mcp-authz admin ...``: the admin API from the command line. Prints JSON; exit 2 on any error.

The admin token comes from ``--token`` or the ``MCP_AUTHZ_ADMIN_TOKEN`` environment variable (which,
unlike an argument, other users cannot read from the process list).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from authz.explain.request import from_file

TOKEN_ENV = "MCP_AUTHZ_ADMIN_TOKEN"


def _epoch(text: str) -> float:
    """Epoch seconds, or an ISO 8601 time (with a zone; a naive time is taken as UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epoch seconds or an ISO 8601 time, got {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def add_parser(sub: Any) -> None:
    """Register ``admin`` and its actions on the CLI's subparsers."""
    a = sub.add_parser("admin", help="call a running authorizer's admin API (admin.listen)")
    a.add_argument("--address", required=True, help="HOST:PORT of the admin API")
    a.add_argument("--token", help=f"admin token (default: ${TOKEN_ENV})")
    a.add_argument("--cert", help="PEM client certificate (mTLS)")
    a.add_argument("--key", help="PEM key of --cert")
    a.add_argument("--ca", help="PEM CA bundle that signed the server certificate (TLS)")
    a.add_argument("--timeout", type=float, default=5.0, help="seconds per call")
    actions = a.add_subparsers(dest="action", required=True)

    p = actions.add_parser("revoke-token", help="refuse one token (by jti) until it expires")
    p.add_argument("jti")
    p.add_argument("--exp", type=_epoch, required=True, help="the token's exp (epoch seconds or ISO 8601)")
    p = actions.add_parser("revoke-subject", help="refuse every token of a subject issued before a time")
    p.add_argument("subject")
    p.add_argument("--before", type=_epoch, help="epoch seconds or ISO 8601 (default: now)")
    p = actions.add_parser("sessions", help="list MCP session bindings")
    p.add_argument("--server")
    p.add_argument("--subject")
    p = actions.add_parser("end-session", help="remove a session binding (exit 1 if there was none)")
    p.add_argument("server")
    p.add_argument("session_id")
    p = actions.add_parser("explain", help="run a request through the live Check without forwarding it")
    p.add_argument(
        "--request", required=True, help="JSON file: a JSON-RPC body, or {method, path, headers, body, server}"
    )
    p.add_argument("--server", help="MCP server name (overrides the file's)")
    p.add_argument("--bearer", default="", help="the access token of the request (empty: none)")
    a.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from authz.admin.client import AdminClient, AdminError

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    try:
        with AdminClient(
            args.address, token=token, cert=args.cert, key=args.key, ca=args.ca, timeout=args.timeout
        ) as client:
            code, result = _dispatch(client, args)
    except AdminError as exc:
        print(f"mcp-authz admin: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return code


def _dispatch(client: Any, args: argparse.Namespace) -> tuple[int, Any]:
    from authz.admin.client import AdminError

    if args.action == "revoke-token":
        return 0, {"revoked": args.jti, **client.revoke_token(args.jti, args.exp)}
    if args.action == "revoke-subject":
        return 0, {"revoked": args.subject, **client.revoke_subject(args.subject, args.before)}
    if args.action == "sessions":
        return 0, client.sessions(args.server, args.subject)
    if args.action == "end-session":
        ended = client.end_session(args.server, args.session_id)
        return (0 if ended else 1), {"ended": ended}
    try:
        spec = json.loads(Path(args.request).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdminError(f"cannot read the request file {args.request!r}: {exc}") from None
    given = from_file(spec)
    result = client.explain(
        server=args.server or given.server,
        method=given.method,
        path=given.path,
        headers=given.headers,
        body=given.body,
        token=args.bearer,
    )
    return (0 if result.get("decision") == "allow" else 1), result
