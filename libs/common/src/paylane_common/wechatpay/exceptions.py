"""Errors of the WeChat Pay v3 crypto layer.

Messages name what is wrong, never key material, signatures or decrypted plaintext: they may
end up in logs and in HTTP answers to whoever sent the request.
"""

from __future__ import annotations


class WechatPayError(Exception):
    """Base class of every WeChat Pay error raised by paylane."""


class VerificationError(WechatPayError):
    """A notification or API response failed verification.

    ``reason`` is short and stable (``missing_header``, ``bad_signature_type``,
    ``bad_timestamp``, ``stale_timestamp``, ``signtest_probe``, ``unknown_serial``,
    ``bad_signature``): use it for metrics and log fields, the message for humans.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


class DecryptionError(WechatPayError):
    """An AEAD_AES_256_GCM resource could not be decrypted or is not what it should be."""
