"""The pushes to clients, recorded in ``notifier_pushes`` (migration 0017) for the
operators' console's timeline: the order, the event type, the channel (ws, sse) and how
many of the user's connections on this replica took it.

The push is the notifier's hot path (issue 31), so recording it costs no round trip: a
push appends a tuple to an in-memory buffer, and a background task writes the buffer in
one multi-row INSERT, at most once every ``interval_s`` (the first push after a quiet
spell at once). The buffer is bounded (``max_buffer``): past it, and when a write fails
(the database away), records are dropped and counted
(``paylane_notifier_push_records_dropped_total{why}``), never retried nor waited for. What
is buffered is written on shutdown.

Only pushes some client of this replica took are recorded: every replica sees every event,
and a row per replica with nobody connected would say nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import aiomysql
import structlog
from aiohttp import web

from paylane_common.runtime.background import BackgroundLoop
from paylane_common.runtime.service import DB_POOL
from paylane_common.storage.db import placeholders, transaction

from .hub import HUB, Transport
from .metrics import PUSH_RECORDS_DROPPED

log = structlog.get_logger(__name__)

#: out_trade_no, event type, channel, connections, unix time.
_Row = tuple[str, str, Transport, int, float]


class PushLog(BackgroundLoop):
    """Buffered records of pushes, flushed in one INSERT at most every ``interval_s``."""

    task_name = "push_log"

    def __init__(
        self,
        pool: aiomysql.Pool,
        *,
        max_buffer: int = 10_000,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._max_buffer = max_buffer
        self._interval_s = interval_s
        self._clock = clock
        self._buffer: list[_Row] = []
        self._pending = asyncio.Event()

    def add(self, out_trade_no: str, event_type: str, channel: Transport, connections: int) -> None:
        """Buffer one push (never waits, never raises)."""
        if len(self._buffer) >= self._max_buffer:
            PUSH_RECORDS_DROPPED.labels("buffer_full").inc()
            return
        self._buffer.append((out_trade_no, event_type, channel, connections, self._clock()))
        self._pending.set()

    async def _run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            await self.flush()
            await asyncio.sleep(self._interval_s)

    async def flush(self) -> int:
        """Write what is buffered in one INSERT; returns how many rows (dropped on error)."""
        rows, self._buffer = self._buffer, []
        if not rows:
            return 0
        values = [
            (no[:64], kind[:32], channel, n, datetime.fromtimestamp(at, UTC).replace(tzinfo=None))
            for no, kind, channel, n, at in rows
        ]
        try:
            async with transaction(self._pool) as cur:
                await cur.execute(
                    "INSERT INTO notifier_pushes"
                    " (out_trade_no, event_type, channel, connections, pushed_at) VALUES "
                    + placeholders(len(values), "(%s, %s, %s, %s, %s)"),
                    [value for row in values for value in row],
                )
        except Exception as exc:  # the database away: the pushes happened; their trace is lost
            PUSH_RECORDS_DROPPED.labels("database").inc(len(rows))
            log.warning("push_records_dropped", rows=len(rows), error=repr(exc))
            return 0
        return len(rows)

    async def stop(self) -> None:
        """Stop the loop and write what is still buffered."""
        await super().stop()
        await self.flush()


PUSH_LOG = web.AppKey("push_log", PushLog)


def use_push_log(app: web.Application, max_buffer: int) -> None:
    """Record the hub's pushes (add after use_mysql and before the consumer: the consumer
    stops first, then the buffer is written, then the pool closes). ``max_buffer`` 0: off."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if max_buffer <= 0:
            yield
            return
        push_log = app[PUSH_LOG] = PushLog(app[DB_POOL], max_buffer=max_buffer)
        app[HUB].pushes = push_log
        push_log.start()
        yield
        app[HUB].pushes = None
        await push_log.stop()

    app.cleanup_ctx.append(ctx)
