"""SHA256-RSA2048 signatures of WeChat Pay v3 and verification of what WeChat Pay signs.

Notifications and API responses carry the same ``Wechatpay-*`` headers and are signed over
``timestamp\\nnonce\\nbody\\n`` with the *raw* body bytes, so one verifier serves both.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from paylane_common.wechatpay.exceptions import VerificationError
from paylane_common.wechatpay.keys import VerifierKeys

SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"

HEADER_SIGNATURE = "Wechatpay-Signature"
HEADER_TIMESTAMP = "Wechatpay-Timestamp"
HEADER_NONCE = "Wechatpay-Nonce"
HEADER_SERIAL = "Wechatpay-Serial"
HEADER_SIGNATURE_TYPE = "Wechatpay-Signature-Type"

# ASCII digits only: int() would also take " 12", "+12", "1_2" and non-ASCII digits.
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")


def build_message(*parts: str | bytes) -> bytes:
    """Join parts as WeChat Pay signs them: each part followed by ``\\n``."""
    return b"".join((p.encode("utf-8") if isinstance(p, str) else p) + b"\n" for p in parts)


def sign(private_key: RSAPrivateKey, message: bytes) -> str:
    """Base64 SHA256-RSA PKCS#1 v1.5 signature of ``message``."""
    raw = private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(raw).decode("ascii")


def verify_rsa(public_key: RSAPublicKey, message: bytes, signature_b64: str) -> bool:
    """True when ``signature_b64`` is a valid signature of ``message``; never raises."""
    try:
        raw = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        public_key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def clock_skew(timestamp: int, now: float) -> int:
    """Whole seconds ``now`` is past ``timestamp`` (negative: before it), counted as
    wechatpay-go counts (``time.Now().Unix()``)."""
    return math.floor(now) - timestamp


def is_stale(skew: int, max_skew_s: int) -> bool:
    """WeChat Pay's freshness rule, both ways: for its answers and notifications here, and
    for a merchant's request in the sandbox. Exactly the limit is already stale
    (wechatpay-go: ``>= FiveMinute``; wechatpay-java: ``toMinutes() >= 5``)."""
    return abs(skew) >= max_skew_s


@dataclass(frozen=True)
class NotificationHeaders:
    """The ``Wechatpay-*`` headers of a notification or of an API response."""

    signature: str
    timestamp: str
    nonce: str
    serial: str
    signature_type: str | None = None

    @classmethod
    def from_mapping(cls, headers: Mapping[str, str]) -> NotificationHeaders:
        """Pick the headers case-insensitively; an absent or empty one is ``missing_header``.

        A ``Wechatpay-*`` header given twice (a multi-mapping such as aiohttp's headers
        yields both) is ``duplicate_header``: letting the first or the last win would let
        a proxy in front of us and this code read different values.
        """
        lowered: dict[str, str] = {}
        for name, value in headers.items():
            key = name.lower()
            if key in lowered and key.startswith("wechatpay-"):
                raise VerificationError("duplicate_header", f"duplicate header {_canonical(name)}")
            lowered[key] = value

        def required(name: str) -> str:
            value = lowered.get(name.lower())
            if not value:
                raise VerificationError("missing_header", f"missing header {name}")
            return value

        return cls(
            signature=required(HEADER_SIGNATURE),
            timestamp=required(HEADER_TIMESTAMP),
            nonce=required(HEADER_NONCE),
            serial=required(HEADER_SERIAL),
            signature_type=lowered.get(HEADER_SIGNATURE_TYPE.lower()),
        )


def _canonical(name: str) -> str:
    """``wechatpay-serial`` → ``Wechatpay-Serial`` (for messages: never the value)."""
    return "-".join(part.capitalize() for part in name.split("-"))[:64]


class NotificationVerifier:
    """Checks that a body was signed by WeChat Pay, recently, with a key we know.

    Freshness closes the replay hole the official Python and Node SDKs leave open. An
    unknown serial is rejected on the spot: fetching certificates is a background job.
    """

    def __init__(
        self,
        keys: VerifierKeys,
        max_skew_s: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_skew_s < 0:
            raise ValueError("max_skew_s must not be negative")
        self.keys = keys
        self.max_skew_s = max_skew_s
        self._clock = clock

    def verify(self, headers: NotificationHeaders, body: bytes, at: float | None = None) -> None:
        """Raise :class:`VerificationError` unless ``body`` is authentic and was fresh
        ``at`` (a unix time: when it was received; now unless given)."""
        if headers.signature_type is not None and headers.signature_type != SIGNATURE_TYPE:
            raise VerificationError("bad_signature_type", f"unsupported {HEADER_SIGNATURE_TYPE}")
        if not _TIMESTAMP_RE.fullmatch(headers.timestamp):
            raise VerificationError("bad_timestamp", f"{HEADER_TIMESTAMP} is not an integer")
        now = self._clock() if at is None else at
        skew = clock_skew(int(headers.timestamp), now)
        if is_stale(skew, self.max_skew_s):
            raise VerificationError(
                "stale_timestamp",
                f"{HEADER_TIMESTAMP} is {skew:+.0f}s off, {self.max_skew_s}s or more",
            )
        if headers.signature.startswith(SIGNTEST_PREFIX):
            raise VerificationError("signtest_probe", "WeChat Pay signature probe (SIGNTEST)")
        key = self.keys.get(headers.serial, at=now)
        if key is None and self.keys.is_outside_validity(headers.serial, now):
            raise VerificationError(
                "expired_certificate",
                f"{HEADER_SERIAL} {headers.serial[:64]!r} names a certificate outside its validity",
            )
        if key is None:
            raise VerificationError(
                "unknown_serial", f"unknown {HEADER_SERIAL} {headers.serial[:64]!r}"
            )
        message = build_message(headers.timestamp, headers.nonce, body)
        if not verify_rsa(key, message, headers.signature):
            raise VerificationError("bad_signature", "signature does not verify")
