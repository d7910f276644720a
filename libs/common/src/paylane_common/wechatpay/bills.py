"""WeChat Pay's daily bills: the trade bill (``/v3/bill/tradebill``) and the fund-flow bill
(``/v3/bill/fundflowbill``), as the merchant downloads and reads them.

Applying for a bill answers ``{hash_type, hash_value, download_url}``; the file behind
``download_url`` is fetched with a signed GET whose answer WeChat Pay does *not* sign (the
official SDKs skip verification there), so its integrity rests on the digest: SHA1 of the
bill as text, after gunzip (wechatpay-java's ``DigestBillEntity`` wraps the gunzipped
stream).

The file is CSV: a header line, one line a record with every field prefixed by a
backtick (so spreadsheet programs keep long numbers as text), then a summary header and
one summary line, prefixed alike. Values are written as they are, commas included (a
product name, ``attach``), unquoted: a record is split where a comma is followed by a
backtick, never on a bare comma (the official SDKs leave parsing to the merchant, whose
parsers split alike). Amounts are yuan with two decimals (the fee five);
paylane reads them into fen exactly.

One record that cannot be read (a field too many, an amount that is not one) does not
cost the day: it is kept as a :class:`BadRecord` (its number, what is wrong, and its
``out_trade_no`` where the columns before the fault could be read) beside the records
that could, for the reader to report as a difference. What makes the whole bill
unreadable still raises :class:`BillFormatError`: no header, no summary, a summary that
counts another number of records than the file holds (cut off or altered), a digest
that does not match.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import TypeVar

from paylane_common.contract.money import fen
from paylane_common.wechatpay.exceptions import WechatPayError

__all__ = [
    "BadRecord",
    "BillFile",
    "BillFormatError",
    "FundFlowBill",
    "FundFlowRecord",
    "FundFlowSummary",
    "TradeBill",
    "TradeBillRecord",
    "TradeBillSummary",
    "bill_text",
    "parse_fund_flow_bill",
    "parse_trade_bill",
    "yuan_to_fen",
]

#: The trade bill's columns (bill_type ALL), in the file's order.
TRADE_COLUMNS = (
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
)
TRADE_SUMMARY_COLUMNS = (
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
)
FUND_FLOW_COLUMNS = (
    "记账时间",
    "微信支付业务单号",
    "资金流水单号",
    "业务名称",
    "业务类型",
    "收支类型",
    "收支金额（元）",
    "账户结余（元）",
    "资金变更提交申请人",
    "备注",
    "业务凭证号",
)
FUND_FLOW_SUMMARY_COLUMNS = ("资金流水总笔数", "收入笔数", "收入金额", "支出笔数", "支出金额")
#: "Nothing was refunded" is written as 0 in the refund id columns of a payment row.
_NO_REFUND = ("", "0")
#: The trade bill's 商户订单号 and 商户退款单号 columns, and what a merchant's number may be.
_OUT_TRADE_NO_COLUMN, _OUT_REFUND_NO_COLUMN = 6, 15
_MERCHANT_NO = re.compile(r"^[0-9A-Za-z_\-|*@]{1,64}$")


class BillFormatError(WechatPayError):
    """A bill that is not what WeChat Pay's format says, or whose digest does not match."""


@dataclass(frozen=True)
class BillFile:
    """What applying for a bill answers: where to fetch it and its digest."""

    download_url: str
    hash_type: str
    hash_value: str


@dataclass(frozen=True)
class BadRecord:
    """A record of a bill that could not be read; the others are read all the same."""

    #: Its place among the bill's records, from 1.
    number: int
    reason: str
    #: Its 商户订单号 / 商户退款单号, where they could be read (the columns before a value
    #: with a stray separator stay in place); None otherwise.
    out_trade_no: str | None = None
    out_refund_no: str | None = None


@dataclass(frozen=True)
class TradeBillRecord:
    """One line of the trade bill: a payment (``trade_state`` SUCCESS, …) or a refund
    (``trade_state`` REFUND, with the refund columns filled). Amounts in fen."""

    trade_time: datetime  # China time, naive as written
    appid: str
    mchid: str
    transaction_id: str
    out_trade_no: str
    openid: str
    trade_type: str
    trade_state: str
    bank_type: str
    currency: str
    settlement_total: int  # 应结订单金额
    coupon_amount: int  # 代金券金额
    refund_id: str | None
    out_refund_no: str | None
    refund_amount: int  # 退款金额
    coupon_refund_amount: int  # 充值券退款金额
    refund_type: str
    refund_status: str
    description: str
    attach: str
    fee: Decimal  # yuan, five decimals
    fee_rate: str
    order_total: int  # 订单金额
    requested_refund: int  # 申请退款金额

    @property
    def is_refund(self) -> bool:
        return self.out_refund_no is not None


