"""Merchant-side identifiers: unique, time-sortable, within WeChat's alphabet and length
(``out_trade_no``: 6 to 32 chars of ``[0-9A-Za-z_-|*]``)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U


def _new(prefix: str, now: datetime | None = None) -> str:
    moment = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%f")[:17]
    return prefix + moment + "".join(secrets.choice(_ALPHABET) for _ in range(8))


def new_out_trade_no(now: datetime | None = None) -> str:
    """``P`` + UTC time to the millisecond + 8 random chars: 26 chars, sorts by creation."""
    return _new("P", now)


def new_out_refund_no(now: datetime | None = None) -> str:
    return _new("R", now)


def keyed_out_refund_no(out_trade_no: str, idempotency_key: str) -> str:
    """The ``out_refund_no`` of a refund request with an ``Idempotency-Key``: the same
    for every retry of it (so WeChat Pay sees one refund), distinct per order."""
    digest = hashlib.sha256(f"{out_trade_no}\n{idempotency_key}".encode()).hexdigest()
    return "K" + digest[:40]
