"""Integration secrets: plain values, or ``v2:<iv_hex>:<authTag_hex>:<ciphertext_hex>`` encrypted.

The ``v2`` format is AES-256-GCM with a 12-byte IV and a 16-byte tag; the key is a 32-character
string used as its raw bytes (what Node's ``crypto.createCipheriv('aes-256-gcm', Buffer.from(key), iv)``
takes). Several keys may be configured for rotation: the first that authenticates a value wins.
A value not starting with ``v2:`` is used as it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "v2:"
KEY_BYTES = 32
MIN_HMAC_KEY = 16  # bytes: the shortest secret accepted for signing (audit webhook, approvals)
IV_BYTES = 12
TAG_BYTES = 16
_HEX = re.compile(r"[0-9a-fA-F]*")
_UNSAFE = frozenset(chr(c) for c in (*range(0x20), 0x7F))


class SecretError(ValueError):
    """A key or an encrypted value that cannot be used; the message never holds the secret."""


class Secret:
    """A secret value that does not show itself in ``repr``/``str`` (logs, tracebacks, f-strings)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def parse_key(raw: str) -> bytes:
    """A key as its raw bytes; exactly 32 bytes or SecretError."""
    key = raw.encode("utf-8")
    if len(key) != KEY_BYTES:
        raise SecretError(f"a key must be exactly {KEY_BYTES} bytes, this one has {len(key)}")
    return key


def read_key_file(path: str) -> bytes:
    """A key from a mounted file (one trailing newline is ignored)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise SecretError(f"cannot read {path!r}: {exc.strerror}") from None
    return parse_key(text.removesuffix("\n").removesuffix("\r"))


KEY_VARIABLE = "MCP_AUTHZ_SECRET_KEY"
KEY_FILE_VARIABLE = "MCP_AUTHZ_SECRET_KEY_FILE"


def key_from_environment(variable: str = KEY_VARIABLE, file_variable: str = KEY_FILE_VARIABLE) -> bytes:
    """The key named by ``$MCP_AUTHZ_SECRET_KEY``, else read from the file ``$MCP_AUTHZ_SECRET_KEY_FILE``."""
    raw = os.environ.get(variable)
    if raw is not None:
        return parse_key(raw)
    path = os.environ.get(file_variable)
    if path:
        return read_key_file(path)
    raise SecretError(f"set {variable} (the 32-character key) or {file_variable} (a file holding it)")


def encrypt(plain: str | bytes, key: bytes) -> str:
    """The ``v2:`` form of ``plain`` under ``key`` (a fresh random IV each time)."""
    iv = os.urandom(IV_BYTES)
    data = plain.encode("utf-8") if isinstance(plain, str) else plain
    sealed = AESGCM(key).encrypt(iv, data, None)
    ciphertext, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]
    return f"{PREFIX}{iv.hex()}:{tag.hex()}:{ciphertext.hex()}"


def decrypt_bytes(value: str, keys: Sequence[bytes]) -> bytes:
    """The plaintext of a ``v2:`` value; SecretError if malformed or no key authenticates it."""
    parts = value.split(":")
    if len(parts) != 4 or parts[0] != PREFIX[:-1] or not all(_HEX.fullmatch(p) for p in parts[1:]):
        raise SecretError("not v2:<iv_hex>:<authTag_hex>:<ciphertext_hex>")
    _, iv_hex, tag_hex, ct_hex = parts
    if len(iv_hex) != 2 * IV_BYTES or len(tag_hex) != 2 * TAG_BYTES or len(ct_hex) % 2:
        raise SecretError(f"damaged value: the IV must be {IV_BYTES} bytes and the tag {TAG_BYTES}")
    if not keys:
        raise SecretError("the value is encrypted (v2:) but no key is configured (secrets.keys / key_files)")
    iv, sealed = bytes.fromhex(iv_hex), bytes.fromhex(ct_hex) + bytes.fromhex(tag_hex)
    for key in keys:
        try:
            return AESGCM(key).decrypt(iv, sealed, None)
        except InvalidTag:
            continue
    raise SecretError("no configured key authenticates it (wrong key, or a damaged value)")


def reveal(value: str, keys: Sequence[bytes]) -> Secret:
    """A configured secret: decrypted if ``v2:``, else as it is. Must be text fit for a header."""
    if not value.startswith(PREFIX):
        plain = value
    else:
        try:
            plain = decrypt_bytes(value, keys).decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError("decrypts to bytes that are not UTF-8 text") from None
    if not _UNSAFE.isdisjoint(plain):
        raise SecretError("the value has control characters and cannot be sent in a header")
    return Secret(plain)
