"""The records written for the console's timeline alone (migrations 0016, 0017), read
for an order (``console_data.timeline``) and for the health page: notifications ingress
rejected (``notifications_rejected``, written by rejections.py), the queries made to WeChat
Pay (``wechatpay_queries``, query_log.py) and the notifier's pushes to clients
(``notifier_pushes``, written by the notifier's push_log.py). All pruned after
``RETENTION_DAYS``: an order older than that shows none of them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiomysql

from paylane_common.storage.db import transaction

#: One line of the timeline: when, what, where it comes from, the detail's parts.
Record = tuple[datetime | None, str, str, dict[str, Any]]


async def of_order(pool: aiomysql.Pool, out_trade_no: str) -> list[Record]:
    """The order's rejected notifications (those whose resource decrypted and named it),
    WeChat Pay queries, and pushes to its user's clients."""
    found: list[Record] = []
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT route, reason, status, event_id, event_type, transaction_id, serial,"
            " received_at FROM notifications_rejected WHERE out_trade_no = %s",
            (out_trade_no,),
        )
        for row in await cur.fetchall():
            found.append(
                (
                    row["received_at"],
                    f"notification rejected: {row['reason']}",
                    "ingress",
                    {
                        "answered": row["status"],
                        "route": row["route"],
                        "event_type": row["event_type"],
                        "event_id": row["event_id"],
                        "transaction_id": row["transaction_id"],
                        "serial": row["serial"],
                    },
                )
            )
        await cur.execute(
            "SELECT kind, out_refund_no, source, answer, error, asked_at FROM wechatpay_queries"
            " WHERE out_trade_no = %s",
            (out_trade_no,),
        )
        for row in await cur.fetchall():
            said = row["answer"] if row["error"] is None else f"error {row['error']}"
            found.append(
                (
                    row["asked_at"],
                    f"WeChat Pay {row['kind']} query: {said}",
                    "query",
                    {"source": row["source"], "out_refund_no": row["out_refund_no"]},
                )
            )
        await cur.execute(
            "SELECT event_type, channel, connections, pushed_at FROM notifier_pushes"
            " WHERE out_trade_no = %s",
            (out_trade_no,),
        )
        for row in await cur.fetchall():
            found.append(
                (
                    row["pushed_at"],
                    f"pushed {row['event_type']} ({row['channel']})",
                    "push",
                    {"connections": row["connections"]},
                )
            )
    return found


async def recent_rejections(pool: aiomysql.Pool, limit: int = 50) -> list[dict[str, Any]]:
    """The latest notifications ingress rejected, attributable to an order or not."""
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT route, reason, status, event_id, event_type, out_trade_no, serial,"
            " received_at FROM notifications_rejected"
            " ORDER BY received_at DESC, id DESC LIMIT %s",
            (limit,),
        )
        return list(await cur.fetchall())
