"""Request-body checks of the place-order and refund APIs, with WeChat Pay's error shapes.

Every failure is 400 PARAM_ERROR naming the field as a JSON pointer (``/amount/total``).
One deliberate leniency: ``notify_url`` may be ``http://`` (local tests have no TLS);
WeChat Pay itself requires HTTPS.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from .errors import ApiError, param_error
from .timefmt import parse_rfc3339

TRADE_TYPES = {"jsapi": "JSAPI", "native": "NATIVE", "h5": "MWEB", "app": "APP"}
OUT_TRADE_NO = re.compile(r"[0-9A-Za-z_\-|*]{6,32}")
OUT_REFUND_NO = re.compile(r"[0-9A-Za-z_\-|*@]{1,64}")
H5_TYPES = {"Wap", "iOS", "Android"}
#: ``yyyy-MM-DDTHH:mm:ss+TIMEZONE``, WeChat Pay's shape of ``time_expire``: RFC 3339 to
#: the second with a numeric offset (``2018-06-08T10:34:56+08:00``); no ``Z``, no
#: fraction, no space for the ``T``.
TIME_EXPIRE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}")


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body) if body else None
    except (ValueError, RecursionError):
        raise ApiError(
            400, "PARAM_ERROR", "请求体不是合法的JSON (body is not valid JSON)"
        ) from None
    if not isinstance(obj, dict):
        raise ApiError(400, "PARAM_ERROR", "请求体应为JSON对象 (body must be a JSON object)")
    return obj


def _string(
    obj: dict[str, Any], key: str, pointer: str, *, required: bool = True, max_len: int = 0
) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise param_error(pointer, "必填,不能为空 (required)")
        return None
    if not isinstance(value, str) or (required and not value):
        raise param_error(pointer, "应为非空字符串 (must be a non-empty string)")
    if max_len and len(value) > max_len:
        raise param_error(pointer, f"长度不能超过{max_len} (longer than {max_len})")
    return value


def _object(obj: dict[str, Any], key: str, pointer: str, *, required: bool) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        if required:
            raise param_error(pointer, "必填,不能为空 (required)")
        return {}
    if not isinstance(value, dict):
        raise param_error(pointer, "应为JSON对象 (must be an object)")
    return value


def _positive_int(obj: dict[str, Any], key: str, pointer: str) -> int:
    value = obj.get(key)
    if value is None:
        raise param_error(pointer, "必填,不能为空 (required)")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise param_error(
            pointer, "应为大于0的整数(分) (must be an integer > 0, in fen)", value=value
        )
    return value


def _currency(obj: dict[str, Any], pointer: str, *, required: bool) -> None:
    value = obj.get("currency")
    if value is None and not required:
        return
    if value != "CNY":
        raise param_error(pointer, "仅支持CNY (only CNY)", value=value)


def check_notify_url(value: str, pointer: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise param_error(pointer, "应为http(s)地址 (must be an http(s) URL)", value=value)
    if parts.query or "?" in value:
        raise param_error(pointer, "不能携带参数 (must not carry a query string)", value=value)
    if len(value) > 256:
        raise param_error(pointer, "长度不能超过256 (longer than 256)")


def check_place_order(kind: str, body: dict[str, Any], now: float) -> None:
    """``kind`` is the URL's ``jsapi|native|h5|app``; ``now`` the sandbox's clock, which
    ``time_expire`` must not be before."""
    _string(body, "appid", "/appid", max_len=32)
    _string(body, "mchid", "/mchid", max_len=32)
    _string(body, "description", "/description", max_len=127)
    out_trade_no = _string(body, "out_trade_no", "/out_trade_no")
    if out_trade_no is None or not OUT_TRADE_NO.fullmatch(out_trade_no):
        raise param_error(
            "/out_trade_no",
            "应为6-32位数字、大小写字母或_-|* (6-32 chars of [0-9A-Za-z_-|*])",
            value=out_trade_no,
        )
    notify_url = _string(body, "notify_url", "/notify_url")
    check_notify_url(notify_url or "", "/notify_url")
    amount = _object(body, "amount", "/amount", required=True)
    _positive_int(amount, "total", "/amount/total")
    _currency(amount, "/amount/currency", required=False)
    _string(body, "attach", "/attach", required=False, max_len=128)
    time_expire = _string(body, "time_expire", "/time_expire", required=False)
    if time_expire is not None:
        _check_time_expire(time_expire, now)
    if kind == "jsapi":
        payer = _object(body, "payer", "/payer", required=True)
        _string(payer, "openid", "/payer/openid", max_len=128)
    if kind == "h5":
        scene = _object(body, "scene_info", "/scene_info", required=True)
        _string(scene, "payer_client_ip", "/scene_info/payer_client_ip", max_len=45)
        h5_info = _object(scene, "h5_info", "/scene_info/h5_info", required=True)
        h5_type = _string(h5_info, "type", "/scene_info/h5_info/type")
        if h5_type not in H5_TYPES:
            raise param_error(
                "/scene_info/h5_info/type", "应为Wap、iOS或Android (Wap|iOS|Android)", value=h5_type
            )


def _check_time_expire(value: str, now: float) -> None:
    try:
        if not TIME_EXPIRE.fullmatch(value):
            raise ValueError("not yyyy-MM-DDTHH:mm:ss+TIMEZONE")
        expires = parse_rfc3339(value)
    except ValueError:
        raise param_error(
            "/time_expire", "应为RFC 3339时间 (yyyy-MM-DDTHH:mm:ss+TIMEZONE)", value=value
        ) from None
    if expires <= now:
        raise param_error("/time_expire", "不能早于当前时间 (must be later than now)", value=value)


def check_refund(body: dict[str, Any]) -> None:
    transaction_id = _string(body, "transaction_id", "/transaction_id", required=False)
    out_trade_no = _string(body, "out_trade_no", "/out_trade_no", required=False)
    if transaction_id is None and out_trade_no is None:
        raise param_error("/out_trade_no", "transaction_id与out_trade_no必填其一 (give one)")
    out_refund_no = _string(body, "out_refund_no", "/out_refund_no")
    if out_refund_no is None or not OUT_REFUND_NO.fullmatch(out_refund_no):
        raise param_error(
            "/out_refund_no", "应为1-64位数字、大小写字母或_-|*@", value=out_refund_no
        )
    _string(body, "reason", "/reason", required=False, max_len=80)
    notify_url = _string(body, "notify_url", "/notify_url", required=False)
    if notify_url is not None:
        check_notify_url(notify_url, "/notify_url")
    amount = _object(body, "amount", "/amount", required=True)
    _positive_int(amount, "refund", "/amount/refund")
    _positive_int(amount, "total", "/amount/total")
    _currency(amount, "/amount/currency", required=True)


ABNORMAL_REFUND_TYPES = ("USER_BANK_CARD", "MERCHANT_BANK_CARD")
#: The fields WeChat Pay wants RSA-OAEP-encrypted under its key (``bank_type`` is not).
ENCRYPTED_ABNORMAL_REFUND_FIELDS = ("bank_account", "real_name")


def check_abnormal_refund(body: dict[str, Any]) -> None:
    """The body of ``apply-abnormal-refund``; the bank fields only for USER_BANK_CARD."""
    out_refund_no = _string(body, "out_refund_no", "/out_refund_no")
    if out_refund_no is None or not OUT_REFUND_NO.fullmatch(out_refund_no):
        raise param_error(
            "/out_refund_no", "应为1-64位数字、大小写字母或_-|*@", value=out_refund_no
        )
    kind = _string(body, "type", "/type")
    if kind not in ABNORMAL_REFUND_TYPES:
        raise param_error("/type", "应为USER_BANK_CARD或MERCHANT_BANK_CARD", value=kind)
    if kind == "USER_BANK_CARD":
        _string(body, "bank_type", "/bank_type", max_len=32)
        for name in ENCRYPTED_ABNORMAL_REFUND_FIELDS:
            _string(body, name, f"/{name}", max_len=1024)
