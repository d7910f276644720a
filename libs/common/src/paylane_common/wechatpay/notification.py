"""Notification bodies: build them as WeChat Pay does, check their shape, decrypt them."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from paylane_common.contract.china_time import CHINA
from paylane_common.wechatpay.aead import ALGORITHM, decrypt_resource, encrypt_resource
from paylane_common.wechatpay.exceptions import DecryptionError
from paylane_common.wechatpay.merchant import new_nonce
from paylane_common.wechatpay.signature import (
    HEADER_NONCE,
    HEADER_SERIAL,
    HEADER_SIGNATURE,
    HEADER_SIGNATURE_TYPE,
    HEADER_TIMESTAMP,
    SIGNATURE_TYPE,
    build_message,
    sign,
)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def signed_headers(
    signing_key: RSAPrivateKey,
    serial: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The ``Wechatpay-*`` headers WeChat Pay sends with a body it signed (a notification or
    an API response); the current time and a random nonce unless given."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    header_nonce = new_nonce() if nonce is None else nonce
    return {
        HEADER_SIGNATURE: sign(signing_key, build_message(ts, header_nonce, body)),
        HEADER_TIMESTAMP: ts,
        HEADER_NONCE: header_nonce,
        HEADER_SERIAL: serial,
        HEADER_SIGNATURE_TYPE: SIGNATURE_TYPE,
    }


def build_notification(
    *,
    event_id: str,
    event_type: str,
    resource_plaintext: Mapping[str, Any],
    original_type: str,
    apiv3_key: bytes | str,
    signing_key: RSAPrivateKey,
    serial: str,
    timestamp: int | None = None,
    nonce: str | None = None,
    summary: str = "支付成功",
    create_time: str | None = None,
    resource_nonce: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """A signed notification ``(headers, body)`` as WeChat Pay would POST it.

    ``nonce`` is the ``Wechatpay-Nonce`` header; ``resource_nonce`` the AES-GCM nonce
    (random when omitted). ``associated_data`` is ``original_type``, as WeChat Pay uses.
    """
    ts = int(time.time()) if timestamp is None else timestamp
    if create_time is None:
        create_time = datetime.fromtimestamp(ts, CHINA).isoformat(timespec="seconds")
    resource = {
        "original_type": original_type,
        **encrypt_resource(
            apiv3_key, _dumps(dict(resource_plaintext)), original_type, resource_nonce
        ),
    }
    body = _dumps(
        {
            "id": event_id,
            "create_time": create_time,
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": summary,
            "resource": resource,
        }
    )
    headers = signed_headers(signing_key, serial, body, timestamp=ts, nonce=nonce)
    headers["Content-Type"] = "application/json"
    return headers, body


def _require_str(obj: Mapping[str, Any], field: str, where: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where} lacks a non-empty string {field!r}")
    return value


def parse_notification(body: bytes) -> dict[str, Any]:
    """Parse a notification body and check the fields ingress relies on (ValueError if not)."""
    # orjson: a fraction of json's cost on the hot path (ingress and the order service parse
    # every notification). It reads UTF-8 only, as WeChat Pay sends, and refuses what json
    # would take that is not JSON (NaN), and nesting deeper than 1,024 (hostile, never
    # WeChat Pay's), as invalid JSON.
    try:
        obj = orjson.loads(body)
    except ValueError:
        raise ValueError("notification body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ValueError("notification body is not a JSON object")
    _require_str(obj, "id", "notification")
    _require_str(obj, "event_type", "notification")
    resource = obj.get("resource")
    if not isinstance(resource, dict):
        raise ValueError("notification lacks a 'resource' object")
    _require_str(resource, "ciphertext", "resource")
    _require_str(resource, "nonce", "resource")
    if resource.get("algorithm") != ALGORITHM:
        raise ValueError(f"resource algorithm is not {ALGORITHM}")
    associated_data = resource.get("associated_data")
    if associated_data is not None and not isinstance(associated_data, str):
        raise ValueError("resource 'associated_data' is not a string")
    return obj


def decrypt_notification(body_obj: Mapping[str, Any], apiv3_key: bytes | str) -> dict[str, Any]:
    """Decrypt the ``resource`` of a parsed notification into its JSON object."""
    resource = body_obj.get("resource")
    if not isinstance(resource, Mapping):
        raise DecryptionError("notification has no resource object")
    plaintext = decrypt_resource(
        apiv3_key,
        str(resource.get("nonce") or ""),
        resource.get("associated_data"),
        str(resource.get("ciphertext") or ""),
    )
    try:
        decoded = orjson.loads(plaintext)
    except ValueError:
        raise DecryptionError("decrypted resource is not valid JSON") from None
    if not isinstance(decoded, dict):
        raise DecryptionError("decrypted resource is not a JSON object")
    return decoded
