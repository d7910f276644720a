"""The pay parameters Cloud Hosting's open interface signed for a JSAPI order
(``payment_orders.pay_params``): one nullable column, added only when missing."""

from typing import Any

from yoyo import step

from paylane_common.storage.schema import CLOUDHOSTING_PAY_PARAMS, ensure

__depends__ = {"0013_order_list_indexes"}


def add_what_is_missing(conn: Any) -> None:
    ensure(conn.cursor(), *CLOUDHOSTING_PAY_PARAMS)


steps = [step(add_what_is_missing)]
