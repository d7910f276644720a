"""Inbox: a consumer claims (consumer, event_id) in the same transaction as its effect."""

from __future__ import annotations

import aiomysql

from .db import is_duplicate_key


async def claim(cur: aiomysql.Cursor, consumer: str, event_id: str) -> bool:
    """True when this is the first time ``consumer`` sees ``event_id``.

    A concurrent claim of the same event blocks on the row lock until the first
    transaction ends; it then sees the duplicate (or proceeds if the first rolled back).
    """
    try:
        await cur.execute(
            "INSERT INTO inbox (consumer, event_id) VALUES (%s, %s)", (consumer, event_id)
        )
    except Exception as exc:
        if is_duplicate_key(exc):
            return False
        raise
    return True
