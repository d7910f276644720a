"""``order.paid`` → the user's plan rises and regenerations grow, once per order;
``order.refunded`` (full) → exactly what that order granted is taken back
(docs/database.md, "The entitlement rule");
``order.revoked`` (the order went to ``needs_review`` after its grant) → the same.
A business order (package ``free``: the backend sold something else, docs/order-api.md)
changes no plan: its events are taken once (the inbox records them) and grant or revoke
nothing, the outcome ``no_plan_change``.

The ledger ``entitlement_grants`` (one row per order) makes "one order grants once"
hold even when an ``order.paid`` arrives under another event id (a replay, a republish).
After a full refund the plan is recomputed from the ledger: the best of the plan before
the user's first grant and the packages of the orders still granted; regenerations lose
what the order granted, never below zero. A full refund that arrives before its
``order.paid`` leaves a revoked row that granted nothing, so the late grant is a no-op.

``users`` is the shared table (docs/database.md): its id is a string, and its
``payment_status`` and ``regenerate_count`` have defaults but may be NULL in a row another
writer made. A NULL plan is read as ``free`` and a NULL count as 0, so such a user is
granted (and revoked) like any other and the row ends with real values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypedDict

import aiomysql
import structlog

from paylane_common.contract import events
from paylane_common.contract.catalog import PLANS, Package, PaymentStatus, best_plan
from paylane_common.contract.events import (
    Entitlement,
    Envelope,
    OrderPaid,
    OrderRefunded,
    OrderRevoked,
    PaidOrder,
    RevokedFor,
    make_event,
)
from paylane_common.delivery import inbox, outbox
from paylane_common.delivery.batching import BatchItem, first_deliveries
from paylane_common.delivery.consumer import Reject, Retry
from paylane_common.storage.db import is_duplicate_key, placeholders, rows_table, transaction
from paylane_common.storage.rows import fetch_all, fetch_one

from . import INBOX_CONSUMER, OUTBOX_PRODUCER

log = structlog.get_logger(__name__)

#: The package of a business order: it raises no plan, so its events change nothing.
NO_PLAN_PACKAGE = "free"
#: The outcome of such an event (counted by the consumer's metric like any other).
NO_PLAN_CHANGE = "no_plan_change"
#: The plans in rank order, as SQL literals: ``'free', 'basic', 'premium'``.
_PLANS_SQL = ", ".join(f"'{plan}'" for plan in PLANS)
_RANK = f"FIELD({{col}}, {_PLANS_SQL})"
# The user's plan and regenerations, a NULL (a row another writer made) read as free / 0.
_USER_STATE = (
    "COALESCE(payment_status, 'free') AS payment_status,"
    " COALESCE(regenerate_count, 0) AS regenerate_count"
)


class UserState(TypedDict):
    """A user's plan and regenerations (``_USER_STATE``: never NULL)."""

    payment_status: PaymentStatus
    regenerate_count: int


class _UserStateOf(UserState):
    id: str


class _Grant(TypedDict):
    """An order's row of the ledger, as a revocation reads it."""

    user_id: str
    regenerate_granted: int
    revoked_at: datetime | None


class _Granted(TypedDict):
    out_trade_no: str


