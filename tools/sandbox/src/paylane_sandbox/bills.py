"""The daily bills, written from the ledger in WeChat Pay's format, for any day.

- The trade bill (bill_type ALL): a line per payment made that day (China time) and a
  line per refund applied for that day, with the status the refund had when WeChat Pay
  made the bill: it starts making a day's bills at 09:00 the next day (China time; its
  documentation says to fetch them after 10:00) and does not change them afterwards, so
  a refund that finished later shows PROCESSING on that day's bill however late the bill
  is fetched. Simplified: which day's bill lists a real refund (the day it was applied
  for, or the day it finished) the sandbox does not model; it lists it on the day it was
  applied for, as paylane's bill reconciliation expects (``refunds.created_at``).
- The fund-flow bill of the basic account: money in when a payment succeeds, money out
  when a refund does, with the running balance of the day.

Each is a CSV with a header line, records whose fields are prefixed by a backtick, and a
summary header and line. Values are written as they are, commas included (WeChat Pay
neither quotes nor cleans them): a reader splits a record where a comma precedes a
backtick. The file is served gzipped; ``hash_value`` is the SHA1 of the text before
compression, as WeChat Pay's.
"""

from __future__ import annotations

import gzip
import hashlib
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from paylane_common.contract.china_time import CHINA
from paylane_common.contract.money import yuan, yuan_text

from .ledger import Ledger

TRADE_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
    "交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,"
    "充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
)
TRADE_SUMMARY_HEADER = (
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
)
FUND_FLOW_HEADER = (
    "记账时间,微信支付业务单号,资金流水单号,业务名称,业务类型,收支类型,收支金额（元）,"
    "账户结余（元）,资金变更提交申请人,备注,业务凭证号"
)
FUND_FLOW_SUMMARY_HEADER = "资金流水总笔数,收入笔数,收入金额,支出笔数,支出金额"
#: The sandbox's fee: 0.6 % of what was paid (refunds give it back), to five decimals.
FEE_RATE = Decimal("0.006")
#: When a day's bills are made, after the day's end (China time): a refund's status on the
#: trade bill is the one it had then.
BILL_MADE_AFTER = timedelta(hours=9)


@dataclass(frozen=True)
class BillFile:
    text: str

    @property
    def gzipped(self) -> bytes:
        return gzip.compress(self.text.encode("utf-8"), mtime=0)

    @property
    def sha1(self) -> str:
        return hashlib.sha1(self.text.encode("utf-8"), usedforsecurity=False).hexdigest()


def _fee(fen: int) -> Decimal:
    return (yuan(fen) * FEE_RATE).quantize(Decimal("0.00001"))


def _line(fields: list[str]) -> str:
    return ",".join("`" + f for f in fields)


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, CHINA).strftime("%Y-%m-%d %H:%M:%S")


def _day_bounds(day: date) -> tuple[float, float]:
    start = datetime(day.year, day.month, day.day, tzinfo=CHINA).timestamp()
    return start, start + timedelta(days=1).total_seconds()


