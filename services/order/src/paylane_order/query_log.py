"""Every query paylane makes to WeChat Pay about an order or a refund, recorded in
``wechatpay_queries`` (migration 0016) for the operators' console's timeline: who asked
(:data:`Source`), and the answer (``trade_state``, the refund's ``status``) or the error
code when WeChat Pay gave none.

The queries go through :class:`QueryLog` rather than the client straight, so no caller
can forget the record. A record that cannot be written (the database away) is logged and
counted, never raised: the query's answer matters more than its trace. One INSERT per
query, next to an HTTPS round trip to WeChat Pay: cheap enough not to batch.
"""

from __future__ import annotations

from typing import Any, Literal

import aiomysql
import structlog

from paylane_common.storage.db import transaction
from paylane_common.wechatpay import WechatPayApiError, WechatPayClient

from . import metrics

log = structlog.get_logger(__name__)

#: Who asked: the reconciler (and its effects sweep), a client's GET (status_query.py), an
#: operator's re-query, the payment gate confirming a claim without a notification, the
#: daily bill reconciliation, the remedy of an ABNORMAL refund, the refund consumer
#: confirming a claimed refund (refunds.py).
Source = Literal[
    "reconciler",
    "on_demand",
    "console",
    "payment_check",
    "bills",
    "refund_remedy",
    "refund_check",
]


class QueryLog:
    """WeChat Pay's order and refund queries, each recorded as it is answered."""

    def __init__(self, pool: aiomysql.Pool, client: WechatPayClient) -> None:
        self._pool = pool
        self.client = client

    async def order(self, out_trade_no: str, source: Source) -> dict[str, Any]:
        """``query_by_out_trade_no``, recorded; raises what the client raises."""
        try:
            tx = await self.client.query_by_out_trade_no(out_trade_no)
        except Exception as exc:
            await self._record("order", out_trade_no, None, source, None, _code(exc))
            raise
        await self._record("order", out_trade_no, None, source, tx.get("trade_state"), None)
        return tx

    async def refund(
        self, out_refund_no: str, source: Source, out_trade_no: str | None = None
    ) -> dict[str, Any]:
        """``query_refund``, recorded under the refund's order (``out_trade_no`` when the
        caller knows it, else WeChat Pay's answer's); raises what the client raises."""
        try:
            answer = await self.client.query_refund(out_refund_no)
        except Exception as exc:
            await self._record("refund", out_trade_no, out_refund_no, source, None, _code(exc))
            raise
        order = out_trade_no or answer.get("out_trade_no")
        await self._record("refund", order, out_refund_no, source, answer.get("status"), None)
        return answer

    async def _record(
        self,
        kind: str,
        out_trade_no: str | None,
        out_refund_no: str | None,
        source: Source,
        answer: Any,
        error: str | None,
    ) -> None:
        try:
            async with transaction(self._pool) as cur:
                await cur.execute(
                    "INSERT INTO wechatpay_queries"
                    " (kind, out_trade_no, out_refund_no, source, answer, error)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (
                        kind,
                        out_trade_no,
                        out_refund_no,
                        source,
                        str(answer)[:32] if answer is not None else None,
                        error,
                    ),
                )
        except Exception as exc:  # the database away: the query's answer still counts
            metrics.RECORDS_LOST.labels("wechatpay_queries").inc()
            log.warning("query_not_recorded", kind=kind, source=source, error=repr(exc))


def _code(exc: Exception) -> str:
    """WeChat Pay's error code, or the kind of failure when it did not answer one."""
    code = exc.code if isinstance(exc, WechatPayApiError) else type(exc).__name__
    return str(code)[:64]
