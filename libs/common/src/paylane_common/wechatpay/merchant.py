"""Merchant-side signing: the ``Authorization`` header of API requests, JSAPI ``paySign``
and the APP SDK's ``sign``."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from paylane_common.wechatpay.signature import SIGNATURE_TYPE, build_message, sign

AUTHORIZATION_FIELDS = ("mchid", "nonce_str", "signature", "timestamp", "serial_no")
_ATTRIBUTE_RE = re.compile(r'\s*([a-z_]+)="([^"]*)"\s*(?:,|$)')


def new_nonce() -> str:
    """32 upper-case hex characters, the shape WeChat Pay's SDKs use."""
    return secrets.token_hex(16).upper()


class MerchantSigner:
    """Signs requests to WeChat Pay and client payment parameters with the merchant API key."""

    def __init__(
        self,
        mchid: str,
        serial_no: str,
        private_key: RSAPrivateKey,
        clock: Callable[[], float] = time.time,
        nonce_factory: Callable[[], str] = new_nonce,
    ) -> None:
        self.mchid = mchid
        self.serial_no = serial_no
        self._private_key = private_key
        self._clock = clock
        self._nonce_factory = nonce_factory

    def sign(self, message: bytes) -> str:
        """Base64 SHA256-RSA signature of an already built message."""
        return sign(self._private_key, message)

    def authorization(
        self,
        method: str,
        path_with_query: str,
        body: str | bytes = b"",
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> str:
        """The ``Authorization`` header value for one request.

        ``path_with_query`` is the URL without scheme and host, exactly as sent (e.g.
        ``/v3/pay/transactions/id/42?mchid=1900000109``); ``body`` the exact bytes sent.
        """
        if not path_with_query.startswith("/"):
            raise ValueError("path_with_query must start with '/' (no scheme or host)")
        ts = str(int(self._clock()) if timestamp is None else timestamp)
        nonce_str = self._nonce_factory() if nonce is None else nonce
        message = build_message(method.upper(), path_with_query, ts, nonce_str, body)
        signature = self.sign(message)
        # Attribute order as in the official Python SDK (and our test vectors).
        return (
            f'{SIGNATURE_TYPE} mchid="{self.mchid}",nonce_str="{nonce_str}",'
            f'signature="{signature}",timestamp="{ts}",serial_no="{self.serial_no}"'
        )

    def _stamp(self, timestamp: int | None, nonce: str | None) -> tuple[str, str]:
        """The timestamp and nonce of client pay parameters: now and a new one by default."""
        ts = str(int(self._clock()) if timestamp is None else timestamp)
        return ts, self._nonce_factory() if nonce is None else nonce

    def jsapi_pay_params(
        self,
        appid: str,
        prepay_id: str,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> dict[str, str]:
        """Parameters for ``wx.requestPayment`` / ``WeixinJSBridge`` (JSAPI, mini-program)."""
        ts, nonce_str = self._stamp(timestamp, nonce)
        package = f"prepay_id={prepay_id}"
        return {
            "appId": appid,
            "timeStamp": ts,
            "nonceStr": nonce_str,
            "package": package,
            "signType": "RSA",
            "paySign": self.sign(build_message(appid, ts, nonce_str, package)),
        }

    def app_pay_params(
        self,
        appid: str,
        prepay_id: str,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> dict[str, str]:
        """Parameters for the APP SDK's ``PayReq`` (``WXApi.sendReq``), named and signed as
        the official SDKs' ``PrepayWithRequestPayment`` return them: ``partnerid`` is the
        merchant id, ``package`` the constant ``Sign=WXPay``, and ``sign`` covers
        ``appid\ntimestamp\nnoncestr\nprepayid\n`` (the prepay id bare, unlike JSAPI)."""
        ts, nonce_str = self._stamp(timestamp, nonce)
        return {
            "appid": appid,
            "partnerid": self.mchid,
            "prepayid": prepay_id,
            "package": "Sign=WXPay",
            "noncestr": nonce_str,
            "timestamp": ts,
            "sign": self.sign(build_message(appid, ts, nonce_str, prepay_id)),
        }


def parse_authorization(header: str) -> dict[str, str]:
    """Split a merchant ``Authorization`` header into its attributes.

    Raises ValueError for another scheme, a malformed attribute list, a duplicate or
    missing attribute. The scheme itself is not part of the result.
    """
    scheme, _, params = header.strip().partition(" ")
    if scheme != SIGNATURE_TYPE:
        raise ValueError(f"authorization scheme is not {SIGNATURE_TYPE}")
    attributes: dict[str, str] = {}
    pos = 0
    params = params.strip()
    while pos < len(params):
        match = _ATTRIBUTE_RE.match(params, pos)
        if match is None or match.end() == pos:
            raise ValueError("malformed authorization attributes")
        name, value = match.group(1), match.group(2)
        if name in attributes:
            raise ValueError(f"duplicate authorization attribute {name}")
        attributes[name] = value
        pos = match.end()
    missing = [name for name in AUTHORIZATION_FIELDS if name not in attributes]
    if missing:
        raise ValueError(f"authorization lacks {', '.join(missing)}")
    return attributes
