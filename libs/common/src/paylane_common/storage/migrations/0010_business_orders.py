"""Business orders and their fulfilment (``payment_orders.description``, ``external_id``,
``attach``, ``fulfilment_status``, ``fulfilment_detail``, ``fulfilled_at`` and two
indexes): nullable columns, each added only when missing. The other writers' inserts name
their columns and leave them NULL."""

from typing import Any

from yoyo import step

from paylane_common.storage.schema import BUSINESS_ORDERS, ensure

__depends__ = {"0009_payment_log_kind"}


def add_what_is_missing(conn: Any) -> None:
    ensure(conn.cursor(), *BUSINESS_ORDERS)


steps = [step(add_what_is_missing)]
