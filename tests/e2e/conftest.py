"""Session fixtures for end-to-end tests with real processes (see harness.py).

- `idp` (issuer URL) / `idp_server` (`IdP`): one test identity provider for the session.
- `sample_server`, `envoy`, `redis`, `authorizer`: factories; call them with the arguments of the
  matching `harness.start_*` function (minus the log directory). Everything they start is
  stopped at the end of the session; stop one earlier with `x.proc.stop()`.
- `e2e_log_dir`: where every process log, call log and generated config goes.

Every test under tests/e2e is marked `e2e` (deselect with `-m "not e2e"`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from components import GRPC_SERVER_ENV
from harness import (
    Authorizer,
    Envoy,
    Factory,
    IdP,
    Redis,
    SampleServer,
    start_authorizer,
    start_envoy,
    start_idp,
    start_redis,
    start_sample_server,
)

_HERE = Path(__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--grpc-server",
        default=None,
        help=f"the gRPC front every authorizer uses (grpcio | h2corn); sets ${GRPC_SERVER_ENV}",
    )


def pytest_configure(config: pytest.Config) -> None:
    chosen = config.getoption("--grpc-server", default=None)
    if chosen:
        os.environ[GRPC_SERVER_ENV] = chosen


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def e2e_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def idp_server(e2e_log_dir: Path) -> Iterator[IdP]:
    server = start_idp(e2e_log_dir)
    yield server
    server.proc.stop()


@pytest.fixture(scope="session")
def idp(idp_server: IdP) -> str:
    """The issuer URL of the session's test identity provider."""
    return idp_server.issuer


@pytest.fixture(scope="session")
def idp_factory(e2e_log_dir: Path) -> Iterator[Factory[IdP]]:
    """More identity providers (other clients, short token lifetimes): `idp_factory(access_token_ttl=5)`."""
    factory = Factory(start_idp, e2e_log_dir)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def sample_server(e2e_log_dir: Path) -> Iterator[Factory[SampleServer]]:
    """`sample_server(page_size=..., json_response=..., auth_issuer=..., env=...)` -> `SampleServer`."""
    factory = Factory(start_sample_server, e2e_log_dir)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def envoy(e2e_log_dir: Path) -> Iterator[Factory[Envoy]]:
    """`envoy(config_yaml_or_path)` -> `Envoy` (unique --base-id, --concurrency 1)."""
    factory = Factory(start_envoy, e2e_log_dir)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def redis(e2e_log_dir: Path) -> Iterator[Factory[Redis]]:
    """`redis()` -> `Redis` (`.url` is redis://127.0.0.1:<port>/0)."""
    factory = Factory(start_redis, e2e_log_dir)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def authorizer(e2e_log_dir: Path) -> Iterator[Factory[Authorizer]]:
    """`authorizer(config_yaml_or_path, env=...)` -> `Authorizer` (ready at http://<listen.discovery>/readyz)."""
    factory = Factory(start_authorizer, e2e_log_dir)
    yield factory
    factory.stop_all()
