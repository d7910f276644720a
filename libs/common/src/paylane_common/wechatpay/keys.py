"""Loading RSA keys and the registry of WeChat Pay verification keys.

WeChat Pay signs with either its *public key* (serial ``PUB_KEY_ID_…``, merchants onboarded
since ~2024) or a *platform certificate* (serial = the certificate's serial number in hex).
During a migration both arrive side by side, chosen per message by ``Wechatpay-Serial``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from .exceptions import WechatPayError

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


def load_certificate(pem: str | bytes) -> tuple[str, RSAPublicKey, datetime]:
    """Return ``(serial_hex_upper, public_key, not_after_utc)`` of a certificate PEM."""
    try:
        cert = x509.load_pem_x509_certificate(_as_bytes(pem))
    except (ValueError, TypeError, UnicodeError):
        raise WechatPayError("invalid certificate PEM") from None
    key = cert.public_key()
    if not isinstance(key, RSAPublicKey):
        raise WechatPayError("certificate does not hold an RSA key")
    return certificate_serial(cert), key, cert.not_valid_after_utc


def _normalize_serial(serial: str) -> str:
    # Case-insensitive, and tolerant of leading zeros (Java's BigInteger.toString(16) drops them).
    return serial.strip().upper().lstrip("0") or "0"


class VerifierKeys:
    """Serial → WeChat Pay public key, for both the public-key and the certificate mode.

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
        self._certs: dict[str, tuple[str, RSAPublicKey]] = {}
        for serial, key in (certificates or {}).items():
            self.add_certificate(serial, key)

    @property
    def public_key_id(self) -> str | None:
        return self._public_key_id

    def get(self, serial: str) -> RSAPublicKey | None:
        """The key for a ``Wechatpay-Serial``, or None. Never does I/O."""
        if self._public_key_id is not None and serial == self._public_key_id:
            return self._public_key
        entry = self._certs.get(_normalize_serial(serial))
        return entry[1] if entry else None

    def add_certificate(self, serial: str, key: RSAPublicKey) -> None:
        """Register (or replace) a platform certificate's key."""
        if not serial.strip():
            raise ValueError("certificate serial must not be empty")
        self._certs = {**self._certs, _normalize_serial(serial): (serial.strip().upper(), key)}

    def serials(self) -> list[str]:
        """Known serials: the public key id first, then certificate serials."""
        head = [self._public_key_id] if self._public_key_id is not None else []
        return head + [serial for serial, _ in self._certs.values()]

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
        certs: dict[str, RSAPublicKey] = {}
        if platform_certs_dir is not None:
            directory = Path(platform_certs_dir)
            if not directory.is_dir():
                raise WechatPayError(f"platform certificates directory not found: {directory}")
            for path in sorted(directory.iterdir()):
                if path.suffix.lower() not in CERTIFICATE_SUFFIXES or not path.is_file():
                    continue
                try:
                    serial, key, _ = load_certificate(path.read_bytes())
                except WechatPayError as exc:
                    raise WechatPayError(f"{path.name}: {exc}") from None
                certs[serial] = key
        return cls(public_key_id, public_key, certs)
