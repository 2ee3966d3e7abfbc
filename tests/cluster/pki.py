"""The cluster's certificates and keys, made fresh for each run.

One CA signs everything: the API server's serving certificate, the client certificates of
the administrator (kubectl), the kubelet, the controller-manager and the scheduler, and the
API server's client certificate towards the kubelet. Kubernetes reads user and groups from
CN and O, so each identity below is what RBAC and the Node authorizer expect.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from proxy.devissuer.pki import Authority, pem

NODE_NAME = "localhost"
"""The kubelet may not report a loopback address; named `localhost`, the API server reaches
it on 127.0.0.1 through the Hostname address type (kubectl logs and exec)."""

CLIENTS = {
    "admin": ("imds-tests-admin", "system:masters"),
    "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
    "apiserver-kubelet": ("kube-apiserver-kubelet-client", "system:masters"),
    # One identity for every controller (no per-controller service accounts to bootstrap):
    # its own role does not cover the controllers' work, so it gets the masters group.
    "controller-manager": ("system:kube-controller-manager", "system:masters"),
    "scheduler": ("system:kube-scheduler", None),
}


@dataclass(frozen=True)
class Pki:
    """Where the files are: `<name>.crt` and `<name>.key` in one directory."""

    directory: Path

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.cert("ca")

    @property
    def sa_key(self) -> Path:
        """The service-account signing key (its public half: `sa.pub`)."""
        return self.key("sa")

    @property
    def sa_pub(self) -> Path:
        return self.directory / "sa.pub"


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def create(directory: Path, service_ips: list[str]) -> Pki:
    """Write a CA and every certificate the cluster needs into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    authority = Authority.new(_name("imds-oidc-proxy-tests-ca"), datetime.timedelta(days=2))
    pki.ca.write_bytes(pem(authority.cert))
    _write_key(pki.key("ca"), authority.key)

    def leaf(name: str, subject: x509.Name, *, server: bool, sans: list[x509.GeneralName]) -> None:
        key, cert = authority.issue(subject, sans, server=server)
        pki.cert(name).write_bytes(pem(cert))
        _write_key(pki.key(name), key)

    dns = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
    ips = ["127.0.0.1", *service_ips]
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    leaf("apiserver", _name("kube-apiserver"), server=True, sans=sans)
    kubelet_sans: list[x509.GeneralName] = [
        x509.DNSName(NODE_NAME),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    leaf("kubelet-serving", _name(NODE_NAME), server=True, sans=kubelet_sans)
    for name, (cn, org) in CLIENTS.items():
        leaf(name, _name(cn, org), server=False, sans=[])

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki
