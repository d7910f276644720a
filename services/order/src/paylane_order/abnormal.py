"""The remedy of an ABNORMAL refund: WeChat Pay could not pay it back to where the payer
paid from (a closed card, a frozen account), so the money is sent to a bank card instead,
the payer's or the merchant's (``apply-abnormal-refund``).

The refund row keeps when it went ABNORMAL (``abnormal_at``, also once remedied) and the
last remedy asked for and WeChat Pay's answer (``remedy``, ``remedy_at``,
``remedy_result``). Accepted, the row is ``pending`` again, as the refund is PROCESSING at
WeChat Pay: its ``REFUND.SUCCESS`` (or the reconciler's query) settles it like any other.
The payee's bank account and name are sent encrypted and never stored or logged.

Used by the order API (``POST /refunds/{out_refund_no}/apply-abnormal-refund``) and by
``paylane refund abnormal``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TypedDict

import aiomysql
import structlog

from paylane_common.storage.db import transaction
from paylane_common.storage.rows import RefundStatus, fetch_all, fetch_one
from paylane_common.wechatpay import (
    AbnormalRefundType,
    WechatPayApiError,
    WechatPayClient,
    WechatPayError,
)

from . import audit
from .errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    UpstreamRejected,
    UpstreamUnavailable,
    from_wechatpay,
)
from .query_log import QueryLog

log = structlog.get_logger(__name__)

#: What the API, the CLI and the row show of a refund and its remedy.
COLUMNS = (
    "out_refund_no, out_trade_no, refund_id, amount_refund, status, reason, created_at,"
    " abnormal_at, remedy, remedy_at, remedy_result"
)


class AbnormalRefundRow(TypedDict):
    """A refund with ``COLUMNS``."""

    out_refund_no: str
    out_trade_no: str
    refund_id: str | None
    amount_refund: int
    status: RefundStatus | None
    reason: str | None
    created_at: datetime | None
    abnormal_at: datetime | None
    remedy: str | None
    remedy_at: datetime | None
    remedy_result: str | None


#: ``refunds.remedy_result`` is VARCHAR(255).
RESULT_MAX = 255


@dataclass(frozen=True)
class Remedy:
    """Where the money goes instead. ``USER_BANK_CARD`` needs all three bank fields
    (``bank_type`` is WeChat Pay's bank code, e.g. ``ICBC_DEBIT``); ``MERCHANT_BANK_CARD``
    none. The account and the name stay out of ``repr`` (tracebacks, logs)."""

    type: AbnormalRefundType
    bank_type: str | None = None
    bank_account: str | None = field(default=None, repr=False)
    real_name: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        bank = (self.bank_type, self.bank_account, self.real_name)
        if self.type == "USER_BANK_CARD" and not all(bank):
            raise InvalidRequest(
                "USER_BANK_CARD needs bank_type, bank_account and real_name", "invalid_remedy"
            )
        if self.type == "MERCHANT_BANK_CARD" and any(bank):
            raise InvalidRequest(
                "MERCHANT_BANK_CARD takes no bank fields: the merchant's account is known",
                "invalid_remedy",
            )


class AbnormalRefunds:
    def __init__(self, pool: aiomysql.Pool, client: WechatPayClient) -> None:
        self._pool = pool
        self._client = client
        self._queries = QueryLog(pool, client)

    async def list(self, limit: int = 100) -> list[AbnormalRefundRow]:
        """The refunds waiting for a remedy, oldest first."""
        # In a transaction of its own, as every read: the pool's connections run with
        # autocommit off, and a bare read would keep an old snapshot on its connection.
        async with transaction(self._pool) as cur:
            await cur.execute(
                f"SELECT {COLUMNS} FROM refunds WHERE status = 'abnormal'"
                " ORDER BY created_at, id LIMIT %s",
                (limit,),
            )
            return await fetch_all(cur, AbnormalRefundRow)

    async def get(self, out_refund_no: str) -> AbnormalRefundRow:
        async with transaction(self._pool) as cur:
            await cur.execute(
                f"SELECT {COLUMNS} FROM refunds WHERE out_refund_no = %s", (out_refund_no,)
            )
            row = await fetch_one(cur, AbnormalRefundRow)
        if row is None:
            raise NotFound(f"refund {out_refund_no} not found", "unknown_refund")
        return row

    async def apply(self, out_refund_no: str, remedy: Remedy) -> AbnormalRefundRow:
        """Ask WeChat Pay to pay an ABNORMAL refund out as ``remedy`` says; the row records
        the answer either way. A refund no longer ABNORMAL here is a 409 (it was remedied
        already, or WeChat Pay settled it meanwhile)."""
        refund = await self.get(out_refund_no)
        if refund["status"] != "abnormal":
            raise Conflict(
                f"refund {out_refund_no} is {refund['status']}, not abnormal",
                "refund_not_abnormal",
            )
        structlog.contextvars.bind_contextvars(
            out_refund_no=out_refund_no, out_trade_no=refund["out_trade_no"]
        )
        try:
            refund_id = refund["refund_id"] or await self._refund_id(out_refund_no)
            answer = await self._client.apply_abnormal_refund(
                refund_id,
                out_refund_no,
                remedy.type,
                bank_type=remedy.bank_type,
                bank_account=remedy.bank_account,
                real_name=remedy.real_name,
            )
        except WechatPayApiError as exc:
            result = f"{exc.code}: {exc.message}"
            await self._record(refund, remedy, result, accepted=False)
            if exc.retryable:
                raise UpstreamUnavailable(f"WeChat Pay failed: {exc.code}") from None
            raise UpstreamRejected(f"WeChat Pay refused the remedy: {result}") from None
        except WechatPayError as exc:
            # Unreachable, or an answer that cannot be trusted: unknown whether it got there.
            # The refund stays abnormal here, and applying the same remedy again is safe
            # (WeChat Pay answers the refund as it is). Mapped as on every route.
            await self._record(refund, remedy, f"UNKNOWN: {exc}", accepted=False)
            raise from_wechatpay(exc) from exc
        await self._record(refund, remedy, str(answer.get("status") or "PROCESSING"), True)
        log.info("abnormal_refund_remedied", remedy=remedy.type, status=answer.get("status"))
        return await self.get(out_refund_no)

    async def _refund_id(self, out_refund_no: str) -> str:
        """WeChat Pay's id of a refund whose row never learnt it."""
        answer = await self._queries.refund(out_refund_no, "refund_remedy")
        refund_id = answer.get("refund_id")
        if not refund_id:
            raise UpstreamRejected(f"WeChat Pay does not name refund {out_refund_no}'s id")
        return str(refund_id)

    async def _record(
        self, refund: AbnormalRefundRow, remedy: Remedy, result: str, accepted: bool
    ) -> None:
        # A REFUND.SUCCESS may already have been applied (it can beat this answer): the
        # status goes back to pending only from abnormal.
        async with transaction(self._pool) as cur:
            await cur.execute(
                "UPDATE refunds SET remedy = %s, remedy_at = NOW(6), remedy_result = %s,"
                " status = IF(%s AND status = 'abnormal', 'pending', status)"
                " WHERE out_refund_no = %s",
                (remedy.type, result[:RESULT_MAX], accepted, refund["out_refund_no"]),
            )
            # The bank account and the name went to WeChat Pay encrypted: never logged.
            entry = audit.refund_remedy(
                "remedy_accepted" if accepted else "remedy_refused",
                refund["out_trade_no"],
                refund["out_refund_no"],
                refund["amount_refund"],
                request={"type": remedy.type, "bank_type": remedy.bank_type},
                response={"result": result[:RESULT_MAX]},
                detail=f"{refund['out_refund_no']} {remedy.type}: {result}"[:RESULT_MAX],
            )
            await audit.write(cur, entry)
