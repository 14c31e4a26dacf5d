"""Credentials of a Flower federation: a throw-away TLS CA and server certificate, SuperNode key pairs.

For tests and demos (``deploy.LocalFederation``); use your own PKI in production (docs/flower.md, "Security").
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: the CA certificate (clients trust it) and the server's certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls(directory: str | Path, host: str = "127.0.0.1") -> TLSFiles:
    """Generate a self-signed CA and a server certificate for ``host`` (IP and localhost SANs), valid 1 day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("bouquet test CA")).issuer_name(name("bouquet test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost")]
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        sans.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(name(host)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    files = TLSFiles(d / "ca.pem", d / "server.pem", d / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    return files


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's key pair (OpenSSH format, EC P-384): the private key stays on the node, the public key
    is registered with the SuperLink (``flwr supernode register``)."""

    private: Path
    public: Path


def make_node_keys(directory: str | Path, count: int) -> list[NodeKey]:
    """``count`` fresh SuperNode key pairs ``node-<i>`` / ``node-<i>.pub`` in ``directory`` (private files 0600)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    keys = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP384R1())
        pair = NodeKey(d / f"node-{i}", d / f"node-{i}.pub")
        pair.private.touch(mode=0o600)
        pair.private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()))
        pair.public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                              serialization.PublicFormat.OpenSSH))
        keys.append(pair)
    return keys
