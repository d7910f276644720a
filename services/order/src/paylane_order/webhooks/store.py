"""The webhook tables (migration 0011): endpoints, deliveries, attempts. Every statement
the order service runs on them is here (deploy/mysql/grants.sql grants exactly these)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import aiomysql
import structlog

from paylane_common.storage import db

from . import signing
from .types import WEBHOOK_EVENTS

log = structlog.get_logger(__name__)

Source = Literal["config", "api"]
#: A delivery's outcome after an attempt (see :meth:`WebhookStore.record`).
Settle = Literal["succeeded", "retry", "failed", "disable"]

_ENDPOINT_COLUMNS = (
    "id, url, source, events, description, status, disabled_reason, disabled_at,"
    " failing_since, created_at"
)


def config_endpoint_id(url: str) -> str:
    """The id of a ``WEBHOOK_URLS`` endpoint: the same for the same URL on every replica."""
    return "cfg_" + hashlib.sha256(url.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    source: Source
    events: tuple[str, ...]
    description: str
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> Endpoint:
        return cls(
            id=row["id"],
            url=row["url"],
            source=row["source"],
            events=tuple(row["events"].split()),
            description=row["description"],
            status=row["status"],
            disabled_reason=row["disabled_reason"],
            disabled_at=row["disabled_at"],
            failing_since=row["failing_since"],
            created_at=row["created_at"],
        )


@dataclass(frozen=True)
class Delivery:
    """A claimed delivery: what to send, where, with which secret (None: the
    configuration's)."""

    id: int
    event_id: str
    event_type: str
    endpoint_id: str
    url: str
    secret: str | None
    payload: bytes
    step: int
    failing_since: datetime | None


class WebhookStore:
    def __init__(self, pool: aiomysql.Pool):
        self.pool = pool
        #: Called after every change of the endpoints has committed (the order service's
        #: bindings follow them, paylane_order.bindings); what it raises is the caller's.
        self.on_change: Callable[[], Awaitable[object]] | None = None

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    # --- endpoints ---------------------------------------------------------------------

    async def sync_config(self, urls: Sequence[str]) -> None:
        """The ``WEBHOOK_URLS`` as endpoint rows (every type subscribed); a URL no longer
        configured is marked deleted. A disabled one stays disabled."""
        events = " ".join(WEBHOOK_EVENTS)
        ids = [config_endpoint_id(url) for url in urls]
        async with db.transaction(self.pool) as cur:
            for url, endpoint_id in zip(urls, ids, strict=True):
                await cur.execute(
                    "INSERT INTO webhook_endpoints (id, url, source, events, created_at)"
                    " VALUES (%s, %s, 'config', %s, UTC_TIMESTAMP(6))"
                    " ON DUPLICATE KEY UPDATE events = VALUES(events), deleted_at = NULL",
                    (endpoint_id, url, events),
                )
            keep = f" AND id NOT IN ({db.placeholders(len(ids))})" if ids else ""
            await cur.execute(
                "UPDATE webhook_endpoints SET deleted_at = UTC_TIMESTAMP(6)"
                f" WHERE source = 'config' AND deleted_at IS NULL{keep}",
                ids,
            )
        await self._changed()

    async def create(
        self, url: str, events: Sequence[str], description: str
    ) -> tuple[Endpoint, str]:
        """A new API endpoint and its secret (returned this once)."""
        endpoint_id = "ep_" + secrets.token_hex(12)
        secret = signing.new_secret()
        async with db.transaction(self.pool) as cur:
            await cur.execute(
                "INSERT INTO webhook_endpoints"
                " (id, url, source, events, secret, description, created_at)"
                " VALUES (%s, %s, 'api', %s, %s, %s, UTC_TIMESTAMP(6))",
                (endpoint_id, url, " ".join(events), secret, description),
            )
            await cur.execute(
                f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = %s",
                (endpoint_id,),
            )
            row = await cur.fetchone()
        try:
            await self._changed()
        except BaseException as exc:
            # Not subscribed to its events: it is not made (its secret was never shown),
            # nor is anything sent to it that came meanwhile.
            try:
                async with db.transaction(self.pool) as cur:
                    await cur.execute(
                        "UPDATE webhook_endpoints SET deleted_at = UTC_TIMESTAMP(6) WHERE id = %s",
                        (endpoint_id,),
                    )
                    await _fail_pending(cur, endpoint_id, "endpoint not made")
            except Exception as undo:
                log.error(
                    "webhook_endpoint_not_undone",
                    alert=True,
                    endpoint_id=endpoint_id,
                    error=repr(undo),
                    because=repr(exc),
                )
            raise
        return Endpoint.of(row), secret

    async def endpoints(self) -> list[Endpoint]:
        """Every endpoint not deleted, the configuration's first, then oldest first."""
        async with db.transaction(self.pool) as cur:
            await cur.execute(
                f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE deleted_at IS NULL"
                " ORDER BY source = 'api', created_at, id"
            )
            return [Endpoint.of(row) for row in await cur.fetchall()]

    async def subscribed_types(self) -> set[str]:
        """The event types some enabled, not deleted endpoint subscribes to."""
        async with db.transaction(self.pool) as cur:
            await cur.execute(
                "SELECT events FROM webhook_endpoints"
                " WHERE status = 'enabled' AND deleted_at IS NULL"
            )
            return {t for row in await cur.fetchall() for t in row["events"].split()}

    async def delete(self, endpoint_id: str) -> Source | None:
        """Mark an endpoint deleted and fail its pending deliveries. Returns its source
        (a ``config`` one is not deleted: it is the configuration's), None if unknown."""
        async with db.transaction(self.pool) as cur:
            await cur.execute(
                "SELECT source FROM webhook_endpoints"
                " WHERE id = %s AND deleted_at IS NULL FOR UPDATE",
                (endpoint_id,),
            )
            row = await cur.fetchone()
            if row is None or row["source"] == "config":
                return None if row is None else "config"
            await cur.execute(
                "UPDATE webhook_endpoints SET deleted_at = UTC_TIMESTAMP(6) WHERE id = %s",
                (endpoint_id,),
            )
            await _fail_pending(cur, endpoint_id, "endpoint deleted")
        try:
            await self._changed()
        except Exception as exc:  # deleted all the same: the bindings' next pass narrows
            log.warning("webhook_bindings_not_narrowed", endpoint_id=endpoint_id, error=str(exc))
        return "api"

    async def enable(self, endpoint_id: str) -> bool:
        """Enable a disabled endpoint again (its failures forgotten)."""
        async with db.transaction(self.pool) as cur:
            await cur.execute(
                "UPDATE webhook_endpoints SET status = 'enabled', disabled_reason = NULL,"
                " disabled_at = NULL, failing_since = NULL"
                " WHERE id = %s AND deleted_at IS NULL",
                (endpoint_id,),
            )
            enabled = bool(cur.rowcount)
        if enabled:
            await self._changed()
        return enabled

    # --- deliveries --------------------------------------------------------------------

    async def ingest(self, event_id: str, event_type: str, payload: bytes) -> int:
        """One pending delivery per enabled endpoint subscribed to ``event_type``, due
        now; an event seen before adds nothing. Returns the deliveries added."""
        async with db.transaction(self.pool) as cur:
            return await self.ingest_many(cur, [(event_id, event_type, payload)])

    async def ingest_many(
        self, cur: aiomysql.Cursor, events: Sequence[tuple[str, str, bytes]]
    ) -> int:
        """:meth:`ingest` for several events ``(event_id, event_type, payload)`` with
        ``cur`` (the caller's transaction): the endpoints read once, the deliveries
        written in one statement. Returns the deliveries added."""
        await cur.execute(
            "SELECT id, events FROM webhook_endpoints"
            " WHERE status = 'enabled' AND deleted_at IS NULL"
        )
        endpoints = [(r["id"], r["events"].split()) for r in await cur.fetchall()]
        values = [
            (event_id, event_type, target, payload.decode())
            for event_id, event_type, payload in events
            for target, subscribed in endpoints
            if event_type in subscribed
        ]
        if not values:
            return 0
        await cur.executemany(
            "INSERT INTO webhook_deliveries (event_id, event_type, endpoint_id,"
            " payload, next_attempt_at, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6),"
            " UTC_TIMESTAMP(6))"
            # Seen before: nothing changes (no IGNORE, which would hide other errors).
            " ON DUPLICATE KEY UPDATE event_id = event_id",
            values,
        )
        return int(cur.rowcount)

    async def due_endpoints(self, limit: int = 200) -> list[str]:
        """Endpoints with a delivery due now (unlocked read: a hint for :meth:`claim`)."""
        async with db.transaction(self.pool) as cur:
            await cur.execute(
                "SELECT DISTINCT endpoint_id FROM webhook_deliveries"
                " WHERE status = 'pending' AND next_attempt_at <= UTC_TIMESTAMP(6) LIMIT %s",
                (limit,),
            )
            return [r["endpoint_id"] for r in await cur.fetchall()]

    async def claim(self, endpoint_id: str, limit: int, lease_s: float) -> list[Delivery]:
        """Up to ``limit`` due deliveries of one endpoint, taken for ``lease_s``: rows
        another replica holds are skipped (``SKIP LOCKED``), and a claimed row is due
        again only once its lease is over (its sender died)."""
        async with db.transaction(self.pool) as cur:
            await cur.execute(
                "SELECT url, secret, failing_since FROM webhook_endpoints"
                " WHERE id = %s AND status = 'enabled' AND deleted_at IS NULL",
                (endpoint_id,),
            )
            endpoint = await cur.fetchone()
            if endpoint is None:
                return []
            # The deliveries' rows only: MariaDB has no FOR UPDATE OF, and locking the
            # endpoint's row too would serialise the replicas on it.
            await cur.execute(
                "SELECT id, event_id, event_type, payload, step FROM webhook_deliveries"
                " WHERE endpoint_id = %s AND status = 'pending'"
                " AND next_attempt_at <= UTC_TIMESTAMP(6)"
                " ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                (endpoint_id, limit),
            )
            rows = await cur.fetchall()
            if rows:
                ids = [r["id"] for r in rows]
                await cur.execute(
                    "UPDATE webhook_deliveries SET next_attempt_at ="
                    " UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND, updated_at = UTC_TIMESTAMP(6)"
                    f" WHERE id IN ({db.placeholders(len(ids))})",
                    (round(lease_s * 1_000_000), *ids),
                )
        return [
            Delivery(
                id=r["id"],
                event_id=r["event_id"],
                event_type=r["event_type"],
                endpoint_id=endpoint_id,
                url=endpoint["url"],
                secret=endpoint["secret"],
                payload=r["payload"].encode(),
                step=r["step"],
                failing_since=endpoint["failing_since"],
            )
            for r in rows
        ]

    async def record(
        self,
        delivery: Delivery,
        *,
        status: int | None,
        latency_ms: int,
        excerpt: str | None,
        error: str | None,
        settle: Settle,
        retry_in_s: float = 0.0,
        reason: str | None = None,
    ) -> None:
        """One attempt in the log and its consequence, in one transaction: ``succeeded``
        (the endpoint's failures forgotten), ``retry`` in ``retry_in_s``, ``failed`` (the
        schedule ran out), ``disable`` (the endpoint disabled for ``reason``, its pending
        deliveries failed)."""
        async with db.transaction(self.pool) as cur:
            # The endpoint's row first: the attempts of one endpoint settle one at a time
            # (a disable fails the endpoint's other pending rows, which their own
            # settling would otherwise lock in the other order).
            await cur.execute(
                "SELECT status, deleted_at FROM webhook_endpoints WHERE id = %s FOR UPDATE",
                (delivery.endpoint_id,),
            )
            endpoint = await cur.fetchone()
            gone = endpoint is None or endpoint["status"] != "enabled" or endpoint["deleted_at"]
            if gone and settle in ("retry", "disable"):
                settle, reason = "failed", "endpoint disabled or deleted"
            await cur.execute(
                "INSERT INTO webhook_attempts (delivery_id, attempted_at, status, latency_ms,"
                " response_excerpt, error) VALUES (%s, UTC_TIMESTAMP(6), %s, %s, %s, %s)",
                (delivery.id, status, latency_ms, excerpt, error and error[:255]),
            )
            new_status = {"succeeded": "succeeded", "retry": "pending"}.get(settle, "failed")
            await cur.execute(
                "UPDATE webhook_deliveries SET status = %s, attempts = attempts + 1,"
                " step = step + 1, last_status = %s, last_error = %s,"
                " next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND,"
                " updated_at = UTC_TIMESTAMP(6) WHERE id = %s",
                (
                    new_status,
                    status,
                    (error or reason or "")[:255] or None,
                    round(retry_in_s * 1_000_000),
                    delivery.id,
                ),
            )
            if settle == "succeeded":
                await cur.execute(
                    "UPDATE webhook_endpoints SET failing_since = NULL"
                    " WHERE id = %s AND failing_since IS NOT NULL",
                    (delivery.endpoint_id,),
                )
            elif settle == "disable":
                await cur.execute(
                    "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = %s,"
                    " disabled_at = UTC_TIMESTAMP(6) WHERE id = %s",
                    ((reason or "disabled")[:255], delivery.endpoint_id),
                )
                await _fail_pending(cur, delivery.endpoint_id, f"endpoint disabled: {reason}")
            else:
                await cur.execute(
                    "UPDATE webhook_endpoints SET failing_since = UTC_TIMESTAMP(6)"
                    " WHERE id = %s AND failing_since IS NULL",
                    (delivery.endpoint_id,),
                )

    async def failing_for_s(self, endpoint_id: str) -> float:
        """Seconds since the endpoint's first failure since its last success (0: none)."""
        async with db.transaction(self.pool) as cur:
            await cur.execute(
                "SELECT TIMESTAMPDIFF(MICROSECOND, failing_since, UTC_TIMESTAMP(6)) AS us"
                " FROM webhook_endpoints WHERE id = %s",
                (endpoint_id,),
            )
            row = await cur.fetchone()
        return 0.0 if row is None or row["us"] is None else row["us"] / 1_000_000

    # --- the operators' commands -------------------------------------------------------

    async def deliveries(self, *, failed: bool = False, limit: int = 50) -> list[dict[str, Any]]:
        """The latest deliveries (``failed``: only those), newest first, each with its
        endpoint's URL and its last attempt's latency and answer."""
        where = "WHERE d.status = 'failed'" if failed else ""
        async with db.transaction(self.pool) as cur:
            await cur.execute(
                "SELECT d.id, d.event_id, d.event_type, d.endpoint_id, e.url, d.status,"
                " d.attempts, d.last_status, d.last_error, d.next_attempt_at, d.created_at,"
                " (SELECT a.latency_ms FROM webhook_attempts a WHERE a.delivery_id = d.id"
                "  ORDER BY a.attempted_at DESC, a.id DESC LIMIT 1) AS latency_ms,"
                " (SELECT a.response_excerpt FROM webhook_attempts a"
                "  WHERE a.delivery_id = d.id ORDER BY a.attempted_at DESC, a.id DESC LIMIT 1)"
                "  AS response_excerpt"
                " FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
                f" {where} ORDER BY d.created_at DESC, d.id DESC LIMIT %s",
                (limit,),
            )
            return list(await cur.fetchall())

    async def attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        async with db.transaction(self.pool) as cur:
            await cur.execute(
                "SELECT attempted_at, status, latency_ms, response_excerpt, error"
                " FROM webhook_attempts WHERE delivery_id = %s ORDER BY attempted_at, id",
                (delivery_id,),
            )
            return list(await cur.fetchall())

    async def resend(self, delivery_id: int) -> str:
        """Send a delivery again now, its schedule from the start: ``resent``,
        ``unknown``, or ``endpoint_disabled`` (enable it first)."""
        async with db.transaction(self.pool) as cur:
            await cur.execute(
                "SELECT e.status, e.deleted_at FROM webhook_deliveries d"
                " JOIN webhook_endpoints e ON e.id = d.endpoint_id WHERE d.id = %s",
                (delivery_id,),
            )
            row = await cur.fetchone()
            if row is None:
                return "unknown"
            if row["status"] != "enabled" or row["deleted_at"] is not None:
                return "endpoint_disabled"
            await cur.execute(
                "UPDATE webhook_deliveries SET status = 'pending', step = 0,"
                " next_attempt_at = UTC_TIMESTAMP(6), updated_at = UTC_TIMESTAMP(6)"
                " WHERE id = %s",
                (delivery_id,),
            )
        return "resent"

    async def recover(self, since: datetime) -> int:
        """Every ``failed`` delivery made since ``since`` (UTC) whose endpoint is enabled,
        sent again now from the start of its schedule. Returns how many."""
        async with db.transaction(self.pool) as cur:
            await cur.execute(
                "UPDATE webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
                " SET d.status = 'pending', d.step = 0, d.next_attempt_at = UTC_TIMESTAMP(6),"
                " d.updated_at = UTC_TIMESTAMP(6)"
                " WHERE d.status = 'failed' AND d.created_at >= %s"
                " AND e.status = 'enabled' AND e.deleted_at IS NULL",
                (since,),
            )
            return int(cur.rowcount)


async def _fail_pending(cur: aiomysql.Cursor, endpoint_id: str, reason: str) -> None:
    await cur.execute(
        "UPDATE webhook_deliveries SET status = 'failed', last_error = %s,"
        " updated_at = UTC_TIMESTAMP(6) WHERE endpoint_id = %s AND status = 'pending'",
        (reason[:255], endpoint_id),
    )
