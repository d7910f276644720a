"""``paylane reconcile [--once]``: the reconciler outside the order service."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from paylane_common import amqp, db
from paylane_common.publisher import Publisher
from paylane_common.settings import secret_value
from paylane_common.wechatpay import (
    MerchantSigner,
    NotificationVerifier,
    WechatPayClient,
    load_private_key,
)

from .reconciler import Reconciler
from .settings import OrderSettings


async def reconcile(settings: OrderSettings, *, once: bool) -> Counter[str]:
    pool = await db.create_pool(settings.mysql_url, maxsize=2)
    connection = await amqp.connect(settings.amqp_url, "reconciler")
    try:
        publisher = await Publisher.open(
            connection, settings.publish_timeout_s, declare=settings.amqp_declare_topology
        )
        async with aiohttp.ClientSession() as session:
            client = WechatPayClient(
                base_url=settings.wechatpay_api_base,
                mchid=settings.wechatpay_mchid,
                signer=MerchantSigner(
                    settings.wechatpay_mchid,
                    settings.wechatpay_merchant_serial_no,
                    load_private_key(secret_value(settings.wechatpay_merchant_private_key)),
                ),
                verifier=NotificationVerifier(
                    settings.verifier_keys(), max_skew_s=settings.notify_max_skew_s
                ),
                session=session,
            )
            reconciler = Reconciler(
                pool,
                client,
                publisher,
                after_s=settings.reconcile_after_s,
                concurrency=settings.reconcile_concurrency,
                refund_grace_s=settings.reconcile_refund_grace_s,
                order_ttl_s=settings.order_ttl_s,
                sweep_grace_s=settings.sweep_grace_s,
                sweep_limit=settings.sweep_limit,
            )
            total: Counter[str] = Counter()
            while True:
                # --once is an operator's pass: it waits out a replica's running one.
                found = await reconciler.run_once(wait_for_lock_s=60 if once else 0)
                total.update(found)
                if once:
                    return total
                print(dict(found) or "nothing to reconcile", flush=True)
                await asyncio.sleep(settings.reconcile_interval_s or 30.0)
    finally:
        await connection.close()
        pool.close()
        await pool.wait_closed()
