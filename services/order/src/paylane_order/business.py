"""Business orders: the backend sells anything, for any amount (``POST /orders`` with
``amount_fen`` and ``description`` instead of ``package_type``; docs/order-api.md,
"Business orders").

Such an order is ``package_type`` ``free`` in the shared table (it changes no plan: the
entitlement service records its ``order.paid`` and grants nothing) and carries its
``description``, which paylane writes on no other order: that pair is what marks it
(:func:`is_business`). The payment gate holds its payment to the order's own amount,
never to a catalog price; its effect is the backend's to report (fulfilment.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from paylane_common.contract.catalog import Package
from paylane_common.storage.rows import PackageType

#: ``payment_orders.package_type`` of a business order: the plan it raises a user to
#: (none: ``free`` is the lowest).
BUSINESS_PACKAGE: PackageType = "free"
#: WeChat Pay's ``amount.total`` is a signed 32-bit integer of fen.
MAX_TOTAL_FEN = 2**31 - 1
#: WeChat Pay's ``description``: at most 127 bytes (UTF-8).
DESCRIPTION_MAX_BYTES = 127
#: WeChat Pay's ``attach``: at most 128 characters.
ATTACH_MAX = 128
#: ``out_trade_no`` as WeChat Pay takes it: 6 to 32 of ``[0-9A-Za-z_-|*]``.
OUT_TRADE_NO_PATTERN = r"^[0-9A-Za-z_\-|*]{6,32}$"
#: ``payment_orders.external_id`` (VARCHAR(64)): printable ASCII, no spaces.
EXTERNAL_ID_PATTERN = r"^[\x21-\x7e]{1,64}$"


class Marked(TypedDict):
    """What tells a business order: a ``payment_orders`` row with these columns."""

    package_type: PackageType
    description: str | None


def is_business(order: Marked) -> bool:
    return order["package_type"] == BUSINESS_PACKAGE and order["description"] is not None


@dataclass(frozen=True)
class BusinessTerms:
    """What the backend says of a business order besides its amount and user."""

    description: str
    #: The backend's own id of the order: a second POST with it is the same order.
    external_id: str | None = None
    #: Handed to WeChat Pay as ``attach`` (it comes back in the payment), stored.
    attach: str | None = None
    #: The caller's own order number, else paylane makes one.
    out_trade_no: str | None = None
    #: How long it stays payable, else ``ORDER_TTL_S``.
    expires_in_s: int | None = None


def business_package(description: str, amount_fen: int) -> Package:
    """A business order as the placement code sees a package: its price and description,
    granting nothing."""
    return Package(
        name=BUSINESS_PACKAGE,
        description=description,
        price_fen=amount_fen,
        payment_status="free",
        regenerate_grant=0,
    )
