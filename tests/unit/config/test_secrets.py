"""Integration secrets (authz/upstream/secrets.py and the credentials part of config.py): the v2
format against Node's own crypto, key rotation, refusals at load naming the secret, injection on
allow (replacing the client's copy), and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import dev_stack, http_request, make_config, server_spec, tool_call

from authz.config import secrets
from authz.config.errors import ConfigError

KEY = "0123456789abcdef0123456789abcdef"
OTHER_KEY = "fedcba9876543210fedcba9876543210"
VALUE = "sk-live-integration-4711"

NODE_ENCRYPT = """
const { createCipheriv, randomBytes } = require('node:crypto');
const [key, value] = process.argv.slice(1);
const iv = randomBytes(12);
const cipher = createCipheriv('aes-256-gcm', Buffer.from(key), iv);
const ct = Buffer.concat([cipher.update(value, 'utf8'), cipher.final()]);
process.stdout.write(`v2:${iv.toString('hex')}:${cipher.getAuthTag().toString('hex')}:${ct.toString('hex')}`);
"""


def node_encrypt(key: str, value: str) -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is required (the v2 format is checked against Node's own crypto)")
    return subprocess.run(
        [node, "-e", NODE_ENCRYPT, key, value], check=True, capture_output=True, text=True, timeout=30
    ).stdout


def credentials_config(value: str, keys: list[str], header: str = "X-Api-Key", prefix: str = "") -> Any:
    creds = {"header": header, "value_secret": value, "prefix": prefix}
    return make_config(servers=[server_spec(credentials=creds)], secrets={"keys": keys})


def test_a_value_encrypted_by_node_is_decrypted() -> None:
    encrypted = node_encrypt(KEY, VALUE)
    assert encrypted.startswith("v2:") and VALUE not in encrypted
    config = credentials_config(encrypted, [KEY])
    credential = config.servers["mcp"].credentials
    assert credential is not None and credential.header == "x-api-key"
    assert credential.value.reveal() == VALUE


def test_rotation_the_first_key_that_authenticates_wins() -> None:
    encrypted = node_encrypt(OTHER_KEY, VALUE)
    config = credentials_config(encrypted, [KEY, OTHER_KEY])
    credential = config.servers["mcp"].credentials
    assert credential is not None and credential.value.reveal() == VALUE


def test_a_plain_value_is_used_as_it_is() -> None:
    config = credentials_config("plain-value", [], header="Authorization", prefix="Bearer ")
    credential = config.servers["mcp"].credentials
    assert credential is not None and credential.value.reveal() == "Bearer plain-value"


@pytest.mark.parametrize(
    ("value", "keys", "problem"),
    [
        (secrets.encrypt(VALUE, OTHER_KEY.encode()), [KEY], "no configured key authenticates"),
        (secrets.encrypt(VALUE, KEY.encode())[:-2] + "00", [KEY], "no configured key authenticates"),
        ("v2:00:11:22", [KEY], "damaged value"),
        ("v2:zz:11", [KEY], "not v2:"),
        (secrets.encrypt(VALUE, KEY.encode()), [], "no key is configured"),
    ],
)
def test_a_bad_secret_is_refused_naming_its_path(value: str, keys: list[str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        credentials_config(value, keys)
    (error,) = caught.value.errors
    assert error.startswith("servers.0.credentials.value_secret: ")
    assert problem in error
    assert VALUE not in str(caught.value)


@pytest.mark.parametrize("key", [KEY[:-1], KEY + "x", "é" * 16 + "x" * 16])
def test_a_key_not_exactly_32_bytes_is_refused(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        credentials_config("plain", [key])
    assert any(e.startswith("secrets.keys.0: a key must be exactly 32 bytes") for e in caught.value.errors)
    assert key not in str(caught.value)


def test_a_key_from_a_mounted_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY + "\n")
    encrypted = secrets.encrypt(VALUE, KEY.encode())
    creds = {"header": "X-Api-Key", "value_secret": encrypted}
    config = make_config(servers=[server_spec(credentials=creds)], secrets={"key_files": [str(tmp_path / "key")]})
    credential = config.servers["mcp"].credentials
    assert credential is not None and credential.value.reveal() == VALUE


def test_a_secret_does_not_show_itself() -> None:
    secret = secrets.Secret(VALUE)
    assert VALUE not in repr(secret) and VALUE not in str(secret) and VALUE not in f"{secret}"
    config = credentials_config(VALUE, [])
    assert VALUE not in repr(config.servers["mcp"])


def test_decrypted_control_characters_are_refused() -> None:
    with pytest.raises(ConfigError, match="control characters"):
        credentials_config(secrets.encrypt("a\r\nX-Evil: 1", KEY.encode()), [KEY])


async def test_the_secret_is_injected_on_allow_replacing_the_client_copy(tmp_path: Path) -> None:
    creds = {"header": "Authorization", "value_secret": secrets.encrypt(VALUE, KEY.encode()), "prefix": "Bearer "}
    stack = dev_stack(tmp_path, [server_spec(credentials=creds)], secrets={"keys": [KEY]})
    decision = await stack.checker.check(http_request(tool_call("search"), token=stack.token()))
    assert decision.allowed, decision
    assert dict(decision.set_headers)["authorization"] == f"Bearer {VALUE}"
    assert "authorization" not in decision.remove_headers  # Envoy removes after it sets


async def test_without_credentials_the_token_is_still_removed(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [server_spec()])
    decision = await stack.checker.check(http_request(tool_call("search"), token=stack.token()))
    assert decision.allowed and "authorization" in decision.remove_headers
    assert "authorization" not in dict(decision.set_headers)


def cli(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_cli_encrypt_then_config_check(tmp_path: Path) -> None:
    done = cli("secret", "encrypt", stdin=VALUE + "\n", env={secrets.KEY_VARIABLE: KEY})
    assert done.returncode == 0, done.stderr
    encrypted = done.stdout.strip()
    assert secrets.decrypt_bytes(encrypted, [KEY.encode()]) == VALUE.encode()
    doc = {
        "issuers": [{"name": "main", "issuer": "https://issuer.test", "jwks_uri": "https://issuer.test/jwks"}],
        "servers": [
            {
                "name": "mcp",
                "resource": "https://mcp.test/mcp",
                "credentials": {"header": "X-Api-Key", "value_secret": encrypted},
            }
        ],
        "secrets": {"keys": ["${TEST_SECRET_KEY}"]},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(doc))
    ok = cli("config", "check", str(path), env={"TEST_SECRET_KEY": KEY})
    assert ok.returncode == 0, ok.stderr
    wrong = cli("config", "check", str(path), env={"TEST_SECRET_KEY": OTHER_KEY})
    assert wrong.returncode == 2
    assert "servers.0.credentials.value_secret" in wrong.stderr
    assert VALUE not in wrong.stderr + wrong.stdout and OTHER_KEY not in wrong.stderr


def test_cli_encrypt_refuses_a_short_key() -> None:
    done = cli("secret", "encrypt", stdin=VALUE, env={secrets.KEY_VARIABLE: "short"})
    assert done.returncode == 2 and "exactly 32 bytes" in done.stderr and not done.stdout


@pytest.mark.parametrize(
    ("creds", "problem"),
    [
        ({"header": "X Api Key", "value_secret": "v"}, "not a header name"),
        ({"header": "Host", "value_secret": "v"}, "not a header name"),
        ({"header": ":authority", "value_secret": "v"}, "not a header name"),
        ({"header": "X-Api-Key", "value_secret": "v", "prefix": "Bearer\r\nX-Evil: 1 "}, "control characters"),
        ({"header": "X-MCP-Subject", "value_secret": "v"}, "also an identity header"),
    ],
)
def test_a_header_that_cannot_carry_a_credential_is_refused(creds: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        make_config(servers=[server_spec(credentials=creds)])


async def test_policy_explain_shows_no_secret_and_exchanges_nothing(tmp_path: Path) -> None:
    from authz.explain.offline import REDACTED, explain_file

    creds = {"header": "X-Api-Key", "value_secret": VALUE}
    exchange = {"token_endpoint": "http://127.0.0.1:9/token", "resource": "https://api.test/", "client_id": "c"}
    exchange["client_secret"] = "s"
    stack = dev_stack(tmp_path, [server_spec(credentials=creds, token_exchange=exchange)])
    result = await explain_file(stack.config, tool_call("search"), stack.token())
    assert result["decision"] == "allow", result
    assert result["headers"]["x-api-key"] == REDACTED and result["headers"]["authorization"] == REDACTED
    assert VALUE not in json.dumps(result)


def test_cli_encrypt_with_a_key_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY + "\n")
    done = cli("secret", "encrypt", "--key-file", str(tmp_path / "key"), stdin=VALUE)
    assert done.returncode == 0, done.stderr
    assert secrets.decrypt_bytes(done.stdout.strip(), [KEY.encode()]) == VALUE.encode()
    empty = cli("secret", "encrypt", "--key-file", str(tmp_path / "key"), stdin="")
    assert empty.returncode == 2 and "no value" in empty.stderr and not empty.stdout
