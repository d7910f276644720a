"""The daily bills: applying (signed answers), downloading (a signed request, an unsigned
answer), the digest, and the file read here line by line, as WeChat Pay's format says,
without paylane's parser."""

from __future__ import annotations

import gzip
import hashlib
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from paylane_common.contract.china_time import CHINA
from paylane_common.wechatpay.testing import MCHID
from paylane_sandbox.app_keys import SANDBOX


def today() -> date:
    """Bills are per China day."""
    return datetime.now(CHINA).date()


def bill_path(kind: str, day: date | None = None, **query: str) -> str:
    day = day or today()
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    if kind == "trade":
        return f"/v3/bill/tradebill?bill_date={day}&bill_type=ALL&tar_type=GZIP{extra}"
    return f"/v3/bill/fundflowbill?bill_date={day}&account_type=BASIC&tar_type=GZIP{extra}"


async def fetch(sandbox: Any, path: str) -> tuple[dict[str, Any], list[list[str]]]:
    """Apply, download, check the digest; the lines split into fields."""
    applied = await sandbox.api("GET", path)
    assert applied.status == 200, applied.body
    offer = applied.json
    assert offer["hash_type"] == "SHA1"
    url = urlsplit(offer["download_url"])
    assert url.path == "/v3/billdownload/file"
    download = await sandbox.api("GET", f"{url.path}?{url.query}", verify=False)
    assert download.status == 200
    assert "Wechatpay-Signature" not in download.headers
    text = gzip.decompress(download.body)
    assert hashlib.sha1(text).hexdigest() == offer["hash_value"]
    return offer, [_split(line) for line in text.decode().splitlines()]


def _split(line: str) -> list[str]:
    """Headers are plain CSV; in a record every field starts with a backtick, and only a
    comma before one separates fields (values keep their commas)."""
    if not line.startswith("`"):
        return line.split(",")
    return ["`" + field for field in line[1:].split(",`")]


async def _paid(sandbox: Any, total: int) -> str:
    body, _ = await sandbox.place("jsapi", total=total, attach="a,b")
    no = str(body["out_trade_no"])
    paid = await sandbox.control("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
    assert paid.status == 200
    return no


async def test_trade_bill_lists_the_days_payments_and_refunds(start_sandbox):
    sandbox = await start_sandbox(sandbox_refund_mode="manual")
    first, second = await _paid(sandbox, 990), await _paid(sandbox, 1990)
    refund = {
        "out_trade_no": second,
        "out_refund_no": f"R{second}",
        "amount": {"refund": 500, "total": 1990, "currency": "CNY"},
    }
    assert (await sandbox.api("POST", "/v3/refund/domestic/refunds", refund)).status == 200

    _, lines = await fetch(sandbox, bill_path("trade"))
    header, *records, summary_header, summary = lines
    assert header[0] == "交易时间" and len(header) == 27
    assert summary_header[0] == "总交易单数"
    assert all(field.startswith("`") for line in [*records, summary] for field in line)
    rows = [[field[1:] for field in line] for line in records]
    assert all(len(row) == 27 for row in rows)
    by_state = {(row[6], row[9]): row for row in rows}
    assert set(by_state) == {(first, "SUCCESS"), (second, "SUCCESS"), (second, "REFUND")}
    payment = by_state[(first, "SUCCESS")]
    assert payment[0].startswith(str(today())) and payment[2] == MCHID
    assert payment[5].startswith("4200") and (payment[12], payment[24]) == ("9.90", "9.90")
    assert payment[21] == "a,b"  # as the merchant sent it: WeChat Pay writes commas as they are
    refunded = by_state[(second, "REFUND")]
    assert (refunded[15], refunded[16], refunded[19]) == (f"R{second}", "5.00", "PROCESSING")
    assert refunded[14].startswith("50") and refunded[25] == "5.00"
    totals = [field[1:] for field in summary]
    assert totals[0] == "3" and (totals[1], totals[2], totals[5]) == ("29.80", "5.00", "29.80")


async def test_a_past_days_bill_shows_each_refund_as_it_was_when_the_bill_was_made(
    start_sandbox,
):
    """A day's bill is made at 09:00 the next day: a refund finished before shows its final
    status, one finished later shows PROCESSING, whenever the bill is fetched."""
    sandbox = await start_sandbox(sandbox_refund_mode="manual")
    state = sandbox.client.server.app[SANDBOX]
    day = today() - timedelta(days=3)
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=CHINA).timestamp()
    state.clock = lambda: noon
    no = await _paid(sandbox, 990)
    early, late, closed = f"RE{no}", f"RL{no}", f"RC{no}"
    for out_refund_no in (early, late, closed):
        refund = {
            "out_trade_no": no,
            "out_refund_no": out_refund_no,
            "amount": {"refund": 100, "total": 990, "currency": "CNY"},
        }
        assert (await sandbox.api("POST", "/v3/refund/domestic/refunds", refund)).status == 200

    async def complete(out_refund_no: str, status: str, hours_after_noon: float) -> None:
        state.clock = lambda: noon + hours_after_noon * 3600
        path = f"/sandbox/refunds/{out_refund_no}/complete"
        done = await sandbox.control("POST", path, {"status": status})
        assert done.status == 200, done.body

    await complete(early, "SUCCESS", 20)  # 08:00 the next day: before the bill is made
    await complete(closed, "CLOSED", 20.5)
    await complete(late, "SUCCESS", 22)  # 10:00 the next day: after
    _, lines = await fetch(sandbox, bill_path("trade", day))
    _, *records, _, _ = lines
    statuses = {row[15][1:]: row[19][1:] for row in records if row[9] == "`REFUND"}
    assert statuses == {early: "SUCCESS", closed: "CLOSED", late: "PROCESSING"}


