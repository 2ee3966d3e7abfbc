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


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class Authority:
    """A throwaway CA: its key signs leaf certificates for as long as it is valid.

    Every certificate carries the extensions strict verifiers (``VERIFY_X509_STRICT``, the
    default from Python 3.13) demand, so newer clients accept them too.
    """

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def new(cls, subject: x509.Name, valid_for: datetime.timedelta) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + valid_for)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self, subject: x509.Name, sans: list[x509.GeneralName], *, server: bool = True
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A new key and its certificate, for a server (with `sans`) or a TLS client."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.cert.not_valid_before_utc)
            .not_valid_after(self.cert.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


def pem(item: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    """A certificate or an unencrypted PKCS#8 key in PEM."""
    if isinstance(item, x509.Certificate):
        return item.public_bytes(serialization.Encoding.PEM)
    return item.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def generate_tls_files(
    directory: Path,
    hosts: Iterable[str] = (),
    ips: Iterable[str] = (),
    *,
    valid_for: datetime.timedelta = datetime.timedelta(days=2),
) -> TlsFiles:
    """Create a CA and a server certificate for ``localhost``/``127.0.0.1``/``::1`` + extras."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = Authority.new(_name("imds-oidc-proxy throwaway CA"), valid_for)
    dns_names = list(dict.fromkeys([*_DEFAULT_HOSTS, *hosts]))
    ip_names = list(dict.fromkeys([*_DEFAULT_IPS, *ips]))
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_names]
    key, cert = authority.issue(_name(dns_names[0]), sans)

    files = TlsFiles(
        ca_bundle=directory / CA_FILENAME,
        cert=directory / CERT_FILENAME,
        key=directory / KEY_FILENAME,
    )
    _write(files.ca_bundle, pem(authority.cert), 0o644)
    _write(files.cert, pem(cert), 0o644)
    _write(files.key, pem(key), 0o600)
    return files
