"""authz/config/load.py: the loader's defaults that come from the environment."""

from __future__ import annotations

import pytest

from authz.config import ConfigError, parse_config
from authz.config.load import LISTEN_HOST_ENV
from authz.config.runtime import HostPort

SERVERS = """
issuers:
  - {name: main, issuer: "https://issuer.test", jwks_uri: "https://issuer.test/jwks"}
servers:
  - {name: mcp, resource: "https://mcp.test/mcp", issuers: [main]}
"""


# ---------------------------------------------------------------- MCP_AUTHZ_LISTEN_HOST (the image: 0.0.0.0)


def test_without_the_variable_listen_defaults_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LISTEN_HOST_ENV, raising=False)
    config = parse_config(SERVERS)
    assert (config.listen.grpc, config.listen.discovery) == (HostPort("127.0.0.1", 9191), HostPort("127.0.0.1", 9192))


def test_the_variable_is_the_host_of_the_addresses_the_file_leaves_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LISTEN_HOST_ENV, "0.0.0.0")
    config = parse_config(SERVERS)
    assert (str(config.listen.grpc), str(config.listen.discovery)) == ("0.0.0.0:9191", "0.0.0.0:9192")
    assert config.listen.http is None  # off unless the file sets it
    config = parse_config("listen:\n" + SERVERS)  # an empty listen section
    assert str(config.listen.grpc) == "0.0.0.0:9191"


def test_addresses_the_file_writes_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sidecar beside Envoy listens on 127.0.0.1 on purpose; a discovery turned off stays off."""
    monkeypatch.setenv(LISTEN_HOST_ENV, "0.0.0.0")
    config = parse_config('listen: {grpc: "127.0.0.1:7000", discovery: ""}\n' + SERVERS)
    assert str(config.listen.grpc) == "127.0.0.1:7000"
    assert config.listen.discovery is None
    config = parse_config('listen: {discovery: "127.0.0.1:7001"}\n' + SERVERS)
    assert (str(config.listen.grpc), str(config.listen.discovery)) == ("0.0.0.0:9191", "127.0.0.1:7001")


def test_an_ipv6_host_in_either_spelling(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("::", "[::]"):
        monkeypatch.setenv(LISTEN_HOST_ENV, value)
        assert str(parse_config(SERVERS).listen.grpc) == "[::]:9191"


def test_a_bad_host_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LISTEN_HOST_ENV, "not a host")
    with pytest.raises(ConfigError) as error:
        parse_config(SERVERS)
    assert f"{LISTEN_HOST_ENV}: expected a host name or IP address for listen.*, got 'not a host'" in str(error.value)


def test_an_empty_variable_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LISTEN_HOST_ENV, "")
    assert str(parse_config(SERVERS).listen.grpc) == "127.0.0.1:9191"
