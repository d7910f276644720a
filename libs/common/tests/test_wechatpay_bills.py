"""Reading WeChat Pay's bills: the trade and fund-flow bill files written out here by hand
in the format of WeChat Pay's documentation (header, backtick-prefixed records, summary
header and line), the digest computed with hashlib over the gunzipped text."""

from __future__ import annotations

import gzip
import hashlib
from datetime import datetime
from decimal import Decimal

import pytest

from paylane_common.wechatpay import (
    BillFile,
    BillFormatError,
    parse_fund_flow_bill,
    parse_trade_bill,
)
from paylane_common.wechatpay.bills import bill_text, yuan_to_fen

TRADE_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
    "交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,"
    "充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
)
PAYMENT = (
    "`2026-11-23 09:15:02,`wx8888888888888888,`1900000109,`0,`,`4200001234202611230000000001,"
    "`PL20261123091500aa,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`SUCCESS,`OTHERS,`CNY,`19.90,"
    "`0.00,`0,`0,`0.00,`0.00,`,`,`会员月卡,`,`0.12000,`0.60%,`19.90,`0.00,`"
)
REFUND = (
    "`2026-11-23 21:40:11,`wx8888888888888888,`1900000109,`0,`,`4200001234202611230000000001,"
    "`PL20261123091500aa,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`REFUND,`OTHERS,`CNY,`0.00,"
    "`0.00,`50300000012026112300000000001,`RF20261123214000bb,`5.00,`0.00,`ORIGINAL,"
    "`SUCCESS,`会员月卡,`,`-0.03000,`0.60%,`0.00,`5.00,`"
)
TRADE_BILL = (
    f"{TRADE_HEADER}\r\n{PAYMENT}\r\n{REFUND}\r\n"
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n"
    "`2,`19.90,`5.00,`0.00,`0.09000,`19.90,`5.00\r\n"
)
FUND_FLOW_BILL = (
    "记账时间,微信支付业务单号,资金流水单号,业务名称,业务类型,收支类型,收支金额（元）,"
    "账户结余（元）,资金变更提交申请人,备注,业务凭证号\n"
    "`2026-11-23 09:15:02,`4200001234202611230000000001,`1900000109202611230000000011,"
    "`交易,`交易,`收入,`19.90,`19.90,`system,`,`PL20261123091500aa\n"
    "`2026-11-23 21:40:15,`50300000012026112300000000001,`1900000109202611230000000012,"
    "`退款,`退款,`支出,`5.00,`14.90,`1900000109API,`,`RF20261123214000bb\n"
    "资金流水总笔数,收入笔数,收入金额,支出笔数,支出金额\n"
    "`2,`1,`19.90,`1,`5.00\n"
)


def _file(text: str) -> tuple[bytes, BillFile]:
    raw = text.encode("utf-8")
    digest = hashlib.sha1(raw).hexdigest().upper()  # compared without regard to case
    return gzip.compress(raw), BillFile("https://example/v3/billdownload/file?t=1", "SHA1", digest)


def test_trade_bill_records_and_summary() -> None:
    bill = parse_trade_bill(bill_text(*_file(TRADE_BILL), gzipped=True))
    assert len(bill.records) == 2
    payment, refund = bill.records
    assert bill.payments == (payment,) and bill.refunds == (refund,)
    assert payment.trade_time == datetime(2026, 11, 23, 9, 15, 2)
    assert payment.out_trade_no == "PL20261123091500aa"
    assert payment.transaction_id == "4200001234202611230000000001"
    assert (payment.trade_state, payment.trade_type) == ("SUCCESS", "JSAPI")
    assert (payment.settlement_total, payment.order_total) == (1990, 1990)
    assert payment.refund_id is None and payment.out_refund_no is None
    assert payment.fee == Decimal("0.12") and payment.description == "会员月卡"
    assert refund.trade_state == "REFUND"
    assert (refund.out_refund_no, refund.refund_id) == (
        "RF20261123214000bb",
        "50300000012026112300000000001",
    )
    assert (refund.refund_amount, refund.requested_refund, refund.refund_status) == (
        500,
        500,
        "SUCCESS",
    )
    summary = bill.summary
    assert (summary.count, summary.settlement_total, summary.refund_total) == (2, 1990, 500)
    assert (summary.order_total, summary.requested_refund_total) == (1990, 500)
    assert summary.fee_total == Decimal("0.09")


def test_commas_in_a_product_name_and_attach_stay_in_their_columns() -> None:
    """WeChat Pay writes values as they are: only a comma before a backtick separates."""
    payment = PAYMENT.replace("`会员月卡,`,", "`会员月卡, 月付,`gen-1,tag=a,b,", 1)
    text = TRADE_BILL.replace(PAYMENT, payment)
    payment_record, refund_record = parse_trade_bill(text).records
    assert (payment_record.description, payment_record.attach) == (
        "会员月卡, 月付",
        "gen-1,tag=a,b",
    )
    assert (payment_record.fee, payment_record.order_total) == (Decimal("0.12"), 1990)
    assert refund_record.out_refund_no == "RF20261123214000bb"


