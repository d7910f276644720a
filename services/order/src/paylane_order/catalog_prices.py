"""The catalog's prices over time (table ``catalog_prices``, migration 0005).

A payment grants its package only if it paid a price the package had around the time
the order was made (paylane_order.gate). The cloud function prices orders from
``/prices/current`` and caches the answer for five minutes (docs/adoption.md), so a price
that changed a moment ago still counts for a while: :data:`PRICE_GRACE_S`.

Every order process records its catalog when it starts (:func:`record`): a package whose
price differs from the one in force closes that one's row and opens its own. During a
rollout that changes a price, each replica still accepts its own catalog's price as well
(``Gate.catalog``), so both count until the last old replica stops.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiomysql
import structlog

from paylane_common.contract.catalog import Package
from paylane_common.storage.db import placeholders, transaction

log = structlog.get_logger(__name__)

#: How long a replaced price still counts for orders made after it was replaced.
PRICE_GRACE_S = 300


@dataclass(frozen=True)
class PricePeriod:
    package_type: str
    price_fen: int
    valid_from: datetime
    #: None: in force.
    valid_until: datetime | None


async def record(pool: aiomysql.Pool, catalog: Mapping[str, Package]) -> None:
    """Put ``catalog``'s prices in force; idempotent (a price already in force stays as
    it is, with the moment it started)."""
    async with transaction(pool) as cur:
        for name, package in sorted(catalog.items()):
            await cur.execute(
                "UPDATE catalog_prices SET valid_until = NOW(6)"
                " WHERE package_type = %s AND price_fen <> %s AND valid_until IS NULL",
                (name, package.price_fen),
            )
            if cur.rowcount:
                log.warning("catalog_price_changed", package=name, price_fen=package.price_fen)
            await cur.execute(
                "INSERT INTO catalog_prices (package_type, price_fen)"
                " SELECT %s, %s FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM catalog_prices"
                " WHERE package_type = %s AND price_fen = %s AND valid_until IS NULL)",
                (name, package.price_fen, name, package.price_fen),
            )


async def load(cur: aiomysql.Cursor, package_types: Iterable[str]) -> list[PricePeriod]:
    """The recorded periods of these packages (a handful of rows each)."""
    names = sorted(set(package_types))
    if not names:
        return []
    await cur.execute(
        "SELECT package_type, price_fen, valid_from, valid_until FROM catalog_prices"
        f" WHERE package_type IN ({placeholders(len(names))})",
        names,
    )
    return [PricePeriod(**row) for row in await cur.fetchall()]


def prices_at(periods: Iterable[PricePeriod], package_type: str, made_at: datetime) -> set[int]:
    """The prices of ``package_type`` that count for an order made at ``made_at``: those
    in force at some moment since :data:`PRICE_GRACE_S` before it. (A price that came in
    later counts too: the amount must also be the order's own, and a clock of the
    cloud function's a little ahead of the database's must not refuse a payment.)"""
    earliest = made_at - timedelta(seconds=PRICE_GRACE_S)
    return {
        p.price_fen
        for p in periods
        if p.package_type == package_type and (p.valid_until is None or p.valid_until >= earliest)
    }