@dataclass(frozen=True)
class TradeBillSummary:
    count: int
    settlement_total: int
    refund_total: int
    coupon_refund_total: int
    fee_total: Decimal
    order_total: int
    requested_refund_total: int


@dataclass(frozen=True)
class TradeBill:
    records: tuple[TradeBillRecord, ...]
    summary: TradeBillSummary
    #: WeChat Pay has no bill for the day (NO_STATEMENT_EXIST): it saw no transaction, or
    #: it is wrong about that; a reader with payments of that day should say so.
    no_statement: bool = False
    #: The records that could not be read, to be reported; ``records`` holds the rest.
    bad_records: tuple[BadRecord, ...] = ()

    @property
    def payments(self) -> tuple[TradeBillRecord, ...]:
        return tuple(r for r in self.records if not r.is_refund)

    @property
    def refunds(self) -> tuple[TradeBillRecord, ...]:
        return tuple(r for r in self.records if r.is_refund)

    @classmethod
    def empty(cls) -> TradeBill:
        """The bill of a day without a transaction (WeChat Pay: NO_STATEMENT_EXIST)."""
        zero = Decimal("0")
        return cls((), TradeBillSummary(0, 0, 0, 0, zero, 0, 0), no_statement=True)


@dataclass(frozen=True)
class FundFlowRecord:
    booked_at: datetime
    business_id: str  # 微信支付业务单号: the transaction or refund id
    flow_id: str
    business_name: str
    business_type: str
    direction: str  # 收入 (in) or 支出 (out)
    amount: int
    balance: int
    applicant: str
    remark: str
    voucher_no: str  # 业务凭证号: out_trade_no / out_refund_no


@dataclass(frozen=True)
class FundFlowSummary:
    count: int
    income_count: int
    income: int
    expense_count: int
    expense: int


@dataclass(frozen=True)
class FundFlowBill:
    records: tuple[FundFlowRecord, ...]
    summary: FundFlowSummary
    bad_records: tuple[BadRecord, ...] = ()


def yuan_to_fen(text: str) -> int:
    """``"12.34"`` → 1234, exactly; a fraction of a fen is a format error, not rounded."""
    try:
        return fen(text)
    except ValueError as exc:
        raise BillFormatError(str(exc)) from None


def bill_text(data: bytes, bill: BillFile, *, gzipped: bool) -> str:
    """The downloaded bytes as text, once the digest over the (gunzipped) bill matches."""
    if gzipped:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            raise BillFormatError("the bill is not gzip") from None
    if bill.hash_type.upper() != "SHA1":
        raise BillFormatError(f"unsupported hash_type {bill.hash_type!r}")
    digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()
    if digest != bill.hash_value.lower():
        raise BillFormatError("the bill's SHA1 does not match hash_value")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BillFormatError("the bill is not UTF-8") from None


def _fields(line: str) -> list[str]:
    """A record's fields without their backtick: every field starts with one, so fields
    are separated by a comma *and* a backtick. A comma alone is part of a value (a product
    name, ``attach``) and splitting on it would shift every column after it."""
    if not line.startswith("`"):
        raise BillFormatError(f"a record that does not start with a backtick: {line[:40]!r}")
    return line[1:].split(",`")


def _sections(
    text: str, columns: tuple[str, ...], summary_columns: tuple[str, ...]
) -> tuple[list[str], int, list[str]]:
    """(the record lines, the header's number of columns, the summary's fields)."""
    lines = [line for line in text.lstrip("\ufeff").splitlines() if line.strip()]
    try:
        start = next(i for i, line in enumerate(lines) if line.split(",")[0] == columns[0])
        end = next(i for i, line in enumerate(lines) if line.split(",")[0] == summary_columns[0])
    except StopIteration:
        raise BillFormatError("the bill has no header or no summary header") from None
    header = lines[start].split(",")
    if tuple(header[: len(columns)]) != columns:
        raise BillFormatError("the bill's header is not the expected columns")
    if end + 1 >= len(lines):
        raise BillFormatError("the bill has no summary line")
    summary = _fields(lines[end + 1])
    if len(summary) < len(summary_columns):
        raise BillFormatError("the summary line is short")
    return lines[start + 1 : end], len(header), summary


T = TypeVar("T")


