"""Server-side package catalog: prices (fen) and what each package grants.

The defaults are the existing system's prices (docs/adoption.md: basic 0.01, premium 29.90
yuan). A package's name is stored in ``payment_orders.package_type``, an ENUM of the shared
schema, so the catalog can price ``basic`` and ``premium`` but not invent packages."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from paylane_common.contract.money import yuan

PaymentStatus = Literal["free", "basic", "premium"]
#: ``users.payment_status`` values, lowest first.
PLANS: tuple[PaymentStatus, ...] = ("free", "basic", "premium")
STATUS_RANK: dict[str, int] = {plan: rank for rank, plan in enumerate(PLANS)}
# What the shared schema lets an order buy (payment_orders.package_type, less "free").
PACKAGE_TYPES = ("basic", "premium")


def best_plan(*plans: PaymentStatus) -> PaymentStatus:
    """The highest of ``plans`` (``users.payment_status`` values): a plan only rises."""
    return max(plans, key=STATUS_RANK.__getitem__)


class Package(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    price_fen: int = Field(gt=0)
    payment_status: PaymentStatus
    regenerate_grant: int = Field(ge=0)

    @property
    def price_yuan(self) -> Decimal:
        return yuan(self.price_fen)


DEFAULT_CATALOG: dict[str, Package] = {
    "basic": Package(
        name="basic",
        description="paylane basic",
        price_fen=1,
        payment_status="basic",
        regenerate_grant=20,
    ),
    "premium": Package(
        name="premium",
        description="paylane premium",
        price_fen=2990,
        payment_status="premium",
        regenerate_grant=100,
    ),
}


def parse_catalog(raw: str | None) -> dict[str, Package]:
    """``PACKAGE_CATALOG``: a JSON object ``{name: {price_fen, payment_status, ...}}``."""
    if not raw:
        return dict(DEFAULT_CATALOG)
    data = json.loads(raw)
    if not isinstance(data, dict) or not data:
        raise ValueError("must be a non-empty JSON object of packages")
    unknown = sorted(set(data) - set(PACKAGE_TYPES))
    if unknown:
        raise ValueError(
            f"unknown package {', '.join(unknown)}: payment_orders.package_type accepts "
            + " and ".join(PACKAGE_TYPES)
        )
    return {
        name: Package.model_validate({"name": name, "description": name, **spec})
        for name, spec in data.items()
    }
