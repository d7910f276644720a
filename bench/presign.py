"""Notifications signed ahead of time (in worker processes), so that the load generator
measures paylane, not RSA signing."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from paylane_common.wechatpay import build_notification, load_private_key

Request = tuple[dict[str, str], bytes]


def _sign(args: tuple[str, str, str, str, list[dict[str, Any]], int]) -> list[Request]:
    key_pem, apiv3_key, key_id, _mchid, resources, timestamp = args
    key = load_private_key(key_pem)
    return [
        build_notification(
            event_id=f"EV-{uuid.uuid4().hex[:24]}",
            event_type="TRANSACTION.SUCCESS",
            resource_plaintext=resource,
            original_type="transaction",
            apiv3_key=apiv3_key,
            signing_key=key,
            serial=key_id,
            timestamp=timestamp,
        )
        for resource in resources
    ]


def transaction(appid: str, mchid: str, out_trade_no: str, amount: int) -> dict[str, Any]:
    return {
        "appid": appid,
        "mchid": mchid,
        "out_trade_no": out_trade_no,
        "transaction_id": f"42{uuid.uuid4().int % 10**26:026d}",
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "success_time": "2026-11-22T10:53:20+08:00",
        "payer": {"openid": "o-bench-payer"},
        "amount": {"total": amount, "payer_total": amount, "currency": "CNY"},
    }


def presign(
    key_pem: str, apiv3_key: str, key_id: str, mchid: str, resources: list[dict[str, Any]]
) -> list[Request]:
    """Sign every resource's notification, spread over the machine's cores."""
    now = int(time.time())
    chunks = [resources[i : i + 500] for i in range(0, len(resources), 500)]
    with ProcessPoolExecutor() as pool:
        batches = pool.map(_sign, [(key_pem, apiv3_key, key_id, mchid, c, now) for c in chunks])
        return [request for batch in batches for request in batch]
