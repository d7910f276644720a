"""Leases: one replica at a time runs a job (the reconciler, the bill reconciliation,
retention), on a row of ``paylane_locks`` (migration 0006).

MySQL's ``GET_LOCK`` was used before; its names belong to no table, so any account on
the server could take one (the notifier's read-only account included) and the job then
did nothing, quietly, for as long as it held the name. A row is taken only by an
account granted UPDATE on it (deploy/mysql/grants.sql): the reconciler's and the bills'
by the order service's; retention's, in a table of its own (``paylane_retention_lock``),
by the consumer services'.

A lease is taken by a conditional UPDATE (the row is free, expired, or already this
holder's), renewed every third of its ``ttl_s`` while the job runs, and released at the
end. A holder that dies leaves it for ``ttl_s`` at most. The database's clock (``NOW(6)``)
decides expiry, so replicas' clocks need not agree. A holder that finds its lease gone
(it could not renew for ``ttl_s``, and another replica took it) has its job cancelled:
:class:`LeaseLost` is raised from the ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator

import aiomysql
import structlog

from paylane_common.storage.db import transaction

log = structlog.get_logger(__name__)

#: A lease's lifetime unless its job asks for another: renewed every third of it while
#: the job runs, left to expire this long after a holder died mid-job.
TTL_S = 60.0
#: How often a lease is asked for again while ``held(wait_s=…)`` waits for it.
_POLL_S = 0.5


class LeaseError(RuntimeError):
    """The lease's row is missing (``paylane migrate`` has not run migration 0006)."""


class LeaseLost(RuntimeError):
    """The lease could not be renewed before it expired: the job was cancelled."""


class Lease:
    """The lease ``name`` on a row of ``table`` (``paylane_locks``, or one of its shape)."""

    def __init__(
        self,
        pool: aiomysql.Pool,
        name: str,
        *,
        ttl_s: float = TTL_S,
        table: str = "paylane_locks",
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._pool = pool
        self._name = name
        self._ttl_us = int(ttl_s * 1e6)
        self._ttl_s = ttl_s
        self._table = table

    @contextlib.asynccontextmanager
    async def held(self, wait_s: float = 0) -> AsyncIterator[bool]:
        """Yields True while this process holds the lease (taken within ``wait_s``),
        False when another holder kept it that long."""
        holder = f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(6)}"
        if not await self._acquire(holder, wait_s):
            yield False
            return
        task = asyncio.current_task()
        assert task is not None
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._keep(holder, task, lost), name=f"lease {self._name}")
        try:
            yield True
        except asyncio.CancelledError:
            if lost.is_set() and task.uncancel() == 0:
                raise LeaseLost(f"lease {self._name} lost while its job ran") from None
            raise
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            if not lost.is_set():
                await self._release(holder)

    async def _acquire(self, holder: str, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        while True:
            async with transaction(self._pool) as cur:
                await cur.execute(
                    f"UPDATE {self._table} SET holder = %s,"
                    " expires_at = NOW(6) + INTERVAL %s MICROSECOND"
                    " WHERE name = %s AND (holder IS NULL OR holder = %s"
                    " OR expires_at IS NULL OR expires_at <= NOW(6))",
                    (holder, self._ttl_us, self._name, holder),
                )
                if cur.rowcount == 1:
                    return True
                await cur.execute(
                    f"SELECT holder FROM {self._table} WHERE name = %s", (self._name,)
                )
                if await cur.fetchone() is None:
                    raise LeaseError(f"no row {self._name!r} in {self._table}: run paylane migrate")
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))

    async def _renew(self, holder: str) -> bool:
        async with transaction(self._pool) as cur:
            await cur.execute(
                f"UPDATE {self._table} SET expires_at = NOW(6) + INTERVAL %s MICROSECOND"
                " WHERE name = %s AND holder = %s AND expires_at > NOW(6)",
                (self._ttl_us, self._name, holder),
            )
            return bool(cur.rowcount == 1)

    async def _keep(self, holder: str, job: asyncio.Task[object], lost: asyncio.Event) -> None:
        """Renews the lease every third of its ttl; cancels ``job`` once it is gone."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                if await self._renew(holder):
                    renewed = time.monotonic()
                    continue
            except Exception as exc:  # the database away a moment: try again
                log.warning("lease_renew_failed", lease=self._name, error=repr(exc))
                if time.monotonic() - renewed < self._ttl_s:
                    continue
            log.error("lease_lost", alert=True, lease=self._name)
            lost.set()
            job.cancel()
            return

    async def _release(self, holder: str) -> None:
        try:
            async with transaction(self._pool) as cur:
                await cur.execute(
                    f"UPDATE {self._table} SET holder = NULL, expires_at = NULL"
                    " WHERE name = %s AND holder = %s",
                    (self._name, holder),
                )
        except Exception as exc:  # it expires on its own
            log.warning("lease_release_failed", lease=self._name, error=repr(exc))
