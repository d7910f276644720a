"""paylane's kind of a ``payment_logs`` row, beside the existing system's ``type``: one
nullable column and its index, each added only when missing (no existing column or row is
touched; the other writers' inserts name their columns and leave it NULL)."""

from typing import Any

from yoyo import step

from paylane_common.storage.schema import PAYMENT_LOG_KIND, ensure

__depends__ = {"0008_order_queries"}


def add_what_is_missing(conn: Any) -> None:
    ensure(conn.cursor(), *PAYMENT_LOG_KIND)


steps = [step(add_what_is_missing)]
