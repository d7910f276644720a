"""The notifications ingress rejected, written to ``notifications_rejected`` (migration
0016) for the operators' console: ingress has no database, so it publishes each as a
``notification.rejected`` record (paylane_ingress.rejections) to the bounded queue
``order.rejections``, consumed here.

A record is written once: its envelope's id is the row's ``record_id`` (unique), so a
redelivery inserts nothing (a plain INSERT whose duplicate key is the answer: INSERT
IGNORE would warn, and ON DUPLICATE KEY UPDATE would need UPDATE granted). Nothing else
is done with it: a rejected notification changes no order (WeChat Pay sends it again, or
the reconciler asks).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC

import aiomysql
import pymysql
from aiohttp import web

from paylane_common.broker.topology import ORDER_REJECTIONS
from paylane_common.contract.events import Envelope, NotificationRejected
from paylane_common.delivery.consumer import Reject
from paylane_common.runtime.service import DB_POOL, consumer_of
from paylane_common.runtime.settings import ConsumerSettings
from paylane_common.storage.db import is_duplicate_key, transaction
from paylane_common.web.health import READINESS_CHECKS


class RejectionRecords:
    """The handler of ``order.rejections``: one row per record."""

    def __init__(self, pool: aiomysql.Pool) -> None:
        self._pool = pool

    async def __call__(self, envelope: Envelope, data: object) -> str:
        if not isinstance(data, NotificationRejected):
            raise Reject(f"{envelope.type} is not a rejection record")
        received_at = data.received_at.astimezone(UTC).replace(tzinfo=None)
        try:
            async with transaction(self._pool) as cur:
                await cur.execute(
                    "INSERT INTO notifications_rejected (record_id, route, reason, status,"
                    " event_id, event_type, out_trade_no, transaction_id, serial, received_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        envelope.event_id,
                        data.route,
                        data.reason,
                        data.status,
                        data.event_id,
                        data.event_type,
                        data.out_trade_no,
                        data.transaction_id,
                        data.serial,
                        received_at,
                    ),
                )
        except pymysql.err.IntegrityError as exc:
            if not is_duplicate_key(exc):
                raise
            return "duplicate"  # redelivered: written before
        return "recorded"


def use_rejection_records(app: web.Application, settings: ConsumerSettings) -> None:
    """Consume ``order.rejections`` into ``notifications_rejected`` with the app (add
    after use_broker and use_mysql: it stops before they close)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        consumer = consumer_of(app, ORDER_REJECTIONS, RejectionRecords(app[DB_POOL]), settings)
        app[READINESS_CHECKS]["rejections"] = consumer.check
        await consumer.start()
        yield
        await consumer.stop()

    app.cleanup_ctx.append(ctx)
