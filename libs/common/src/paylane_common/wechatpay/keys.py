"""Loading RSA keys and the registry of WeChat Pay verification keys.

WeChat Pay signs with either its *public key* (serial ``PUB_KEY_ID_…``, merchants onboarded
since ~2024) or a *platform certificate* (serial = the certificate's serial number in hex).
During a migration both arrive side by side, chosen per message by ``Wechatpay-Serial``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from paylane_common.wechatpay.exceptions import WechatPayError

CERTIFICATE_SUFFIXES = (".pem", ".crt")


def _as_bytes(pem: str | bytes) -> bytes:
    return pem.encode("ascii") if isinstance(pem, str) else pem


def load_private_key(pem: str | bytes) -> RSAPrivateKey:
    """Load an unencrypted RSA private key (PKCS#8 or PKCS#1 PEM)."""
    try:
        key = serialization.load_pem_private_key(_as_bytes(pem), password=None)
    except (ValueError, TypeError, UnicodeError):
        raise WechatPayError("invalid or encrypted private key PEM") from None
    if not isinstance(key, RSAPrivateKey):
        raise WechatPayError("private key is not an RSA key")
    return key


def load_public_key(pem: str | bytes) -> RSAPublicKey:
    """Load an RSA public key from a ``PUBLIC KEY`` PEM or from an X.509 certificate PEM."""
    data = _as_bytes(pem)
    if b"-----BEGIN CERTIFICATE-----" in data:
        return load_certificate(data)[1]
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnicodeError):
        raise WechatPayError("invalid public key PEM") from None
    if not isinstance(key, RSAPublicKey):
        raise WechatPayError("public key is not an RSA key")
    return key


def certificate_serial(cert: x509.Certificate) -> str:
    """The serial as WeChat writes it in ``Wechatpay-Serial``: upper-case hex of its bytes."""
    n = cert.serial_number
    return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big").hex().upper()


@dataclass(frozen=True)
class CertificateInfo:
    """What verification needs of a platform certificate: its serial, key and validity."""

    serial: str
    public_key: RSAPublicKey
    not_before: datetime
    not_after: datetime


def read_certificate(pem: str | bytes) -> CertificateInfo:
    """Parse a certificate PEM (an RSA key is required)."""
    try:
        cert = x509.load_pem_x509_certificate(_as_bytes(pem))
    except (ValueError, TypeError, UnicodeError):
        raise WechatPayError("invalid certificate PEM") from None
    key = cert.public_key()
    if not isinstance(key, RSAPublicKey):
        raise WechatPayError("certificate does not hold an RSA key")
    return CertificateInfo(
        certificate_serial(cert), key, cert.not_valid_before_utc, cert.not_valid_after_utc
    )


def load_certificate(pem: str | bytes) -> tuple[str, RSAPublicKey, datetime]:
    """Return ``(serial_hex_upper, public_key, not_after_utc)`` of a certificate PEM."""
    info = read_certificate(pem)
    return info.serial, info.public_key, info.not_after


def _normalize_serial(serial: str) -> str:
    # Case-insensitive, and tolerant of leading zeros (Java's BigInteger.toString(16) drops them).
    return serial.strip().upper().lstrip("0") or "0"


@dataclass(frozen=True)
class _CertEntry:
    serial: str  # as first written, for display
    key: RSAPublicKey
    not_before: float  # unix seconds; -inf/inf when unknown
    not_after: float


