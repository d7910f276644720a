"""Inbox: a consumer claims (consumer, event_id) in the same transaction as its effect."""

from __future__ import annotations

import aiomysql

from paylane_common.storage.db import is_duplicate_key, placeholders


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


async def seen(cur: aiomysql.Cursor, consumer: str, event_ids: list[str]) -> set[str]:
    """Which of ``event_ids`` ``consumer`` has already claimed (a plain read: a claim
    racing it makes the later :func:`claim_many` fail, and its batch with it)."""
    if not event_ids:
        return set()
    await cur.execute(
        "SELECT event_id FROM inbox WHERE consumer = %s"
        f" AND event_id IN ({placeholders(len(event_ids))})",
        (consumer, *event_ids),
    )
    return {row["event_id"] for row in await cur.fetchall()}


async def claim_many(cur: aiomysql.Cursor, consumer: str, event_ids: list[str]) -> None:
    """Claim events not yet seen, in one statement; a duplicate raises (the caller's
    transaction then fails as a whole)."""
    if event_ids:
        await cur.executemany(
            "INSERT INTO inbox (consumer, event_id) VALUES (%s, %s)",
            [(consumer, event_id) for event_id in event_ids],
        )
