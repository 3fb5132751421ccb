"""Which gRPC front serves listen.grpc: listen.grpc_server, overridden by $MCP_AUTHZ_GRPC_SERVER."""

from __future__ import annotations

import pytest
from support import make_config

from authz import app
from authz.config.errors import ConfigError


def test_the_config_chooses_and_the_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(app.GRPC_SERVER_ENV, raising=False)
    assert app.grpc_server(make_config()) == "grpcio"
    h2corn = make_config(listen={"grpc_server": "h2corn"})
    assert app.grpc_server(h2corn) == "h2corn"
    monkeypatch.setenv(app.GRPC_SERVER_ENV, "grpcio")
    assert app.grpc_server(h2corn) == "grpcio"
    monkeypatch.setenv(app.GRPC_SERVER_ENV, "grpclib")
    with pytest.raises(ValueError, match="MCP_AUTHZ_GRPC_SERVER='grpclib'"):
        app.grpc_server(h2corn)


def test_an_unknown_server_is_refused_at_its_key() -> None:
    with pytest.raises(ConfigError, match=r"listen\.grpc_server"):
        make_config(listen={"grpc_server": "grpclib"})
