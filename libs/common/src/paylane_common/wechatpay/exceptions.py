"""Errors of the WeChat Pay v3 crypto layer.

Messages name what is wrong, never key material, signatures or decrypted plaintext: they may
end up in logs and in HTTP answers to whoever sent the request.
"""

from __future__ import annotations


class WechatPayError(Exception):
    """Base class of every WeChat Pay error raised by paylane."""


class VerificationError(WechatPayError):
    """A notification or API response failed verification.

    ``reason`` is short and stable (``missing_header``, ``duplicate_header``,
    ``bad_signature_type``,
    ``bad_timestamp``, ``stale_timestamp``, ``signtest_probe``, ``unknown_serial``,
    ``expired_certificate``,
    ``bad_signature``): use it for metrics and log fields, the message for humans.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


class DecryptionError(WechatPayError):
    """An AEAD_AES_256_GCM resource could not be decrypted or is not what it should be."""


#: WeChat Pay error codes worth another try (besides any 5xx and 429).
RETRYABLE_CODES = frozenset({"SYSTEM_ERROR", "FREQUENCY_LIMITED", "BANK_ERROR", "SYSTEMERROR"})


class WechatPayApiError(WechatPayError):
    """WeChat Pay answered an API call with an error body ``{code, message, detail?}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: object = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"WeChat Pay {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        #: WeChat's ``Request-ID`` response header: what WeChat support asks for.
        self.request_id = request_id

    @property
    def retryable(self) -> bool:
        return self.status >= 500 or self.status == 429 or self.code in RETRYABLE_CODES


class ResponseVerificationError(WechatPayError):
    """A 2xx answer of the WeChat Pay API failed verification: its content cannot be
    trusted, so the call's outcome is unknown (not retried: a replay would not help).

    ``reason`` is the :class:`VerificationError` reason; ``request_id`` WeChat's
    ``Request-ID`` header of that answer, when it had one."""

    def __init__(self, message: str, reason: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.request_id = request_id


class WechatPayUnavailable(WechatPayError):
    """WeChat Pay could not be reached (network error or timeout) within the retry budget."""