async def test_fund_flow_bill_has_money_in_and_out_with_the_balance(start_sandbox):
    sandbox = await start_sandbox(sandbox_refund_mode="manual")
    no = await _paid(sandbox, 990)
    refund = {
        "out_trade_no": no,
        "out_refund_no": f"R{no}",
        "amount": {"refund": 90, "total": 990, "currency": "CNY"},
    }
    assert (await sandbox.api("POST", "/v3/refund/domestic/refunds", refund)).status == 200
    done = await sandbox.control("POST", f"/sandbox/refunds/R{no}/complete", {"status": "SUCCESS"})
    assert done.status == 200, done.body

    _, lines = await fetch(sandbox, bill_path("fund"))
    header, income, expense, summary_header, summary = lines
    assert header[0] == "记账时间" and len(header) == 11
    assert summary_header == ["资金流水总笔数", "收入笔数", "收入金额", "支出笔数", "支出金额"]
    assert [f[1:] for f in income][5:8] == ["收入", "9.90", "9.90"]
    assert [f[1:] for f in expense][5:8] == ["支出", "0.90", "9.00"]
    assert [f[1:] for f in expense][10] == f"R{no}"
    assert [f[1:] for f in summary] == ["2", "1", "9.90", "1", "0.90"]


async def test_days_without_business_the_future_and_bad_parameters(sandbox):
    await _paid(sandbox, 990)
    yesterday = today() - timedelta(days=1)
    empty = await sandbox.api("GET", bill_path("trade", yesterday))
    assert empty.status == 400 and empty.json["code"] == "NO_STATEMENT_EXIST"
    future = await sandbox.api("GET", bill_path("trade", today() + timedelta(days=2)))
    assert future.status == 400 and future.json["code"] == "INVALID_REQUEST"
    malformed = await sandbox.api("GET", "/v3/bill/tradebill?bill_date=20261123")
    assert malformed.status == 400 and malformed.json["code"] == "PARAM_ERROR"
    other = await sandbox.api("GET", bill_path("fund").replace("BASIC", "FEES"))
    assert other.status == 400 and other.json["code"] == "PARAM_ERROR"
    unknown = await sandbox.api("GET", "/v3/billdownload/file?token=nope")
    assert unknown.status == 400 and unknown.json["code"] == "INVALID_REQUEST"

    plain = await sandbox.api("GET", f"/v3/bill/tradebill?bill_date={today()}")
    url = urlsplit(plain.json["download_url"])
    text = (await sandbox.api("GET", f"{url.path}?{url.query}", verify=False)).body
    assert hashlib.sha1(text).hexdigest() == plain.json["hash_value"]  # no tar_type: not gzip


async def test_downloading_needs_the_merchant_signature(sandbox):
    await _paid(sandbox, 990)
    offer = (await sandbox.api("GET", bill_path("trade"))).json
    url = urlsplit(offer["download_url"])
    unsigned = await sandbox.api(
        "GET", f"{url.path}?{url.query}", authorization="WECHATPAY2-SHA256-RSA2048 x", verify=False
    )
    assert unsigned.status == 401 and unsigned.json["code"] == "SIGN_ERROR"
