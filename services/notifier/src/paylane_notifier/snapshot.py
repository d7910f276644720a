"""Current state on connect: a client that connects after its payment still learns it.

The notifier is stateless, so the state comes from MySQL: the user's ``payment_orders``
updated within ``snapshot_window_s``, newest first, at most ``snapshot_limit``, each joined
with the user's ``payment_status`` / ``regenerate_count``, as ``order.state`` messages.

Event ids and ``Last-Event-ID``
-------------------------------
Every pushed message has an id: its ``occurred_at`` in integer milliseconds since the
epoch, as a string (the SSE ``id:`` line; WebSocket clients read ``occurred_at``).

* A live event's id is the envelope's ``occurred_at``.
* A snapshot message's id is when that state last changed: the later of the order's
  ``updated_at`` and the user's ``updated_at`` (the message carries both rows' fields; with
  the order's time alone, a client that saw ``order.paid`` and reconnected before
  ``entitlement.granted`` arrived would never learn the grant).

On connect with ``Last-Event-ID: N`` (SSE reconnects send it by themselves) or
``?last_event_id=N`` (either transport), the snapshot holds only orders whose state changed
after ``N`` ms, i.e. with id > N, so a reconnecting client gets exactly what changed since.
The snapshot is *sent* oldest first, so the last id a client sees is the newest one. A
missing or unparsable id means a full snapshot.

Ids compare the producers' clocks (``occurred_at``) with the database's (``updated_at``);
keep them in sync (NTP). Live events may repeat a snapshot's state: messages are state,
not deltas, and clients may dedupe by ``event_id``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiomysql

from paylane_common import db

from .messages import ORDER_STATE, ClientMessage

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Ids beyond this are not milliseconds since the epoch (year 2286): treated as absent.
_MAX_ID = 10**13

_SELECT = """
SELECT o.out_trade_no, o.status, o.amount_refunded, u.payment_status, u.regenerate_count,
       UNIX_TIMESTAMP(GREATEST(o.updated_at, u.updated_at)) AS changed_epoch
FROM payment_orders o
JOIN users u ON u.id = o.user_id
WHERE o.user_id = %(user_id)s
  AND o.updated_at >= NOW(6) - INTERVAL %(window_s)s SECOND
  {since}
ORDER BY o.updated_at DESC, o.id DESC
LIMIT %(limit)s
"""
# "changed after N ms" = changed at or after ms N+1, so sub-millisecond parts of N's own
# instant are not sent again; written per column so the (user_id, updated_at) index serves.
_SINCE = """
  AND (o.updated_at >= FROM_UNIXTIME((%(since_ms)s + 1) / 1000)
       OR u.updated_at >= FROM_UNIXTIME((%(since_ms)s + 1) / 1000))
"""


def parse_last_event_id(value: str | None) -> int | None:
    """A ``Last-Event-ID`` as ms since the epoch, or None when absent or not ours."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if number < _MAX_ID else None


async def load_snapshot(
    pool: aiomysql.Pool,
    user_id: int,
    *,
    window_s: int,
    limit: int,
    since_ms: int | None = None,
) -> list[ClientMessage]:
    """``order.state`` messages for ``user_id``, oldest change first (see module doc)."""
    if limit <= 0:
        return []
    sql = _SELECT.format(since=_SINCE if since_ms is not None else "")
    params = {"user_id": user_id, "window_s": window_s, "limit": limit, "since_ms": since_ms}
    async with db.transaction(pool) as cur:
        await cur.execute(sql, params)
        rows = await cur.fetchall()
    messages = [
        ClientMessage(
            type=ORDER_STATE,
            out_trade_no=row["out_trade_no"],
            status=row["status"],
            payment_status=row["payment_status"],
            regenerate_count=row["regenerate_count"],
            amount_refund=row["amount_refunded"] or None,
            event_id=None,
            occurred_at=_from_epoch(row["changed_epoch"]),
        )
        for row in rows
    ]
    messages.reverse()
    messages.sort(key=lambda m: m.occurred_at)
    return messages


def _from_epoch(seconds: Decimal | int | None) -> datetime:
    if seconds is None:
        return _EPOCH
    return _EPOCH + timedelta(microseconds=int(Decimal(seconds) * 1_000_000))
