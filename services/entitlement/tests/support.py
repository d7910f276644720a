"""Helpers of the entitlement service's tests: a user with a given plan."""

from __future__ import annotations

import aiomysql

from paylane_common.contract.ids import new_row_id
from tests.support.seeding import add_user


async def new_user(pool: aiomysql.Pool, status: str | None = "free", count: int | None = 3) -> str:
    """A row of the shared ``users`` table with this plan and regenerations (NULL for
    None, as rows of the existing system may have them)."""
    user_id = new_row_id("user")
    return await add_user(
        pool, id=user_id, openid=f"openid-{user_id}", payment_status=status, regenerate_count=count
    )
