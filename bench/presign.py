"""Notifications signed ahead of time (in worker processes), so that the load generator
measures paylane, not RSA signing."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from paylane_common.wechatpay import load_private_key
from paylane_common.wechatpay.testing import signed_notification, transaction_resource

Request = tuple[dict[str, str], bytes]


def _sign(args: tuple[str, str, str, list[dict[str, Any]], int]) -> list[Request]:
    key_pem, apiv3_key, key_id, resources, timestamp = args
    key = load_private_key(key_pem)
    return [
        signed_notification(
            resource, apiv3_key=apiv3_key, signing_key=key, serial=key_id, timestamp=timestamp
        )
        for resource in resources
    ]


def transaction(appid: str, mchid: str, out_trade_no: str, amount: int) -> dict[str, Any]:
    """A paid NATIVE order (the bench's orders are NATIVE), with a new transaction id."""
    return transaction_resource(
        out_trade_no,
        amount,
        appid=appid,
        mchid=mchid,
        trade_type="NATIVE",
        openid="o-bench-payer",
    )


def presign(
    key_pem: str, apiv3_key: str, key_id: str, resources: list[dict[str, Any]]
) -> list[Request]:
    """Sign every resource's notification, spread over the machine's cores."""
    now = int(time.time())
    chunks = [resources[i : i + 500] for i in range(0, len(resources), 500)]
    with ProcessPoolExecutor() as pool:
        batches = pool.map(_sign, [(key_pem, apiv3_key, key_id, c, now) for c in chunks])
        return [request for batch in batches for request in batch]
