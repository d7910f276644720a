"""WeChat Pay's side of the crypto: the platform key, its certificate, and signing.

One RSA key plays both roles WeChat Pay has: the *public key* (serial ``PUB_KEY_ID_…``)
and a *platform certificate* (a self-signed X.509 certificate made at startup). The sign
mode picks which serial goes into ``Wechatpay-Serial``; ``mixed`` alternates, as WeChat
does while migrating a merchant from certificates to the public key.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.x509.oid import NameOID

from paylane_common.wechatpay import (
    SIGNATURE_TYPE,
    build_message,
    certificate_serial,
    encrypt_resource,
    sign,
)

from .settings import SignMode
from .timefmt import rfc3339

CERTIFICATE_VALIDITY = timedelta(days=5 * 365)


def generate_private_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def self_signed_certificate(
    key: RSAPrivateKey, serial_hex: str | None, now: float
) -> x509.Certificate:
    """A certificate shaped like WeChat Pay's platform certificates (issuer Tenpay.com)."""
    issuer = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tenpay.com"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA (paylane sandbox)"),
        ]
    )
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tenpay.com"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com sign (paylane sandbox)"),
        ]
    )
    start = datetime.fromtimestamp(now, UTC) - timedelta(days=1)
    serial = int(serial_hex, 16) if serial_hex else x509.random_serial_number()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + CERTIFICATE_VALIDITY)
        .sign(key, hashes.SHA256())
    )


class PlatformSigner:
    """Signs API responses and notifications as WeChat Pay: ``ts\\nnonce\\nbody\\n``."""

    def __init__(
        self,
        private_key: RSAPrivateKey,
        public_key_id: str,
        certificate: x509.Certificate,
        mode: Callable[[], SignMode],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.private_key = private_key
        self.public_key_id = public_key_id
        self.certificate = certificate
        self.certificate_serial = certificate_serial(certificate)
        self._mode = mode
        self._clock = clock
        self._mixed_counter = 0

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def public_key_pem(self) -> str:
        return (
            self.private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def next_serial(self) -> str:
        """The ``Wechatpay-Serial`` of the next signed message, per the current sign mode."""
        mode = self._mode()
        if mode == "public_key":
            return self.public_key_id
        if mode == "certificate":
            return self.certificate_serial
        self._mixed_counter += 1
        return self.public_key_id if self._mixed_counter % 2 else self.certificate_serial

    def headers(self, body: bytes) -> dict[str, str]:
        """Fresh ``Wechatpay-*`` headers for ``body`` (a new timestamp and nonce each time)."""
        timestamp = str(int(self._clock()))
        nonce = secrets.token_hex(16).upper()
        return {
            "Wechatpay-Serial": self.next_serial(),
            "Wechatpay-Signature": sign(self.private_key, build_message(timestamp, nonce, body)),
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature-Type": SIGNATURE_TYPE,
        }

    def certificates_listing(self, apiv3_key: str) -> dict[str, Any]:
        """The body of ``GET /v3/certificates``: each certificate AEAD-encrypted."""
        pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        return {
            "data": [
                {
                    "serial_no": self.certificate_serial,
                    "effective_time": rfc3339(self.certificate.not_valid_before_utc.timestamp()),
                    "expire_time": rfc3339(self.certificate.not_valid_after_utc.timestamp()),
                    "encrypt_certificate": encrypt_resource(apiv3_key, pem, "certificate"),
                }
            ]
        }
