"""The remedy of an ABNORMAL refund on the shared ``refunds`` table: four nullable columns,
each added only when missing (no existing column or row is touched)."""

from typing import Any

from yoyo import step

from paylane_common.storage.schema import REFUND_REMEDIES, ensure

__depends__ = {"0003_paylane_tables"}


def add_what_is_missing(conn: Any) -> None:
    ensure(conn.cursor(), *REFUND_REMEDIES)


steps = [step(add_what_is_missing)]
