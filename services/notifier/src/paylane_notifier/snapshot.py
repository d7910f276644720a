"""Current state on connect: a client that connects after its payment still learns it.

The notifier is stateless, so the state comes from MySQL: the user's ``payment_orders``
updated within ``snapshot_window_s``, newest first, at most ``snapshot_limit``, each joined
with the user's ``payment_status`` / ``regenerate_count``, as ``order.state`` messages.

The rows may have been written by the other writers of the shared tables (docs/database.md):
their ``status`` is the row's own (see :data:`messages.ORDER_STATUSES`), a NULL plan or
regeneration count reads as ``free`` / 0 (as the entitlement service reads it), and a
``refunded`` order whose paylane column ``amount_refunded`` was never filled (another
writer refunded it, in full) carries its whole ``amount_total`` (fen, generated from the
yuan ``amount``) as ``amount_refund``.

Event ids and ``Last-Event-ID``
-------------------------------
Every pushed message has an id: its ``occurred_at`` in integer milliseconds since the
epoch, as a string (the SSE ``id:`` line; WebSocket clients read ``occurred_at``).

* A live event's id is the envelope's ``occurred_at``.
* A snapshot message's id is when that state last changed: the later of the order's
  ``updated_at`` and the user's ``updated_at`` (the message carries both rows' fields; with
  the order's time alone, a client that saw ``order.paid`` and reconnected before
  ``entitlement.granted`` arrived would never learn the grant). The shared tables'
  ``updated_at`` are ``TIMESTAMP`` in whole seconds, so a change stamped second ``S`` may
  have happened at any ms of ``S``: the id is the *last* ms of ``S``, or the time the
  snapshot was read when that is sooner (a snapshot read at ``S.400`` cannot vouch for a
  change at ``S.700``).

On connect with ``Last-Event-ID: N`` (SSE reconnects send it by themselves) or
``?last_event_id=N`` (either transport), the snapshot holds only orders whose state may
have changed after ``N`` ms, i.e. with id > N, so a reconnecting client gets everything
that changed since (and, within the second of ``N``, possibly a state it has seen: messages
are state, not deltas). The snapshot is *sent* oldest first, so the last id a client sees
is the newest one. A missing or unparsable id means a full snapshot.

Ids compare the producers' clocks (``occurred_at``) with the database's (``updated_at``);
keep them in sync (NTP). Live events may repeat a snapshot's state: messages are state,
not deltas, and clients may dedupe by ``event_id``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiomysql

from paylane_common.storage import db

from .messages import ORDER_STATE, ClientMessage

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Ids beyond this are not milliseconds since the epoch (year 2286): treated as absent.
_MAX_ID = 10**13

_SELECT = """
SELECT o.out_trade_no, o.status, o.amount_total, o.amount_refunded, o.generation_id,
       COALESCE(u.payment_status, 'free') AS payment_status,
       COALESCE(u.regenerate_count, 0) AS regenerate_count,
       UNIX_TIMESTAMP(GREATEST(o.updated_at, COALESCE(u.updated_at, o.updated_at)))
           AS changed_epoch,
       UNIX_TIMESTAMP(NOW(6)) AS read_epoch
FROM payment_orders o
JOIN users u ON u.id = o.user_id
WHERE o.user_id = %(user_id)s
  AND o.updated_at >= NOW(6) - INTERVAL %(window_s)s SECOND
  {since}
ORDER BY o.updated_at DESC, o.id DESC
LIMIT %(limit)s
"""
# "may have changed after N ms": stamped in a second whose last ms is after N, i.e. at or
# after second (N + 1) // 1000; written per column so the (user_id, updated_at) index serves.
_SINCE = """
  AND (o.updated_at >= FROM_UNIXTIME(%(since_s)s)
       OR u.updated_at >= FROM_UNIXTIME(%(since_s)s))
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
    user_id: str,
    *,
    window_s: int,
    limit: int,
    since_ms: int | None = None,
) -> list[ClientMessage]:
    """``order.state`` messages for ``user_id``, oldest change first (see module doc)."""
    if limit <= 0:
        return []
    sql = _SELECT.format(since=_SINCE if since_ms is not None else "")
    since_s = None if since_ms is None else (since_ms + 1) // 1000
    params = {"user_id": user_id, "window_s": window_s, "limit": limit, "since_s": since_s}
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
            amount_refund=_amount_refund(row),
            generation_id=row["generation_id"] or None,  # '' in the row: none
            event_id=None,
            occurred_at=_changed_at(row["changed_epoch"], row["read_epoch"]),
        )
        for row in rows
    ]
    messages.reverse()
    messages.sort(key=lambda m: m.occurred_at)
    return messages


def _amount_refund(row: dict[str, Any]) -> int | None:
    """Fen refunded: paylane's running total, or for a ``refunded`` order another writer
    refunded (its ``amount_refunded`` left at 0) the whole amount."""
    if row["amount_refunded"]:
        return int(row["amount_refunded"])
    if row["status"] == "refunded" and row["amount_total"] is not None:
        return int(row["amount_total"])
    return None


def _changed_at(changed: Decimal | int | None, read: Decimal | int) -> datetime:
    """The last instant of the second ``changed`` (whole seconds), or ``read`` if sooner."""
    read_us = int(Decimal(read) * 1_000_000)
    if changed is None:
        return _EPOCH + timedelta(microseconds=read_us)
    last_ms_us = (int(Decimal(changed)) + 1) * 1_000_000 - 1_000
    return _EPOCH + timedelta(microseconds=min(last_ms_us, read_us))
