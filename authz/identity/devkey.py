"""The local development signing key: create it, publish its JWKS, mint tokens with it.

For the embedded local stack and tests only; production issuers are real authorization servers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm


def ensure_key(path: str | Path) -> Path:
    """Create an EC P-256 private key at ``path`` (mode 0600) unless one exists."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.touch(mode=0o600)
        path.write_bytes(pem)
    return path


def _private_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: expected an EC private key")
    return key


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint, used as ``kid``."""
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def public_jwks(path: str | Path) -> dict[str, Any]:
    jwk = json.loads(ECAlgorithm.to_jwk(_private_key(path).public_key()))
    jwk.update(kid=_thumbprint(jwk), use="sig", alg="ES256")
    return {"keys": [jwk]}


def mint(
    path: str | Path,
    *,
    issuer: str,
    audience: str,
    subject: str,
    scopes: list[str] | None = None,
    client_id: str = "dev-cli",
    lifetime: int = 3600,
    extra: dict[str, Any] | None = None,
) -> str:
    """An RFC 9068 access token signed with the development key."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "client_id": client_id,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
        "scope": " ".join(scopes or []),
    }
    claims.update(extra or {})
    kid = public_jwks(path)["keys"][0]["kid"]
    return jwt.encode(claims, _private_key(path), algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})
