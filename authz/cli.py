"""The ``mcp-authz`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml

from authz import __version__
from authz.config.errors import ConfigError
from authz.config.load import advice, load_config, profile_lines
from authz.config.runtime import Config

DEFAULT_CONFIG = "examples/config.yaml"


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"mcp-authz: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2: what a user's mistake gets instead of a traceback."""
    print(f"mcp-authz: {message}", file=sys.stderr)
    raise SystemExit(2)


def _existing_config(path: str) -> str:
    """``path`` when it is a file; else exit 2 saying where the (default) config was looked for."""
    if not Path(path).is_file():
        if path == DEFAULT_CONFIG:
            _fail(
                f"no {DEFAULT_CONFIG} here (the default -c, relative to the working directory {Path.cwd()}): "
                "run from the repository root or pass -c CONFIG"
            )
        _fail(f"-c {path}: no such file")
    return path


def _read_json(option: str, path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        _fail(f"{option} {path}: cannot read it: {exc.strerror or exc}")
    except UnicodeDecodeError:
        _fail(f"{option} {path}: not JSON (not UTF-8 text)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"{option} {path}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")


def _write(option: str, path: str, text: str) -> None:
    """Write an output file; a missing directory or a refused write exits 2 naming the option."""
    target = Path(path)
    if not target.parent.is_dir():
        _fail(f"{option} {path}: directory {target.parent} does not exist (create it first)")
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        _fail(f"{option} {path}: cannot write it: {exc.strerror or exc}")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvloop

    from authz import app
    from authz.observe import logs

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"mcp-authz: {exc}", file=sys.stderr)
        return 2
    from authz.ports import PortsUnavailable

    logs.setup(config.log_level)
    try:
        uvloop.run(app.serve(args.config))
    except PortsUnavailable as exc:
        _fail(
            f"serve: {exc} (another mcp-authz or `mcp-authz dev up` may be running: "
            f"stop it, or change these in {args.config})"
        )
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    if args.file and args.config and args.file != args.config:
        _fail(f"config check: two files given ({args.config} and {args.file}): give one, as FILE or -c FILE")
    path = args.config or args.file
    if not path:
        _fail("config check: which file? give it as FILE or -c FILE")
    config = _load(path)
    for warning in advice(config):
        print(f"mcp-authz: warning: {warning}", file=sys.stderr)
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    entries = [i for i in raw.get("issuers", []) if isinstance(i, dict)] if isinstance(raw, dict) else []
    for line in profile_lines(config, entries):
        print(line)
    print(f"{path}: ok ({len(config.servers)} MCP servers, {len(config.issuers)} issuers)")
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    """Print the configuration reference (Markdown, generated from the schema; docs/configuration.md holds it)."""
    from authz.config.reference import reference

    print(reference())
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of the config file (docs/config.schema.json holds it)."""
    from authz.config.reference import json_schema_text

    sys.stdout.write(json_schema_text())
    return 0


def _ensure_dev_keys(path: str) -> None:
    """Make the development keys the config names; a file that is no YAML is left for the loader to report."""
    import yaml

    from authz.app import ensure_dev_keys

    with contextlib.suppress(OSError, yaml.YAMLError):
        ensure_dev_keys(path)


def cmd_token(args: argparse.Namespace) -> int:
    from authz.identity import devkey

    _ensure_dev_keys(_existing_config(args.config))
    config = _load(args.config)
    local = [i for i in config.issuers.values() if i.local_key_file and (args.issuer in (None, i.name))]
    if not local:
        print(
            "mcp-authz: no issuer with local_key_file in the config (tokens are minted with the dev key)",
            file=sys.stderr,
        )
        return 2
    issuer = local[0]
    if args.server and args.server not in config.servers:
        _fail(f"token --server {args.server!r}: not in the config's servers (known: {', '.join(config.servers)})")
    server = config.servers[args.server] if args.server else next(iter(config.servers.values()))
    extra: dict[str, Any] = {"groups": args.groups.split(",")} if args.groups else {}
    print(
        devkey.mint(
            issuer.local_key_file or "",
            issuer=issuer.issuer,
            audience=args.aud or server.resource,
            subject=args.sub,
            scopes=args.scope.split() if args.scope else [],
            lifetime=args.lifetime,
            extra=extra,
        )
    )
    return 0


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from authz.explain.offline import explain_file

    config = _load(args.config)
    spec = _read_json("--request", args.request)
    result = asyncio.run(explain_file(config, spec, args.token))
    print(json.dumps(result, indent=2))
    return 0 if result["decision"] == "allow" else 1


def cmd_render_envoy(args: argparse.Namespace) -> int:
    from authz.render.envoy import render_envoy_yaml

    text = render_envoy_yaml(_load(args.config))
    if args.output:
        _write("-o", args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_render_istio(args: argparse.Namespace) -> int:
    from authz.render.authorizer_pod import raw_config, replicas, state_warning
    from authz.render.istio import SIDECAR_DIR, Options, render_istio

    config = _load(args.config)
    options = Options(
        image=args.image,
        namespace=args.namespace,
        mcp_namespace=args.mcp_namespace,
        sidecar_only=args.sidecar_only,
        replicas=args.replicas,
    )
    try:
        files = render_istio(config, raw_config(args.config), options)
        warning = state_warning(config, replicas(config, args.replicas))
    except ValueError as exc:
        print(f"mcp-authz: {exc}", file=sys.stderr)
        return 2
    if warning:
        print(f"mcp-authz: {warning}", file=sys.stderr)
    if not args.output:
        sys.stdout.write("".join(f"# ---- {name}\n{text}" for name, text in files.items()))
        return 0
    out = Path(args.output)
    try:
        (out / SIDECAR_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"-o {args.output}: cannot make this directory: {exc.strerror or exc}")
    for name, text in files.items():
        _write("-o", str(out / name), text)
    return 0


def cmd_render_kubernetes(args: argparse.Namespace) -> int:
    from authz.render.authorizer_pod import raw_config, replicas, state_warning
    from authz.render.kubernetes import render_kubernetes

    config = _load(args.config)
    try:
        text = render_kubernetes(config, raw_config(args.config), args.image, replicas=args.replicas)
        warning = state_warning(config, replicas(config, args.replicas))
    except ValueError as exc:
        print(f"mcp-authz: {exc}", file=sys.stderr)
        return 2
    if warning:
        print(f"mcp-authz: {warning}", file=sys.stderr)
    if args.output:
        _write("-o", args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_secret_encrypt(args: argparse.Namespace) -> int:
    """Read a secret on stdin, print its ``v2:`` form under the key from the environment or a file."""
    from authz.config import secrets

    try:
        key = secrets.read_key_file(args.key_file) if args.key_file else secrets.key_from_environment()
    except secrets.SecretError as exc:
        print(f"mcp-authz: secret encrypt: {exc}", file=sys.stderr)
        return 2
    value = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if not value:
        print("mcp-authz: secret encrypt: no value on stdin", file=sys.stderr)
        return 2
    print(secrets.encrypt(value, key))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the authorizer answers ready (the image's HEALTHCHECK: no curl needed)."""
    from authz import probe

    try:
        if args.grpc:
            result = probe.grpc_health(args.address or probe.GRPC, args.timeout)
        else:
            result = probe.readyz(args.address or probe.DISCOVERY, args.timeout)
    except ValueError as exc:
        print(f"mcp-authz: health: --address: {exc}", file=sys.stderr)
        return 2
    print(result.detail, file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def cmd_dev_up(args: argparse.Namespace) -> int:
    from authz.devstack import up

    return up(args.config)


def parser() -> argparse.ArgumentParser:
    from authz.render.authorizer_pod import IMAGE

    p = argparse.ArgumentParser(prog="mcp-authz", description="Envoy external authorizer for MCP servers")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gRPC authorizer and the discovery service")
    s.add_argument("-c", "--config", required=True)
    s.set_defaults(func=cmd_serve)

    cfg = sub.add_parser("config", help="configuration tools").add_subparsers(dest="action", required=True)
    c = cfg.add_parser("check", help="validate a config file without starting")
    c.add_argument("file", nargs="?", help="the config file (or -c FILE, as every other command takes it)")
    c.add_argument("-c", "--config", help="the config file")
    c.set_defaults(func=cmd_config_check)

    ref = cfg.add_parser("reference", help="print the configuration reference (Markdown)")
    ref.set_defaults(func=cmd_config_reference)
    sch = cfg.add_parser("schema", help="print the JSON Schema of the config file (for editors)")
    sch.set_defaults(func=cmd_config_schema)

    t = sub.add_parser("token", help="mint a development access token with the local dev key")
    t.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    t.add_argument("--sub", default="dev-user", help="subject")
    t.add_argument("--scope", default="", help='space-separated scopes, e.g. "tools:read"')
    t.add_argument("--groups", default="", help="comma-separated groups claim")
    t.add_argument("--server", help="MCP server name (audience = its resource URL)")
    t.add_argument("--aud", help="explicit audience")
    t.add_argument("--issuer", help="issuer name (one with local_key_file)")
    t.add_argument("--lifetime", type=int, default=3600)
    t.set_defaults(func=cmd_token)

    pol = sub.add_parser("policy", help="policy tools").add_subparsers(dest="action", required=True)
    e = pol.add_parser("explain", help="print the decision and the rule that made it")
    e.add_argument("-c", "--config", required=True)
    e.add_argument("--token", default="", help="the bearer JWT (empty: no token)")
    e.add_argument(
        "--request", required=True, help="JSON file: a JSON-RPC body, or {method, path, headers, body, server}"
    )
    e.set_defaults(func=cmd_policy_explain)

    r = sub.add_parser("render", help="render proxy configuration").add_subparsers(dest="target", required=True)
    re_ = r.add_parser("envoy", help="the standalone Envoy filter chain")
    re_.add_argument("-c", "--config", required=True)
    re_.add_argument("-o", "--output")
    re_.set_defaults(func=cmd_render_envoy)
    ri = r.add_parser("istio", help="Istio objects: MeshConfig providers, CUSTOM policies, routing, the authorizer")
    ri.add_argument("-c", "--config", required=True)
    ri.add_argument("-o", "--output", help="directory (default: all files on stdout)")
    ri.add_argument("--image", default=IMAGE, help="the authorizer's container image (default: %(default)s)")
    ri.add_argument("--namespace", default="mcp-authz", help="the shared authorizer's namespace")
    ri.add_argument("--mcp-namespace", default="mcp", help="the MCP servers' namespace")
    ri.add_argument("--sidecar-only", action="store_true", help="only the sidecar layout's provider and policy")
    ri.add_argument("--replicas", type=int, help="the shared authorizer's replicas (default: 2 with store.url, else 1)")
    ri.set_defaults(func=cmd_render_istio)
    rk = r.add_parser("kubernetes", help="standalone Envoy + authorizer + MCP server in one pod, no mesh")
    rk.add_argument("-c", "--config", required=True)
    rk.add_argument("-o", "--output")
    rk.add_argument("--image", default=IMAGE, help="the authorizer's container image (default: %(default)s)")
    rk.add_argument("--replicas", type=int, help="pods (Envoy + authorizer each; default: 2 with store.url, else 1)")
    rk.set_defaults(func=cmd_render_kubernetes)

    sec = sub.add_parser("secret", help="integration secrets").add_subparsers(dest="action", required=True)
    se = sec.add_parser(
        "encrypt",
        help="encrypt stdin to v2:<iv>:<tag>:<ciphertext> (AES-256-GCM) with the 32-character key in "
        "$MCP_AUTHZ_SECRET_KEY or the file $MCP_AUTHZ_SECRET_KEY_FILE",
    )
    se.add_argument("--key-file", help="read the key from this file instead of the environment")
    se.set_defaults(func=cmd_secret_encrypt)

    h = sub.add_parser("health", help="probe a running authorizer: GET /readyz (or grpc.health.v1); exit 0 if ready")
    h.add_argument(
        "--address", help="listen.discovery to probe (default 127.0.0.1:9192; with --grpc listen.grpc, 127.0.0.1:9191)"
    )
    h.add_argument("--grpc", action="store_true", help="ask grpc.health.v1 on the gRPC port instead of /readyz")
    h.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    h.set_defaults(func=cmd_health)

    d = sub.add_parser("dev", help="local development stack").add_subparsers(dest="action", required=True)
    du = d.add_parser("up", help="run Envoy, the authorizer and a sample MCP server locally")
    du.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    du.set_defaults(func=cmd_dev_up)

    from authz.admin.commands import add_parser as add_admin_parser

    add_admin_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result
