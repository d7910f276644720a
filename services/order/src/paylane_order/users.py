"""Users, as the existing system keeps them (docs/database.md): the openid names the user;
a new one is created with a ``user-…`` id, as the cloud function does."""

from __future__ import annotations

from typing import TypedDict

import aiomysql

from paylane_common.contract.ids import new_row_id
from paylane_common.storage.db import is_duplicate_key
from paylane_common.storage.rows import fetch_one


class UserRef(TypedDict):
    """``SELECT id, openid FROM users``: who a user is."""

    id: str
    openid: str | None


async def _find_by_openid(cur: aiomysql.Cursor, openid: str, *, lock: bool) -> UserRef | None:
    await cur.execute(
        "SELECT id, openid FROM users WHERE openid = %s" + (" LOCK IN SHARE MODE" if lock else ""),
        (openid,),
    )
    return await fetch_one(cur, UserRef)


async def user_by_openid(cur: aiomysql.Cursor, openid: str, *, login: bool = False) -> UserRef:
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
