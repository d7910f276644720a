"""What the ingress tests share besides fixtures: the fixed clock of every app they build,
and platform certificates valid around it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.x509.oid import NameOID

#: The fixed "now" of every app built here; notifications are signed at this time.
NOW = 1_763_780_000

_YESTERDAY = datetime.fromtimestamp(NOW, UTC) - timedelta(days=1)


def self_signed(
    key: RSAPrivateKey,
    start: datetime = _YESTERDAY,
    lifetime: timedelta = timedelta(days=3650),
) -> x509.Certificate:
    """A platform certificate valid from ``start`` for ``lifetime``."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA test")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .sign(key, hashes.SHA256())
    )
