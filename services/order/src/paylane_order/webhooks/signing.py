"""Standard Webhooks 1.0 signatures: ``webhook-signature: v1,<base64 HMAC-SHA256>`` of
``<webhook-id>.<webhook-timestamp>.<body>``, keyed with the bytes of the secret's base64
part after ``whsec_``. With several secrets (a rotation) the header holds one signature
each, space-separated; a receiver accepts the message if any verifies."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
#: Bytes of a secret paylane generates for an endpoint made through the API.
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh ``whsec_…`` secret."""
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of ``whsec_<base64>``; ValueError when it is not one."""
    if not secret.startswith(PREFIX):
        raise ValueError("a webhook secret starts with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is 'whsec_' and base64") from None
    if len(key) < 16:
        raise ValueError("a webhook secret holds at least 16 bytes")
    return key


def parse_secrets(text: str) -> tuple[str, ...]:
    """``WEBHOOK_SECRET``: one secret, or several separated by spaces or commas (the new
    one and the old one during a rotation); each checked."""
    found = tuple(s for s in text.replace(",", " ").split() if s)
    for secret in found:
        secret_key(secret)
    return found


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64>`` for one secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_: tuple[str, ...], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated."""
    return " ".join(signature(s, msg_id, timestamp, body) for s in secrets_)