class EntitlementApplier:
    def __init__(
        self,
        pool: aiomysql.Pool,
        catalog: dict[str, Package],
        on_commit: Callable[[], None] | None = None,
    ):
        self.pool = pool
        self._catalog = catalog
        self._on_commit = on_commit

    async def __call__(self, envelope: Envelope, data: Any) -> str:
        async with transaction(self.pool) as cur:
            if not await inbox.claim(cur, INBOX_CONSUMER, envelope.event_id):
                return "duplicate"
            if (
                isinstance(data, OrderPaid | OrderRefunded | OrderRevoked)
                and data.package_type == NO_PLAN_PACKAGE
            ):
                log.info("no_plan_change", event_type=envelope.type, user_id=data.user_id)
                return NO_PLAN_CHANGE
            if isinstance(data, OrderPaid):
                outcome = await self._grant(cur, envelope, data)
            elif isinstance(data, OrderRefunded):
                outcome = await self._revoke(cur, envelope, data)
            elif isinstance(data, OrderRevoked):
                log.warning("order_under_review_revoking", reason=data.reason)
                whole = OrderRefunded(
                    out_trade_no=data.out_trade_no,
                    user_id=data.user_id,
                    package_type=data.package_type,
                    amount_refund=0,
                    full=True,
                )
                outcome = await self._revoke(cur, envelope, whole, revoked_for="review")
            else:
                raise Reject(f"{envelope.type} is not for the entitlement service")
        self.after_commit([outcome])
        return outcome

    def after_commit(self, outcomes: Sequence[str]) -> None:
        if self._on_commit is not None and ("granted" in outcomes or "revoked" in outcomes):
            self._on_commit()

    async def apply_batch(
        self, cur: aiomysql.Cursor, items: Sequence[BatchItem]
    ) -> list[str | None]:
        """Many grants in set-based statements (batching.py): first deliveries of
        ``order.paid`` for known users and packages whose order has not granted yet.
        Revocations and everything else are left to ``__call__``, one by one, and so is
        every grant that arrived after a refund of the same user: applied in arrival order,
        the user's events end as they would one by one."""
        outcomes: list[str | None] = [None] * len(items)
        fresh = await first_deliveries(cur, INBOX_CONSUMER, items, outcomes, OrderPaid)
        refunded_first = _after_a_refund(items)
        fresh = [
            (i, it)
            for i, it in fresh
            if it.data.package_type in self._catalog and i not in refunded_first
        ]
        if not fresh:
            return outcomes
        nos = sorted({it.data.out_trade_no for _, it in fresh})
        await cur.execute(
            "SELECT out_trade_no FROM entitlement_grants"
            f" WHERE out_trade_no IN ({placeholders(len(nos))})",
            nos,
        )
        granted = {row["out_trade_no"] for row in await fetch_all(cur, _Granted)}
        # Users locked in id order, as one grant would lock its user first.
        user_ids = sorted({it.data.user_id for _, it in fresh})
        await cur.execute(
            f"SELECT id, {_USER_STATE} FROM users"
            f" WHERE id IN ({placeholders(len(user_ids))}) ORDER BY id FOR UPDATE",
            user_ids,
        )
        users = {row["id"]: row for row in await fetch_all(cur, _UserStateOf)}
        grants, staged, inbox_ids = [], [], []
        for i, it in fresh:
            data: OrderPaid = it.data
            user = users.get(data.user_id)
            if user is None or data.out_trade_no in granted:
                continue  # unknown user (retried) or already granted: one by one
            granted.add(data.out_trade_no)
            package = self._catalog[data.package_type]
            before = user["payment_status"]
            after = after_grant(user, package)
            user["payment_status"] = after["payment_status"]
            user["regenerate_count"] = after["regenerate_count"]
            grants.append(
                (
                    data.out_trade_no,
                    data.user_id,
                    package.name,
                    package.regenerate_grant,
                    before,
                    user["payment_status"],
                )
            )
            inbox_ids.append(it.envelope.event_id)
            it.bind()
            staged.append(outbox.Staged(_granted(it.envelope, data, user)))
            log.info("entitlement_granted", user_id=data.user_id, package=package.name)
            outcomes[i] = "granted"
        if not grants:
            return outcomes
        await inbox.claim_many(cur, INBOX_CONSUMER, inbox_ids)
        await cur.executemany(_GRANT_INSERT, grants)
        changed, params = rows_table(
            ("id", "payment_status", "regenerate_count"),
            [
                (uid, users[uid]["payment_status"], users[uid]["regenerate_count"])
                for uid in sorted({g[1] for g in grants})
            ],
        )
        await cur.execute(
            f"UPDATE users u JOIN ({changed}) v ON v.id = u.id"
            " SET u.payment_status = v.payment_status, u.regenerate_count = v.regenerate_count",
            params,
        )
        await outbox.add_many(cur, OUTBOX_PRODUCER, staged)
        return outcomes

    async def _grant(self, cur: aiomysql.Cursor, envelope: Envelope, data: OrderPaid) -> str:
        package = self._catalog.get(data.package_type)
        if package is None:
            raise Reject(f"package {data.package_type!r} is not in the catalog")
        # Lock the user first: concurrent grants for one user queue here instead of
        # deadlocking on a shared lock that a later UPDATE would have to upgrade.
        await cur.execute(
            f"SELECT {_USER_STATE} FROM users WHERE id = %s FOR UPDATE", (data.user_id,)
        )
        user = await fetch_one(cur, UserState)
        if user is None:
            raise Retry(f"unknown user {data.user_id}", max_attempts=4, delay_s=1.0)
        before = user["payment_status"]
        after = after_grant(user, package)
        try:
            await cur.execute(
                _GRANT_INSERT,
                (
                    data.out_trade_no,
                    data.user_id,
                    package.name,
                    package.regenerate_grant,
                    before,
                    after["payment_status"],
                ),
            )
        except Exception as exc:
            if is_duplicate_key(exc):
                log.info("grant_already_applied")
                return "duplicate"
            raise
        # The user row is locked since it was read: the counts cannot have moved.
        await cur.execute(
            "UPDATE users SET payment_status = %s, regenerate_count = %s WHERE id = %s",
            (after["payment_status"], after["regenerate_count"], data.user_id),
        )
        await self._emit(
            cur, events.ENTITLEMENT_GRANTED, data.user_id, data.out_trade_no, _paid(envelope, data)
        )
        log.info("entitlement_granted", user_id=data.user_id, package=package.name)
        return "granted"

    async def _revoke(
        self,
        cur: aiomysql.Cursor,
        envelope: Envelope,
        data: OrderRefunded,
        revoked_for: RevokedFor = "refund",
    ) -> str:
        if not data.full:
            log.info("partial_refund_keeps_entitlement")
            return "partial_refund"
        # Same lock order as a grant (user row first), so the two never deadlock, and a
        # grant of this order waits here instead of racing the tombstone below.
        await cur.execute(
            f"SELECT {_USER_STATE} FROM users WHERE id = %s FOR UPDATE", (data.user_id,)
        )
        user = await fetch_one(cur, UserState)
        if user is None:
            raise Retry(f"unknown user {data.user_id}", max_attempts=4, delay_s=1.0)
        await cur.execute(
            "SELECT user_id, regenerate_granted, revoked_at FROM entitlement_grants"
            " WHERE out_trade_no = %s FOR UPDATE",
            (data.out_trade_no,),
        )
        grant = await fetch_one(cur, _Grant)
        if grant is None:
            # Refunded before its order.paid was applied (a replayed DLQ, relays racing):
            # a revoked row that granted nothing, so the late order.paid is a duplicate.
            await cur.execute(
                _TOMBSTONE_INSERT,
                (
                    data.out_trade_no,
                    data.user_id,
                    data.package_type,
                    user["payment_status"],
                    user["payment_status"],
                ),
            )
            log.warning("refund_before_grant_recorded", user_id=data.user_id)
            return "revoked_before_grant"
        if grant["revoked_at"] is not None:
            log.info("nothing_to_revoke")
            return "duplicate"
        await cur.execute(
            "UPDATE entitlement_grants SET revoked_at = NOW(6) WHERE out_trade_no = %s",
            (data.out_trade_no,),
        )
        status = await self._plan(cur, grant["user_id"])
        # What was used is not clawed back: the count never goes below zero.
        await cur.execute(
            "UPDATE users SET payment_status = %s,"
            " regenerate_count = GREATEST(COALESCE(regenerate_count, 0) - %s, 0) WHERE id = %s",
            (status, grant["regenerate_granted"], grant["user_id"]),
        )
        await self._emit(
            cur,
            events.ENTITLEMENT_REVOKED,
            grant["user_id"],
            data.out_trade_no,
            revoked_for=revoked_for,
        )
        log.info("entitlement_revoked", user_id=grant["user_id"], payment_status=status)
        return "revoked"

    async def _plan(self, cur: aiomysql.Cursor, user_id: str) -> PaymentStatus:
        """The plan the user's ledger gives: the best of the plan before their first grant
        and the packages of the orders still granted.

        Plans only ever fall back to the plan before the first grant, so that plan is
        the lowest ``status_before`` of the user's rows (robust to grants of one batch
        sharing a ``granted_at``)."""
        await cur.execute(
            f"SELECT ELT(MIN({_RANK.format(col='status_before')}), {_PLANS_SQL})"
            " AS base FROM entitlement_grants WHERE user_id = %s",
            (user_id,),
        )
        plans: list[PaymentStatus] = [(await cur.fetchone())["base"] or "free"]
        await cur.execute(
            "SELECT package_type, status_after FROM entitlement_grants"
            " WHERE user_id = %s AND revoked_at IS NULL",
            (user_id,),
        )
        for row in await cur.fetchall():
            package = self._catalog.get(row["package_type"])
            # A package since removed from the catalog keeps what it gave (never lowers).
            plans.append(package.payment_status if package else row["status_after"])
        return best_plan(*plans)

    async def _emit(
        self,
        cur: aiomysql.Cursor,
        event_type: str,
        user_id: str,
        out_trade_no: str,
        paid: PaidOrder | None = None,
        revoked_for: RevokedFor | None = None,
    ) -> None:
        await cur.execute(f"SELECT {_USER_STATE} FROM users WHERE id = %s", (user_id,))
        user = await fetch_one(cur, UserState)
        assert user is not None  # locked (or read) earlier in this transaction
        data = Entitlement(
            user_id=user_id,
            out_trade_no=out_trade_no,
            payment_status=user["payment_status"],
            regenerate_count=user["regenerate_count"],
            paid=paid,
            revoked_for=revoked_for,
        )
        await outbox.add(cur, OUTBOX_PRODUCER, make_event(event_type, data))


