"""Certificates and Envoy configs for the trusted-proxy acceptance test (tests/e2e/test_proxy_mtls.py).

- `make_pki`: a throwaway CA (made with `cryptography`), the gateway's server certificate, and client
  certificates named by a SPIFFE URI SAN, as Istio issues them.
- `gateway_yaml`: the Envoy that `authz.render.envoy` renders for a config, its MCP listener turned
  into a TLS listener that validates client certificates against the CA (`DownstreamTlsContext`);
  a second listener on the same routes may leave the client certificate optional.
- `auth_proxy_yaml`: the authenticating proxy's Envoy: plain HTTP in, the gateway out over mTLS with the
  proxy's own client certificate (`UpstreamTlsContext`), from a chosen loopback source address.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authz.config.runtime import Config
from authz.render.envoy import render_envoy

_TLS = "envoy.transport_sockets.tls"
_DOWNSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
_UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
SERVER_NAME = "localhost"  # the gateway certificate's DNS SAN (and the SNI the proxy sends)


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: CertFiles
    clients: dict[str, CertFiles]  # by SPIFFE ID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertFiles:
    files = CertFiles(directory / f"{stem}.pem", directory / f"{stem}-key.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


def make_pki(directory: Path, client_ids: list[str]) -> Pki:
    """A CA, a server certificate for `localhost`/127.0.0.1, and one client certificate per SPIFFE ID."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)
    ca_key = _key()
    ca_name = _name("mcp-authz test CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(common_name: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> tuple[Any, Any]:
        key = _key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert, key

    server_sans: list[x509.GeneralName] = [
        x509.DNSName(SERVER_NAME),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server = _write(directory, "server", *leaf("gateway", server_sans, ExtendedKeyUsageOID.SERVER_AUTH))
    clients = {}
    for n, spiffe in enumerate(client_ids):
        cert, key = leaf(f"client-{n}", [x509.UniformResourceIdentifier(spiffe)], ExtendedKeyUsageOID.CLIENT_AUTH)
        clients[spiffe] = _write(directory, f"client-{n}", cert, key)
    return Pki(ca=ca_path, server=server, clients=clients)


def _certificate(files: CertFiles) -> dict[str, Any]:
    return {"certificate_chain": {"filename": str(files.cert)}, "private_key": {"filename": str(files.key)}}


def downstream_tls(pki: Pki, *, require_client_certificate: bool) -> dict[str, Any]:
    """A TLS listener with the server certificate; client certificates, when sent, must chain to the CA."""
    return {
        "name": _TLS,
        "typed_config": {
            "@type": _DOWNSTREAM,
            "require_client_certificate": require_client_certificate,
            "common_tls_context": {
                "tls_certificates": [_certificate(pki.server)],
                "validation_context": {"trusted_ca": {"filename": str(pki.ca)}},
            },
        },
    }


def gateway_yaml(config: Config, pki: Pki, *, optional_port: int | None = None) -> str:
    """The rendered gateway with its listener on mTLS (client certificate required); with `optional_port`,
    a second listener there with the same routes where the client certificate is optional."""
    bootstrap = render_envoy(config)
    listeners: list[dict[str, Any]] = bootstrap["static_resources"]["listeners"]
    required = listeners[0]
    optional = copy.deepcopy(required)
    required["filter_chains"][0]["transport_socket"] = downstream_tls(pki, require_client_certificate=True)
    if optional_port is not None:
        optional["name"] = "mcp-optional-client-cert"
        optional["address"]["socket_address"]["port_value"] = optional_port
        optional["filter_chains"][0]["transport_socket"] = downstream_tls(pki, require_client_certificate=False)
        listeners.append(optional)
    return yaml.safe_dump(bootstrap, sort_keys=False)


def auth_proxy_yaml(listen_port: int, gateway_port: int, client: CertFiles, pki: Pki, *, source: str) -> str:
    """An Envoy forwarding plain HTTP on `listen_port` to the gateway over mTLS, connecting from `source`."""
    manager = {
        "@type": _HCM,
        "stat_prefix": "auth_proxy",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "gateway", "timeout": "0s"}}],
                }
            ]
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": gateway_port}}}
    bootstrap = {
        "static_resources": {
            "listeners": [
                {
                    "name": "auth_proxy",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "gateway",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "upstream_bind_config": {"source_address": {"address": source, "port_value": 0}},
                    "load_assignment": {
                        "cluster_name": "gateway",
                        "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
                    },
                    "transport_socket": {
                        "name": _TLS,
                        "typed_config": {
                            "@type": _UPSTREAM,
                            "sni": SERVER_NAME,
                            "common_tls_context": {
                                "tls_certificates": [_certificate(client)],
                                "validation_context": {
                                    "trusted_ca": {"filename": str(pki.ca)},
                                    "match_typed_subject_alt_names": [
                                        {"san_type": "DNS", "matcher": {"exact": SERVER_NAME}}
                                    ],
                                },
                            },
                        },
                    },
                }
            ],
        }
    }
    return yaml.safe_dump(bootstrap, sort_keys=False)