class VerifierKeys:
    """Serial → WeChat Pay public key, for both the public-key and the certificate mode.

    A platform certificate is used only inside its validity window (``get(serial, at=)``):
    an expired certificate, or one not yet valid, verifies nothing.

    Meant for one asyncio thread: ``add_certificate`` swaps in a new dict, so readers never
    see a half-updated mapping.
    """

    def __init__(
        self,
        public_key_id: str | None = None,
        public_key: RSAPublicKey | None = None,
        certificates: Mapping[str, RSAPublicKey] | None = None,
    ) -> None:
        if (public_key_id is None) != (public_key is None):
            raise ValueError("public_key_id and public_key must be given together")
        if public_key_id is not None and not public_key_id.strip():
            raise ValueError("public_key_id must not be empty")
        self._public_key_id = public_key_id
        self._public_key = public_key
        self._certs: dict[str, _CertEntry] = {}
        for serial, key in (certificates or {}).items():
            self.add_certificate(serial, key)

    @property
    def public_key_id(self) -> str | None:
        return self._public_key_id

    def get(self, serial: str, at: float | None = None) -> RSAPublicKey | None:
        """The key for a ``Wechatpay-Serial``, or None. Never does I/O.

        With ``at`` (unix seconds), a certificate outside its validity at that time is
        None too (:meth:`is_outside_validity` tells the two cases apart)."""
        if self._public_key_id is not None and serial == self._public_key_id:
            return self._public_key
        entry = self._certs.get(_normalize_serial(serial))
        if entry is None or (at is not None and not entry.not_before <= at <= entry.not_after):
            return None
        return entry.key

    def is_outside_validity(self, serial: str, at: float) -> bool:
        """True when ``serial`` names a known certificate that is not valid at ``at``."""
        entry = self._certs.get(_normalize_serial(serial))
        return entry is not None and not entry.not_before <= at <= entry.not_after

    def add_certificate(
        self,
        serial: str,
        key: RSAPublicKey,
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> None:
        """Register (or replace) a platform certificate's key, valid between ``not_before``
        and ``not_after`` (unbounded on a side not given)."""
        if not serial.strip():
            raise ValueError("certificate serial must not be empty")
        entry = _CertEntry(
            serial.strip().upper(),
            key,
            not_before.timestamp() if not_before is not None else -math.inf,
            not_after.timestamp() if not_after is not None else math.inf,
        )
        self._certs = {**self._certs, _normalize_serial(serial): entry}

    def add(self, cert: CertificateInfo) -> None:
        """Register a parsed certificate with its validity window."""
        self.add_certificate(
            cert.serial, cert.public_key, not_before=cert.not_before, not_after=cert.not_after
        )

    def request_serial(self, at: float) -> str | None:
        """The ``Wechatpay-Serial`` to send on API requests: WeChat signs its answer with the
        key the request names (and with a platform certificate when it names none).

        The public key id when configured, else the serial of :meth:`_newest_valid`, else
        None: the same key :meth:`encryption_key` encrypts under."""
        if self._public_key_id is not None:
            return self._public_key_id
        newest = self._newest_valid(at)
        return newest.serial if newest is not None else None

    def encryption_key(self, at: float) -> tuple[str, RSAPublicKey]:
        """``(serial, key)`` that sensitive request fields are encrypted with, the serial
        going into ``Wechatpay-Serial``: the WeChat Pay public key when configured, else
        the certificate of :meth:`_newest_valid` (the one :meth:`request_serial` names)."""
        if self._public_key_id is not None and self._public_key is not None:
            return self._public_key_id, self._public_key
        newest = self._newest_valid(at)
        if newest is None:
            raise WechatPayError(
                "no WeChat Pay key to encrypt with: no public key and no valid platform certificate"
            )
        return newest.serial, newest.key

    def _newest_valid(self, at: float) -> _CertEntry | None:
        """The platform certificate valid at ``at`` that was issued last (latest
        ``not_before``, then latest ``not_after``), as wechatpay-go's ``GetNewestSerial``.

        The one rule for both the serial a request names and the key its fields are
        encrypted under: WeChat decrypts with the certificate the request names, so the
        two must never pick apart (two overlapping certificates of different terms)."""
        valid = [e for e in self._certs.values() if e.not_before <= at <= e.not_after]
        return max(valid, key=lambda e: (e.not_before, e.not_after), default=None)

    def serials(self) -> list[str]:
        """Known serials: the public key id first, then certificate serials."""
        head = [self._public_key_id] if self._public_key_id is not None else []
        return head + [entry.serial for entry in self._certs.values()]

    @classmethod
    def from_sources(
        cls,
        public_key_id: str | None = None,
        public_key_pem: str | bytes | None = None,
        platform_certs_dir: str | Path | None = None,
    ) -> VerifierKeys:
        """Build from settings: a public key (id + PEM) and/or a directory of certificates.

        Every ``*.pem`` / ``*.crt`` file in the directory must be a certificate; a file
        that is not fails loudly rather than silently leaving a serial unverifiable.
        """
        if (public_key_id is None) != (public_key_pem is None):
            raise WechatPayError("the public key id and the public key PEM go together")
        public_key = load_public_key(public_key_pem) if public_key_pem is not None else None
        keys = cls(public_key_id, public_key)
        if platform_certs_dir is not None:
            directory = Path(platform_certs_dir)
            if not directory.is_dir():
                raise WechatPayError(f"platform certificates directory not found: {directory}")
            for path in sorted(directory.iterdir()):
                if path.suffix.lower() not in CERTIFICATE_SUFFIXES or not path.is_file():
                    continue
                try:
                    keys.add(read_certificate(path.read_bytes()))
                except WechatPayError as exc:
                    raise WechatPayError(f"{path.name}: {exc}") from None
        return keys
