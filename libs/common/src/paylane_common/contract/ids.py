"""Row ids of the shared tables, in the existing system's format (docs/database.md):
``{kind}-{ms timestamp}-{random}``, e.g. ``user-1706345678901-xyz789``; at most 36 chars."""

from __future__ import annotations

import secrets
import string
import time

#: A generation id (``payment_orders.generation_id``, VARCHAR(36)), wherever one enters
#: (``POST /orders``, the cloud function's internal notify). It is sent to WeChat Pay as
#: the order's ``attach`` and comes back in the daily bill, a CSV whose records are split
#: at a comma followed by a backtick: letters, digits, ``_`` and ``-`` only, so that no id
#: can break a bill's columns (a comma in one once failed a whole day's reconciliation).
GENERATION_ID_PATTERN = r"^[0-9A-Za-z_-]{1,36}$"

_ALPHABET = string.ascii_lowercase + string.digits
_SUFFIXES = len(_ALPHABET) ** 8


def new_row_id(kind: str, now_ms: int | None = None) -> str:
    """``user``, ``order``, ``refund``, ``log``: the kind, the time in ms, 8 random chars."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    # One draw from the OS for the 8 characters (not one per character: a system call each).
    n = secrets.randbelow(_SUFFIXES)
    suffix = ""
    for _ in range(8):
        n, digit = divmod(n, len(_ALPHABET))
        suffix += _ALPHABET[digit]
    row_id = f"{kind}-{ms}-{suffix}"
    if len(row_id) > 36:
        raise ValueError(f"row id {row_id!r} is longer than the 36 chars of the shared schema")
    return row_id
