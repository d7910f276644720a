"""WeChat Pay's side of the crypto: the platform key, its certificate, and signing.

One RSA key plays both roles WeChat Pay has: the *public key* (serial ``PUB_KEY_ID_…``)
and a *platform certificate* (a self-signed X.509 certificate made at startup). The sign
mode picks which serial goes into ``Wechatpay-Serial``. ``mixed`` is WeChat's migration from
certificates to the public key: an API answer is signed under the serial the request's
``Wechatpay-Serial`` names, and under the platform certificate when it names none (or one
WeChat does not hold); notifications, which answer no request, alternate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from paylane_common.wechatpay import certificate_serial, encrypt_resource, signed_headers
from paylane_common.wechatpay.testing import (
    certificate_pem,
    public_key_pem,
    self_signed_certificate,
)

from .settings import SignMode
from .timefmt import rfc3339


def platform_certificate(
    key: RSAPrivateKey, serial_hex: str | None, now: float
) -> x509.Certificate:
    """The sandbox's platform certificate, valid from a day before ``now``."""
    start = datetime.fromtimestamp(now, UTC) - timedelta(days=1)
    return self_signed_certificate(
        key, serial=serial_hex, not_before=start, label="paylane sandbox"
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
        return certificate_pem(self.certificate)

    @property
    def public_key_pem(self) -> str:
        return public_key_pem(self.private_key)

    def next_serial(self, requested: str | None = None) -> str:
        """The ``Wechatpay-Serial`` of the next signed message, per the current sign mode.

        ``requested`` is the ``Wechatpay-Serial`` of the API request being answered (None
        for a notification); only the ``mixed`` mode looks at it."""
        mode = self._mode()
        if mode == "public_key":
            return self.public_key_id
        if mode == "certificate":
            return self.certificate_serial
        if requested is not None:
            wanted = requested.strip()
            return self.public_key_id if wanted == self.public_key_id else self.certificate_serial
        self._mixed_counter += 1
        return self.public_key_id if self._mixed_counter % 2 else self.certificate_serial

    def headers(self, body: bytes, requested: str | None = None) -> dict[str, str]:
        """Fresh ``Wechatpay-*`` headers for ``body`` (a new timestamp and nonce each time);
        ``requested`` as in :meth:`next_serial`."""
        return signed_headers(
            self.private_key, self.next_serial(requested), body, timestamp=int(self._clock())
        )

    def certificates_listing(self, apiv3_key: str) -> dict[str, Any]:
        """The body of ``GET /v3/certificates``: each certificate AEAD-encrypted."""
        pem = self.certificate_pem.encode("ascii")
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
