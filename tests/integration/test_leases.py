"""Leases (leases.py) on the real paylane_locks table: one holder at a time, an expired
lease taken over, a waiter served once the holder is done, a job whose lease was taken
from it cancelled, a missing row said loudly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import aiomysql
import pytest

from paylane_common.storage.db import transaction
from paylane_common.storage.leases import Lease, LeaseError, LeaseLost
from tests.support.polling import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def name(db_pool: aiomysql.Pool) -> AsyncIterator[str]:
    """A lease row of this test's own (the migration adds the services')."""
    name = f"test.{uuid.uuid4().hex[:12]}"
    async with transaction(db_pool) as cur:
        await cur.execute("INSERT INTO paylane_locks (name) VALUES (%s)", (name,))
    yield name
    async with transaction(db_pool) as cur:
        await cur.execute("DELETE FROM paylane_locks WHERE name = %s", (name,))


async def _holder(pool: aiomysql.Pool, name: str) -> str | None:
    async with transaction(pool) as cur:
        await cur.execute("SELECT holder FROM paylane_locks WHERE name = %s", (name,))
        return (await cur.fetchone())["holder"]


async def test_one_holder_at_a_time_and_released_at_the_end(
    db_pool: aiomysql.Pool, name: str
) -> None:
    async with Lease(db_pool, name).held() as first:
        assert first
        assert await _holder(db_pool, name)
        async with Lease(db_pool, name).held() as second:
            assert not second
    assert await _holder(db_pool, name) is None
    async with Lease(db_pool, name).held() as again:
        assert again


async def test_the_lease_of_a_holder_that_died_is_taken_once_expired(
    db_pool: aiomysql.Pool, name: str
) -> None:
    async with transaction(db_pool) as cur:
        await cur.execute(
            "UPDATE paylane_locks SET holder = 'dead', expires_at = NOW(6) + INTERVAL 1 HOUR"
            " WHERE name = %s",
            (name,),
        )
    async with Lease(db_pool, name).held() as held:
        assert not held
    async with transaction(db_pool) as cur:
        await cur.execute(
            "UPDATE paylane_locks SET expires_at = NOW(6) - INTERVAL 1 SECOND WHERE name = %s",
            (name,),
        )
    async with Lease(db_pool, name).held() as held:
        assert held
        assert await _holder(db_pool, name) != "dead"


async def test_a_waiter_takes_the_lease_once_the_holder_is_done(
    db_pool: aiomysql.Pool, name: str
) -> None:
    taken = asyncio.Event()
    done = asyncio.Event()

    async def hold() -> None:
        async with Lease(db_pool, name).held() as held:
            assert held
            taken.set()
            await done.wait()

    holding = asyncio.create_task(hold())
    await asyncio.wait_for(taken.wait(), 10)

    async def wait() -> bool:
        async with Lease(db_pool, name).held(wait_s=30) as held:
            return held

    waiter = asyncio.create_task(wait())
    done.set()
    await holding
    assert await asyncio.wait_for(waiter, 30)


async def test_the_job_is_cancelled_when_its_lease_is_taken_from_it(
    db_pool: aiomysql.Pool, name: str
) -> None:
    """Renewed every third of its ttl; a renewal that finds another holder cancels the job
    (here the row is overwritten by hand, as a replica would after the lease expired)."""
    with pytest.raises(LeaseLost):
        async with Lease(db_pool, name, ttl_s=0.6).held() as held:
            assert held
            async with transaction(db_pool) as cur:
                await cur.execute(
                    "UPDATE paylane_locks SET holder = 'other' WHERE name = %s", (name,)
                )
            await asyncio.wait_for(asyncio.Event().wait(), 10)  # cancelled long before
    assert await _holder(db_pool, name) == "other"  # not released: it is not ours


async def test_a_lease_renewed_while_its_job_runs_outlives_its_ttl(
    db_pool: aiomysql.Pool, name: str
) -> None:
    async def expires_at() -> datetime:
        async with transaction(db_pool) as cur:
            await cur.execute("SELECT expires_at FROM paylane_locks WHERE name = %s", (name,))
            return (await cur.fetchone())["expires_at"]

    async with Lease(db_pool, name, ttl_s=0.6).held() as held:
        assert held
        first = await expires_at()

        async def renewed_twice() -> bool:  # every 0.2 s: past the first ttl
            return await expires_at() > first + timedelta(seconds=0.3)

        await eventually(renewed_twice, 10, "the lease renewed")
        async with Lease(db_pool, name).held() as other:
            assert not other


async def test_a_missing_row_is_an_error_not_a_lease_held_elsewhere(
    db_pool: aiomysql.Pool,
) -> None:
    with pytest.raises(LeaseError, match="paylane migrate"):
        async with Lease(db_pool, f"test.missing.{uuid.uuid4().hex[:8]}").held():
            pass
