"""The loader: a YAML file → ``${ENV}`` substituted → validated (``schema``) → compiled (``compile``).

Every error names the file and the key (``servers.0.issuers: ...``) and all of them are reported at once.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from authz.config.compile import compile_config
from authz.config.errors import ConfigError
from authz.config.profiles import PROFILES, describe
from authz.config.runtime import Config, HostPort
from authz.config.schema import ConfigSpec, ListenSpec, cross_checks, insecure_urls, keys_at

log = logging.getLogger("mcp_authz.config")
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
"""``${NAME}`` or ``${NAME:-default}`` in a config string: group 1 the variable, group 2 the default."""

LISTEN_HOST_ENV = "MCP_AUTHZ_LISTEN_HOST"
"""The host of ``listen.grpc`` / ``listen.discovery`` when the file leaves them out (the image sets 0.0.0.0)."""


def env_names(text: str) -> list[str]:
    """The variables ``text`` refers to with ``${NAME}``, sorted, each once."""
    return sorted({m.group(1) for m in ENV_REF.finditer(text)})


def _substitute_env(node: Any, path: str, errors: list[str]) -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in strings with environment values."""
    if isinstance(node, dict):
        return {k: _substitute_env(v, f"{path}.{k}" if path else str(k), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, f"{path}.{i}", errors) for i, v in enumerate(node)]
    if isinstance(node, str):

        def repl(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1), m.group(2))
            if value is None:
                errors.append(f"{path}: environment variable {m.group(1)} is not set")
                return ""
            return value

        return ENV_REF.sub(repl, node)
    return node


def _default_listen_host(raw: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    """``listen.grpc`` / ``listen.discovery`` left out of the file: their default port on ``$MCP_AUTHZ_LISTEN_HOST``
    if that is set. An address the file writes is kept (a sidecar beside Envoy listens on 127.0.0.1 on purpose)."""
    host = os.environ.get(LISTEN_HOST_ENV, "").removeprefix("[").removesuffix("]")  # [::] as ::
    listen = raw.get("listen")
    if not host or not isinstance(listen, dict | None):
        return raw  # unset, or a listen section the schema will refuse
    try:
        HostPort.parse(str(HostPort(host, 1)))
    except ValueError:
        errors.append(f"{LISTEN_HOST_ENV}: expected a host name or IP address for listen.*, got {host!r}")
        return raw
    filled = dict(listen or {})
    for key in ("grpc", "discovery"):
        if key not in filled:
            default = HostPort.parse(ListenSpec.model_fields[key].default)
            filled[key] = str(HostPort(host, default.port))
    return {**raw, "listen": filled}


def parse_config(text: str, source: str = "<string>", base: Path | None = None) -> Config:
    """Validate YAML text and compile it. Raises ConfigError naming every bad key.

    ``base``: the directory relative paths in the text are taken from (the config file's; default: the working
    directory)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_error(source, exc)]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a mapping at the top level"])
    errors: list[str] = []
    raw = _default_listen_host(_substitute_env(raw, "", errors), errors)
    if errors:
        raise ConfigError(errors)
    try:
        spec = ConfigSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_format_error(e) for e in exc.errors()]) from None
    errors = cross_checks(spec)
    if errors:
        raise ConfigError(errors)
    for key, where in insecure_urls(spec) if spec.allow_insecure_http else []:
        log.warning(
            "plain http off loopback allowed by allow_insecure_http",
            extra={"key": key, "url": where, "config": source},
        )
    return compile_config(spec, source, base)


def _yaml_error(source: str, exc: yaml.YAMLError) -> str:
    """``FILE:LINE:COLUMN: not valid YAML: problem (context)``, one line, naming the file (not ``<unicode string>``)."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return f"{source}: not valid YAML: {exc}"
    mark = exc.problem_mark
    where = f"{source}:{mark.line + 1}:{mark.column + 1}"
    context = ""
    if exc.context and exc.context_mark is not None:
        context = f" ({exc.context} at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
    return f"{where}: not valid YAML: {exc.problem}{context}"


def _format_error(error: Mapping[str, Any]) -> str:
    loc = tuple(error.get("loc", ()))
    key = ".".join(str(p) for p in loc) or "<top>"
    if error.get("type") == "extra_forbidden" and loc:
        return f"{key}: {_unknown_key(str(loc[-1]), keys_at(loc))}"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    head, sep, rest = message.partition(": ")
    if sep and loc and _KEY.fullmatch(head):  # a section's check naming its key: report it at that key
        if head == str(loc[-1]):
            return f"{key}: {rest}"
        if head.split(".")[0] in keys_at((*loc, "")):
            return f"{key}.{head}: {rest}"
    return f"{key}: {message}"


_KEY = re.compile(r"[a-z_]+(?:\.[a-z_]+)*")


def _unknown_key(key: str, valid: list[str]) -> str:
    """Refuse a key the schema does not have, suggesting the nearest valid one (a typo, usually)."""
    nearest = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if nearest:
        return f"unknown key; did you mean {nearest[0]!r}?"
    return "unknown key; the keys here are " + ", ".join(repr(k) for k in valid)


def advice(config: Config) -> list[str]:
    """What a valid config may mean by mistake, one ``key: advice`` line each (``config check`` prints them)."""
    lines = [
        f"issuers.{k}.token_type is unset: the JOSE typ header of its tokens is not checked (RFC 8725 §3.11); set "
        "at+jwt for RFC 9068 access tokens, or the typ your IdP sends (Entra ID: JWT), or a profile that knows it"
        for k, issuer in enumerate(config.issuers.values())
        if issuer.token_type is None
    ]
    servers = list(config.servers.values())
    for k, server in enumerate(servers):
        for other in servers[k + 1 :]:
            for alias in sorted(server.audiences & (other.audiences | {other.resource})):
                lines.append(
                    f"servers.{k}.audiences: {alias!r} is accepted by both {server.name!r} and {other.name!r}: a "
                    "token issued for one is accepted by the other (audience binding is weaker); give each its own"
                )
            for alias in sorted(other.audiences & {server.resource}):
                lines.append(
                    f"servers.{servers.index(other)}.audiences: {alias!r} is {server.name!r}'s resource: a token "
                    f"for {server.name!r} is accepted by {other.name!r} too"
                )
    return lines


def profile_lines(config: Config, spec_issuers: list[dict[str, object]]) -> list[str]:
    """``config check``: what each issuer's profile sets (``issuers.N (profile P): setting``)."""
    lines = []
    for k, issuer in enumerate(config.issuers.values()):
        if issuer.profile == "generic":
            continue
        explicit = set(spec_issuers[k]) if k < len(spec_issuers) else set()
        for line in describe(PROFILES[issuer.profile], explicit):
            lines.append(f"issuers.{k} ({issuer.name}, profile {issuer.profile}): {line}")
    return lines


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, validate and compile the config file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_config(text, str(path), Path(path).parent)