_GRANT_INSERT = (
    "INSERT INTO entitlement_grants (out_trade_no, user_id, package_type,"
    " regenerate_granted, status_before, status_after) VALUES (%s, %s, %s, %s, %s, %s)"
)
_TOMBSTONE_INSERT = (
    "INSERT INTO entitlement_grants (out_trade_no, user_id, package_type,"
    " regenerate_granted, status_before, status_after, revoked_at)"
    " VALUES (%s, %s, %s, 0, %s, %s, NOW(6))"
)


def after_grant(user: UserState, package: Package) -> UserState:
    """The user's ``payment_status`` and ``regenerate_count`` once ``package`` is granted:
    the plan rises to the package's (never falls), the regenerations grow by its grant.
    A grant applied one by one and one of a batch both come here."""
    return {
        "payment_status": best_plan(user["payment_status"], package.payment_status),
        "regenerate_count": user["regenerate_count"] + package.regenerate_grant,
    }


def _after_a_refund(items: Sequence[BatchItem]) -> set[int]:
    """Indexes of the items that come after an ``order.refunded`` (or ``order.revoked``)
    of the same user."""
    refunded: set[str] = set()
    after: set[int] = set()
    for i, item in enumerate(items):
        user_id = getattr(item.data, "user_id", None)
        if user_id in refunded:
            after.add(i)
        if isinstance(item.data, (OrderRefunded, OrderRevoked)):
            refunded.add(item.data.user_id)
    return after


def _paid(envelope: Envelope, data: OrderPaid) -> PaidOrder:
    """What the client is pushed of the ``order.paid`` a grant answers."""
    return PaidOrder(
        event_id=envelope.event_id,
        occurred_at=envelope.occurred_at,
        generation_id=data.generation_id,
    )


def _granted(envelope: Envelope, data: OrderPaid, user: UserState) -> Envelope:
    """``entitlement.granted`` of a batch's grant, carrying its ``order.paid``."""
    return make_event(
        events.ENTITLEMENT_GRANTED,
        Entitlement(
            user_id=data.user_id,
            out_trade_no=data.out_trade_no,
            payment_status=user["payment_status"],
            regenerate_count=user["regenerate_count"],
            paid=_paid(envelope, data),
        ),
    )
