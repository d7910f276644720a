"""The order list's keyset indexes (``GET /orders``, ``GET /orders/export.csv``): two
indexes of ``payment_orders``, each added only when missing (no column or row touched)."""

from typing import Any

from yoyo import step

from paylane_common.storage.schema import ORDER_LIST_INDEXES, ensure

__depends__ = {"0009_payment_log_kind"}


def add_what_is_missing(conn: Any) -> None:
    ensure(conn.cursor(), *ORDER_LIST_INDEXES)


steps = [step(add_what_is_missing)]