def _records(
    lines: list[str], width: int, read: Callable[[list[str]], T]
) -> tuple[tuple[T, ...], tuple[BadRecord, ...]]:
    """Each line read with ``read``; one that cannot be is a :class:`BadRecord`."""
    records: list[T] = []
    bad: list[BadRecord] = []
    for number, line in enumerate(lines, start=1):
        fields: list[str] = []
        try:
            fields = _fields(line)
            if len(fields) != width:
                raise BillFormatError(f"record {number} has {len(fields)} fields, not {width}")
            records.append(read(fields))
        except BillFormatError as exc:
            bad.append(
                BadRecord(
                    number,
                    str(exc),
                    _merchant_no(fields, _OUT_TRADE_NO_COLUMN),
                    _merchant_no(fields, _OUT_REFUND_NO_COLUMN),
                )
            )
    return tuple(records), tuple(bad)


def _merchant_no(fields: list[str], column: int) -> str | None:
    value = fields[column] if len(fields) > column else ""
    return value if value not in _NO_REFUND and _MERCHANT_NO.match(value) else None


def _time(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise BillFormatError(f"not a bill time: {text!r}") from None


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text or "0")
    except InvalidOperation:
        raise BillFormatError(f"not a number: {text!r}") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BillFormatError(f"not a count: {text!r}") from None


def _refund_no(text: str) -> str | None:
    return None if text in _NO_REFUND else text


def parse_trade_bill(text: str) -> TradeBill:
    """A trade bill (bill_type ALL) as records and its summary; the summary's count is
    checked against the records, so a truncated file is never taken for a quiet day."""
    lines, width, s = _sections(text, TRADE_COLUMNS, TRADE_SUMMARY_COLUMNS)

    def read(f: list[str]) -> TradeBillRecord:
        return TradeBillRecord(
            trade_time=_time(f[0]),
            appid=f[1],
            mchid=f[2],
            transaction_id=f[5],
            out_trade_no=f[6],
            openid=f[7],
            trade_type=f[8],
            trade_state=f[9],
            bank_type=f[10],
            currency=f[11],
            settlement_total=yuan_to_fen(f[12]),
            coupon_amount=yuan_to_fen(f[13]),
            refund_id=_refund_no(f[14]),
            out_refund_no=_refund_no(f[15]),
            refund_amount=yuan_to_fen(f[16]),
            coupon_refund_amount=yuan_to_fen(f[17]),
            refund_type=f[18],
            refund_status=f[19],
            description=f[20],
            attach=f[21],
            fee=_decimal(f[22]),
            fee_rate=f[23],
            order_total=yuan_to_fen(f[24]),
            requested_refund=yuan_to_fen(f[25]),
        )

    records, bad = _records(lines, width, read)
    summary = TradeBillSummary(
        count=_int(s[0]),
        settlement_total=yuan_to_fen(s[1]),
        refund_total=yuan_to_fen(s[2]),
        coupon_refund_total=yuan_to_fen(s[3]),
        fee_total=_decimal(s[4]),
        order_total=yuan_to_fen(s[5]),
        requested_refund_total=yuan_to_fen(s[6]),
    )
    _check_count(summary.count, len(records) + len(bad))
    return TradeBill(records, summary, bad_records=bad)


def parse_fund_flow_bill(text: str) -> FundFlowBill:
    """A fund-flow bill as records and its summary (count checked, as for trade bills)."""
    lines, width, s = _sections(text, FUND_FLOW_COLUMNS, FUND_FLOW_SUMMARY_COLUMNS)

    def read(f: list[str]) -> FundFlowRecord:
        return FundFlowRecord(
            booked_at=_time(f[0]),
            business_id=f[1],
            flow_id=f[2],
            business_name=f[3],
            business_type=f[4],
            direction=f[5],
            amount=yuan_to_fen(f[6]),
            balance=yuan_to_fen(f[7]),
            applicant=f[8],
            remark=f[9],
            voucher_no=f[10],
        )

    records, bad = _records(lines, width, read)
    summary = FundFlowSummary(
        count=_int(s[0]),
        income_count=_int(s[1]),
        income=yuan_to_fen(s[2]),
        expense_count=_int(s[3]),
        expense=yuan_to_fen(s[4]),
    )
    _check_count(summary.count, len(records) + len(bad))
    return FundFlowBill(records, summary, bad_records=bad)


def _check_count(count: int, found: int) -> None:
    """A bill whose summary disagrees with its records (read or not) was cut off or
    altered."""
    if count != found:
        raise BillFormatError(f"the summary counts {count} records, the bill has {found}")


def bill_date(day: date) -> str:
    """``bill_date`` as the API takes it."""
    return day.strftime("%Y-%m-%d")
