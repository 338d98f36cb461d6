"""A certificate authority and a server certificate signed by it, made on the spot.

The embedded nats-server speaks TLS with a pair made at each start; tests make their own
pairs for the servers they run (HTTPS sources, SMTP with STARTTLS).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes  # PKCS#8, unencrypted: write it 0600

    def write(self, directory: Path) -> tuple[Path, Path, Path]:
        """``ca.pem``, ``cert.pem`` and ``key.pem`` (0600) in ``directory``."""
        paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
        for path, pem in zip(paths, (self.ca_pem, self.cert_pem, self.key_pem), strict=True):
            path.write_bytes(pem)
        paths[2].chmod(0o600)
        return paths


def make_pki(
    *,
    ca_name: str = "listenpost CA",
    server_name: str = "localhost",
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    valid_for: datetime.timedelta = datetime.timedelta(days=7),
) -> Pki:
    """A CA (EC P-256) and a server certificate for ``dns_names`` and ``ip_addresses``, signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
                    extension: x509.ExtensionType, critical: bool) -> x509.Certificate:  # fmt: skip
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + valid_for)
            .add_extension(extension, critical=critical)
            .sign(signer, hashes.SHA256())
        )

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = certificate(ca_name, ca_key, issuer, ca_key, x509.BasicConstraints(ca=True, path_length=0), critical=True)
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    cert = certificate(server_name, key, issuer, ca_key, x509.SubjectAlternativeName(names), critical=False)
    pem = serialization.Encoding.PEM
    return Pki(
        ca_pem=ca.public_bytes(pem),
        cert_pem=cert.public_bytes(pem),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
