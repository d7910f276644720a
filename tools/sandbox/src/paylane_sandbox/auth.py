"""Checks the merchant's ``Authorization`` header as WeChat Pay does (401 SIGN_ERROR)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from paylane_common.runtime.settings import secret_value
from paylane_common.wechatpay import (
    build_message,
    clock_skew,
    is_stale,
    load_certificate,
    load_private_key,
    load_public_key,
    parse_authorization,
    verify_rsa,
)

from .errors import sign_error
from .settings import SandboxSettings

_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")


def merchant_key(settings: SandboxSettings) -> tuple[str, RSAPublicKey]:
    """``(serial_no, public_key)`` of the merchant API key, from whichever form was given.

    A certificate PEM brings its own serial; WECHATPAY_MERCHANT_SERIAL_NO wins when set.
    """
    pem = settings.sandbox_merchant_public_key
    if pem is not None:
        key = load_public_key(pem)
        serial = settings.wechatpay_merchant_serial_no
        if not serial and "BEGIN CERTIFICATE" in pem:
            serial = load_certificate(pem)[0]
    else:
        key = load_private_key(secret_value(settings.wechatpay_merchant_private_key)).public_key()
        serial = settings.wechatpay_merchant_serial_no
    if not serial:  # the settings validator makes this unreachable
        raise ValueError("no merchant serial number")
    return serial.strip(), key


def _normalize_serial(serial: str) -> str:
    return serial.strip().upper().lstrip("0")


class MerchantAuthenticator:
    """``WECHATPAY2-SHA256-RSA2048`` over ``METHOD\\npath?query\\nts\\nnonce\\nbody\\n``."""

    def __init__(
        self,
        mchid: str,
        serial_no: str,
        public_key: RSAPublicKey,
        max_skew_s: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.mchid = mchid
        self.serial_no = serial_no
        self._public_key = public_key
        self._max_skew_s = max_skew_s
        self._clock = clock

    def check(self, method: str, path_with_query: str, header: str | None, body: bytes) -> None:
        """Raise ApiError 401 SIGN_ERROR unless the request is the merchant's, signed now."""
        if not header:
            raise sign_error("缺少 Authorization 头 (missing Authorization header)")
        try:
            attributes = parse_authorization(header)
        except ValueError as exc:
            raise sign_error(f"Authorization 格式错误 ({exc})") from None
        if attributes["mchid"] != self.mchid:
            raise sign_error(f"商户号 {attributes['mchid'][:32]!r} 与沙箱商户号不一致 (mchid)")
        if _normalize_serial(attributes["serial_no"]) != _normalize_serial(self.serial_no):
            raise sign_error("商户证书序列号不正确 (serial_no is not the merchant key's)")
        timestamp = attributes["timestamp"]
        if not _TIMESTAMP_RE.fullmatch(timestamp):
            raise sign_error("timestamp 不是整数 (timestamp is not an integer)")
        # WeChat's rule, as paylane applies it to WeChat's answers: exactly the limit is stale.
        skew = clock_skew(int(timestamp), self._clock())
        if is_stale(skew, self._max_skew_s):
            raise sign_error(
                f"时间戳过期: 相差 {skew:+d}s, 达到 {self._max_skew_s}s (timestamp expired)"
            )
        message = build_message(
            method.upper(), path_with_query, timestamp, attributes["nonce_str"], body
        )
        if not verify_rsa(self._public_key, message, attributes["signature"]):
            raise sign_error("签名验证失败 (signature does not verify)")