def trade_bill(ledger: Ledger, day: date) -> BillFile | None:
    """The day's trade bill; None for a day without a payment or a refund."""
    start, end = _day_bounds(day)
    made_at = end + BILL_MADE_AFTER.total_seconds()
    lines: list[tuple[float, str]] = []
    paid = refunded = 0
    fees = Decimal(0)
    for order in ledger.orders.values():
        ts = order.success_time
        if ts is None or not start <= ts < end or order.paid_total is None:
            continue
        fee = _fee(order.paid_total)
        paid += order.paid_total
        fees += fee
        fields = [
            _stamp(ts),
            order.request["appid"],
            ledger.mchid,
            "0",
            "",
            order.transaction_id or "",
            order.out_trade_no,
            order.paid_openid or "",
            order.trade_type,
            "SUCCESS",
            "OTHERS",
            "CNY",
            yuan_text(order.paid_total),
            "0.00",
            "0",
            "0",
            "0.00",
            "0.00",
            "",
            "",
            str(order.request.get("description", "")),
            str(order.request.get("attach", "")),
            f"{fee:.5f}",
            "0.60%",
            yuan_text(order.paid_total),
            "0.00",
            "",
        ]
        lines.append((ts, _line(fields)))
    for refund in ledger.refunds.values():
        if not start <= refund.created_at < end:
            continue
        order = ledger.orders[refund.out_trade_no]
        fee = -_fee(refund.refund)
        refunded += refund.refund
        fees += fee
        fields = [
            _stamp(refund.created_at),
            order.request["appid"],
            ledger.mchid,
            "0",
            "",
            refund.transaction_id,
            refund.out_trade_no,
            order.paid_openid or "",
            order.trade_type,
            "REFUND",
            "OTHERS",
            "CNY",
            "0.00",
            "0.00",
            refund.refund_id,
            refund.out_refund_no,
            yuan_text(refund.refund),
            "0.00",
            "ORIGINAL",
            refund.status_at(made_at),
            str(order.request.get("description", "")),
            str(order.request.get("attach", "")),
            f"{fee:.5f}",
            "0.60%",
            "0.00",
            yuan_text(refund.refund),
            "",
        ]
        lines.append((refund.created_at, _line(fields)))
    if not lines:
        return None
    lines.sort(key=lambda pair: pair[0])
    summary = [
        str(len(lines)),
        yuan_text(paid),
        yuan_text(refunded),
        "0.00",
        f"{fees:.5f}",
        yuan_text(paid),
        yuan_text(refunded),
    ]
    body = "\r\n".join([TRADE_HEADER, *(line for _, line in lines), TRADE_SUMMARY_HEADER])
    return BillFile(body + "\r\n" + _line(summary) + "\r\n")


def fund_flow_bill(ledger: Ledger, day: date) -> BillFile | None:
    """The day's fund-flow bill of the basic account; None for a day without money moving."""
    start, end = _day_bounds(day)
    moves: list[tuple[float, int, list[str]]] = []  # (time, signed fen, fields but amounts)
    for order in ledger.orders.values():
        ts = order.success_time
        if ts is not None and start <= ts < end and order.paid_total is not None:
            moves.append(
                (ts, order.paid_total, [order.transaction_id or "", "交易", "交易", "收入"])
            )
            moves[-1][2].append(order.out_trade_no)
    for refund in ledger.refunds.values():
        ts = refund.success_time
        if ts is not None and start <= ts < end and refund.status == "SUCCESS":
            moves.append((ts, -refund.refund, [refund.refund_id, "退款", "退款", "支出"]))
            moves[-1][2].append(refund.out_refund_no)
    if not moves:
        return None
    moves.sort(key=lambda move: move[0])
    balance = 0
    lines = [FUND_FLOW_HEADER]
    for ts, amount, (business_id, name, kind, direction, voucher) in moves:
        balance += amount
        flow_id = ledger.mchid + datetime.fromtimestamp(ts, CHINA).strftime("%Y%m%d")
        flow_id += "".join(secrets.choice("0123456789") for _ in range(10))
        applicant = "system" if amount > 0 else f"{ledger.mchid}API"
        fields = [_stamp(ts), business_id, flow_id, name, kind, direction, yuan_text(abs(amount))]
        lines.append(_line([*fields, yuan_text(balance), applicant, "", voucher]))
    income = [m[1] for m in moves if m[1] > 0]
    expense = [-m[1] for m in moves if m[1] < 0]
    summary = [str(len(moves)), str(len(income)), yuan_text(sum(income))]
    summary += [str(len(expense)), yuan_text(sum(expense))]
    lines += [FUND_FLOW_SUMMARY_HEADER, _line(summary)]
    return BillFile("\r\n".join(lines) + "\r\n")
