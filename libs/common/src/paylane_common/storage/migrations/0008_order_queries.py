"""When the order API last asked WeChat Pay about a pending order for its client
(``payment_orders.queried_at``): one nullable column, added only when missing."""

from typing import Any

from yoyo import step

from paylane_common.storage.schema import ORDER_QUERIES, ensure

__depends__ = {"0007_user_sessions"}


def add_what_is_missing(conn: Any) -> None:
    ensure(conn.cursor(), *ORDER_QUERIES)


steps = [step(add_what_is_missing)]
