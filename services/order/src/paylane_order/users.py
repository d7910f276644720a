"""Users, as the existing system keeps them (docs/database.md): the openid names the user;
a new one is created with a ``user-…`` id, as the cloud function does."""

from __future__ import annotations

from typing import Any

import aiomysql

from paylane_common.db import is_duplicate_key
from paylane_common.ids import new_row_id


async def _find_by_openid(
    cur: aiomysql.Cursor, openid: str, *, lock: bool
) -> dict[str, Any] | None:
    await cur.execute(
        "SELECT id, openid FROM users WHERE openid = %s" + (" LOCK IN SHARE MODE" if lock else ""),
        (openid,),
    )
    row: dict[str, Any] | None = await cur.fetchone()
    return row


async def user_by_openid(
    cur: aiomysql.Cursor, openid: str, *, login: bool = False
) -> dict[str, Any]:
    """As the cloud function does: the openid names the user, created (``user-…`` id)
    when new. ``login``: a mini-program sign-in, recorded in ``last_login_at``."""
    found = await _find_by_openid(cur, openid, lock=False)
    if found is None:
        user_id = new_row_id("user")
        try:
            await cur.execute(
                "INSERT INTO users (id, openid, last_login_at)"
                " VALUES (%s, %s, IF(%s, NOW(), NULL))",
                (user_id, openid, login),
            )
            return {"id": user_id, "openid": openid}
        except Exception as exc:
            if not is_duplicate_key(exc):
                raise
        # Created meanwhile by another request: a locking read sees the committed row,
        # which this transaction's snapshot may predate.
        found = await _find_by_openid(cur, openid, lock=True)
        if found is None:  # the duplicate was the random id: never guess
            raise RuntimeError("a new user's id collided; try again")
    if login:
        await cur.execute("UPDATE users SET last_login_at = NOW() WHERE id = %s", (found["id"],))
    return found