def test_fund_flow_bill() -> None:
    raw, file = _file(FUND_FLOW_BILL)
    bill = parse_fund_flow_bill(bill_text(raw, file, gzipped=True))
    income, expense = bill.records
    assert (income.direction, income.amount, income.balance) == ("收入", 1990, 1990)
    assert (expense.direction, expense.amount, expense.voucher_no) == (
        "支出",
        500,
        "RF20261123214000bb",
    )
    assert (bill.summary.count, bill.summary.income, bill.summary.expense) == (2, 1990, 500)


def test_a_bill_with_a_byte_order_mark_and_no_records() -> None:
    empty = (
        f"\ufeff{TRADE_HEADER}\n"
        "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\n"
        "`0,`0.00,`0.00,`0.00,`0.00000,`0.00,`0.00\n"
    )
    bill = parse_trade_bill(empty)
    assert bill.records == () and bill.summary.count == 0


def test_a_changed_byte_fails_the_digest() -> None:
    _, file = _file(TRADE_BILL)
    tampered = gzip.compress(TRADE_BILL.replace("19.90", "19.80", 1).encode())
    with pytest.raises(BillFormatError, match="SHA1"):
        bill_text(tampered, file, gzipped=True)


def test_not_gzip_is_a_format_error() -> None:
    _, file = _file(TRADE_BILL)
    with pytest.raises(BillFormatError, match="gzip"):
        bill_text(TRADE_BILL.encode(), file, gzipped=True)


@pytest.mark.parametrize(
    "broken",
    [
        TRADE_BILL.replace(f"{REFUND}\r\n", ""),  # summary counts 2, one record left
        TRADE_BILL.replace("交易时间", "时间"),  # not the header
        TRADE_BILL.rsplit("\r\n", 2)[0],  # the summary line cut off
    ],
)
def test_broken_bills_are_refused(broken: str) -> None:
    with pytest.raises(BillFormatError):
        parse_trade_bill(broken)


@pytest.mark.parametrize(
    ("broken", "out_trade_no", "reason"),
    [
        # A value holding the separator (an ``attach`` of ",`"): a field too many. The
        # columns before it are in place, so the order is still named.
        (
            PAYMENT.replace(",`会员月卡,`,", ",`会员月卡,`gen-1,`x,", 1),
            "PL20261123091500aa",
            "record 1 has 28 fields, not 27",
        ),
        (PAYMENT.replace("`19.90,`0.00,`0,", "`19.905,`0.00,`0,", 1), "PL20261123091500aa", "fen"),
        (PAYMENT[1:], None, "backtick"),
    ],
)
def test_one_unreadable_record_is_reported_and_the_rest_of_the_day_read(
    broken: str, out_trade_no: str | None, reason: str
) -> None:
    """Once, a comma in one order's ``attach`` failed a whole day's reconciliation
    (``record 5 has 28 fields, not 27``): now that record is reported, the others read."""
    bill = parse_trade_bill(TRADE_BILL.replace(PAYMENT, broken, 1))
    assert [r.out_refund_no for r in bill.records] == ["RF20261123214000bb"]
    assert bill.summary.count == 2
    [bad] = bill.bad_records
    assert (bad.number, bad.out_trade_no, bad.out_refund_no) == (1, out_trade_no, None)
    assert reason in bad.reason


def test_an_unreadable_refund_record_names_its_refund() -> None:
    broken = REFUND.replace("`5.00,`0.00,`ORIGINAL", "`5.x,`0.00,`ORIGINAL", 1)
    bill = parse_trade_bill(TRADE_BILL.replace(REFUND, broken, 1))
    assert [r.out_trade_no for r in bill.payments] == ["PL20261123091500aa"]
    [bad] = bill.bad_records
    assert (bad.number, bad.out_trade_no, bad.out_refund_no) == (
        2,
        "PL20261123091500aa",
        "RF20261123214000bb",
    )


def test_an_unreadable_fund_flow_record_is_reported_and_the_rest_read() -> None:
    bill = parse_fund_flow_bill(FUND_FLOW_BILL.replace("`19.90,`19.90,", "`1,9.90,`19.90,", 1))
    assert [r.voucher_no for r in bill.records] == ["RF20261123214000bb"]
    assert [b.number for b in bill.bad_records] == [1]


def test_yuan_to_fen_is_exact() -> None:
    assert yuan_to_fen("0.01") == 1
    assert yuan_to_fen("1234567.89") == 123456789
    assert yuan_to_fen("-5.00") == -500
    with pytest.raises(BillFormatError):
        yuan_to_fen("abc")
