"""Throwaway PKI for the local issuer.

MSAL insists on an https authority, so the fake Entra ID must speak real TLS. A fresh CA
is minted per run and only its certificate is written out: the proxy trusts it through
``REQUESTS_CA_BUNDLE`` exactly as it would trust a corporate CA, and no key that could sign
anything else ever touches the disk.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILENAME = "ca.pem"
CERT_FILENAME = "server.pem"
KEY_FILENAME = "server-key.pem"

_DEFAULT_HOSTS = ("localhost",)
_DEFAULT_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class TlsFiles:
    """PEM paths: the CA bundle clients trust, and the server's certificate and key."""

    ca_bundle: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side context serving the generated certificate (TLS 1.2+)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client-side context that trusts only the throwaway CA."""
        return ssl.create_default_context(cafile=str(self.ca_bundle))


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imds-oidc-proxy local issuer"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write with the final mode from the start, so a key is never briefly world-readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def generate_tls_files(
    directory: Path,
    hosts: Iterable[str] = (),
    ips: Iterable[str] = (),
    *,
    valid_for: datetime.timedelta = datetime.timedelta(days=2),
) -> TlsFiles:
    """Create a CA and a server certificate for ``localhost``/``127.0.0.1``/``::1`` + extras.

    The certificates carry the extensions strict verifiers (``VERIFY_X509_STRICT``, the
    default from Python 3.13) demand, so newer clients accept them too.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + valid_for

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("imds-oidc-proxy throwaway CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    dns_names = list(dict.fromkeys([*_DEFAULT_HOSTS, *hosts]))
    ip_names = list(dict.fromkeys([*_DEFAULT_IPS, *ips]))
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_names]

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(
        ca_bundle=directory / CA_FILENAME,
        cert=directory / CERT_FILENAME,
        key=directory / KEY_FILENAME,
    )
    _write(files.ca_bundle, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(
        files.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    return files
