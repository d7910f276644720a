"""Hostile input at ingress, property-based (issue: proof under hostile input).

Generated requests against the real app and a real broker, as many as the Hypothesis
profile says (root conftest.py: 500 in make test, at least 10,000 in make test-fuzz):
malformed and huge bodies, deep nesting, wrong content types, missing headers, forged,
truncated and probe signatures, stale, future and replayed timestamps, bad base64, wrong
APIv3 key / AAD / nonce, and validly signed notifications with foreign mchid/appid or odd
amounts. Properties: never a 5xx; a rejected request never publishes; every 2xx that
carries a payment or refund publishes exactly its event (mismatches are flagged by the
order service, never dropped at the door: docs/ingress.md step 7).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paylane_common.broker import amqp
from paylane_common.broker.topology import EXCHANGE
from paylane_common.contract.events import NOTIFICATION_REJECTED
from paylane_common.wechatpay import encrypt_resource, signed_headers
from paylane_common.wechatpay.testing import FakeWechatPay, new_private_key
from paylane_ingress.main import build_app
from paylane_ingress.settings import IngressSettings
from tests.support import hygiene

# 10,000 requests: about a minute on a quiet 2-core machine, the budget allows for a busy one.
pytestmark = [pytest.mark.integration, pytest.mark.fuzz, pytest.mark.timeout(300)]

#: The profile's number of cases (root conftest.py loads it before this module).
CASES = settings().max_examples
NOW = 1_763_780_000
MCHID, APPID = "1900000109", "wxd678efh567hg6787"
APIV3_KEY = "fuzz-apiv3-key-0123456789abcdef!"
OTHER_KEY = "another-apiv3-key-0123456789abcd"
KEY_ID = "PUB_KEY_ID_0114FUZZ0000000000000001"
WECHAT = FakeWechatPay(MCHID, APPID, apiv3_key=APIV3_KEY, public_key_id=KEY_ID)
FOREIGN_KEY = new_private_key()
HEADER_NAMES = ("Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Serial")


@dataclass
class Ledger:
    """What the properties need: expected publications and every status seen."""

    expected: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    cases: int = 0


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    client: TestClient[Any, Any]
    spy: aio_pika.abc.AbstractQueue
    connection: aio_pika.abc.AbstractRobustConnection

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        async def send() -> tuple[int, bytes]:
            async with self.client.post("/notify/wechatpay", data=body, headers=headers) as r:
                return r.status, await r.read()

        return self.loop.run_until_complete(send())


@pytest.fixture(scope="module")
def harness(amqp_url: str) -> Iterator[Harness]:
    """The app on its own loop: hypothesis drives it from a plain (sync) test."""
    hygiene.register(APIV3_KEY, OTHER_KEY, "o-fuzz-payer")
    loop = asyncio.new_event_loop()
    app_settings = IngressSettings(
        amqp_url=amqp_url,
        wechatpay_apiv3_key=APIV3_KEY,
        wechatpay_public_key=WECHAT.platform_public_key_pem,
        wechatpay_public_key_id=KEY_ID,
        log_format="json",
    )

    async def start() -> Harness:
        client = TestClient(TestServer(build_app(app_settings, clock=lambda: NOW)))
        await client.start_server()
        connection = await amqp.connect(amqp_url, "fuzz-spy")
        channel = await connection.channel()
        exchange = await channel.get_exchange(EXCHANGE)
        spy = await channel.declare_queue(f"fuzz.{uuid.uuid4().hex}", exclusive=True)
        await spy.bind(exchange, routing_key="#")
        return Harness(loop, client, spy, connection)

    harness = loop.run_until_complete(start())
    yield harness
    loop.run_until_complete(harness.client.close())
    loop.run_until_complete(harness.connection.close())
    loop.close()


# -- building requests -------------------------------------------------------------------


def _transaction(draw: st.DrawFn, event_id: str) -> dict[str, Any]:
    return WECHAT.transaction(
        f"FZ{event_id[-20:]}",
        draw(st.integers(min_value=0, max_value=10**9)),
        appid=draw(st.sampled_from([APPID, "wx-foreign-app"])),
        mchid=draw(st.sampled_from([MCHID, "1999999999"])),
        openid="o-fuzz-payer",
    )


def _signed(
    body: bytes, *, timestamp: int = NOW, key: RSAPrivateKey = WECHAT.platform_key
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        **signed_headers(key, KEY_ID, body, timestamp=timestamp),
    }


def _valid(event_id: str, resource: dict[str, Any], event_type: str = "TRANSACTION.SUCCESS"):
    return WECHAT.notify(resource, event_type=event_type, event_id=event_id, timestamp=NOW)


def _resign(doc: dict[str, Any], **kw: Any) -> tuple[dict[str, str], bytes]:
    body = json.dumps(doc).encode()
    return _signed(body, **kw), body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


@st.composite
def hostile(draw: st.DrawFn) -> tuple[str, dict[str, str], bytes, bool]:
    """(kind, headers, body, should_publish)."""
    event_id = f"FZ-{uuid.uuid4().hex}"
    kind = draw(
        st.sampled_from(
            [
                "garbage",
                "signed_json",
                "deep_nesting",
                "huge",
                "content_type",
                "header_missing",
                "body_byte",
                "stale",
                "future",
                "replayed",
                "truncated_sig",
                "forged_sig",
                "bad_base64_sig",
                "signtest",
                "unknown_serial",
                "sig_type",
                "bad_ciphertext",
                "wrong_key",
                "wrong_aad",
                "wrong_nonce",
                "missing_resource",
                "valid",
                "valid_refund",
                "ignored_type",
            ]
        )
    )
    resource = _transaction(draw, event_id)
    headers, body = _valid(event_id, resource)
    doc = json.loads(body)
    if kind == "garbage":
        raw = draw(st.binary(max_size=2000))
        names = draw(st.lists(st.sampled_from(HEADER_NAMES), unique=True))
        junk = {
            n: draw(
                st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40)
            )
            for n in names
        }
        return kind, {"Content-Type": "application/json", **junk}, raw, False
    if kind == "signed_json":
        body = json.dumps(draw(json_values)).encode()
        return kind, _signed(body), body, False
    if kind == "deep_nesting":
        depth = draw(st.integers(min_value=100, max_value=20_000))
        body = b"[" * depth + b"]" * depth
        return kind, _signed(body), body, False
    if kind == "huge":
        body = b'{"id":"' + b"x" * draw(st.integers(64 * 1024, 200 * 1024)) + b'"}'
        return kind, _signed(body), body, False
    if kind == "content_type":
        ctype = draw(
            st.sampled_from(
                [
                    "text/plain",
                    "application/xml",
                    "",
                    "multipart/form-data",
                    "application/x-www-form-urlencoded",
                ]
            )
        )
        return kind, {**headers, "Content-Type": ctype}, body, False
    if kind == "header_missing":
        dropped = draw(st.lists(st.sampled_from(HEADER_NAMES), min_size=1, unique=True))
        return kind, {k: v for k, v in headers.items() if k not in dropped}, body, False
    if kind == "body_byte":
        at = draw(st.integers(0, len(body) - 1))
        flipped = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]
        return kind, headers, flipped, False
    if kind in ("stale", "future", "replayed"):
        skew = draw(st.integers(301, 10**7))
        ts = NOW - skew if kind != "future" else NOW + skew
        # "replayed": WeChat's own valid signature, re-sent after the window.
        return kind, _signed(body, timestamp=ts), body, False
    if kind == "truncated_sig":
        sig = headers["Wechatpay-Signature"]
        return (
            kind,
            {**headers, "Wechatpay-Signature": sig[: draw(st.integers(0, len(sig) - 1))]},
            body,
            False,
        )
    if kind == "forged_sig":
        return kind, _signed(body, key=FOREIGN_KEY), body, False
    if kind == "bad_base64_sig":
        printable = st.characters(min_codepoint=32, max_codepoint=126)
        text = draw(st.text(alphabet=printable, min_size=1, max_size=400)).strip() or "!"
        return kind, {**headers, "Wechatpay-Signature": text}, body, False
    if kind == "signtest":
        return (
            kind,
            {
                **headers,
                "Wechatpay-Signature": "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"],
            },
            body,
            False,
        )
    if kind == "unknown_serial":
        return (
            kind,
            {
                **headers,
                "Wechatpay-Serial": draw(
                    st.sampled_from(["PUB_KEY_ID_OTHER", "5157F09EFDC096DE15EBE81A47057A72"])
                ),
            },
            body,
            False,
        )
    if kind == "sig_type":
        return (
            kind,
            {
                **headers,
                "Wechatpay-Signature-Type": draw(
                    st.sampled_from(["WECHATPAY2-SHA256-RSA4096", "HMAC-SHA256", "x"])
                ),
            },
            body,
            False,
        )
    if kind == "bad_ciphertext":
        doc["resource"]["ciphertext"] = draw(
            st.sampled_from(["!!not base64!!", "", "AAAA", base64.b64encode(b"short").decode()])
        )
        h, b = _resign(doc)
        return kind, h, b, False
    if kind in ("wrong_key", "wrong_aad", "wrong_nonce"):
        plaintext = json.dumps(resource).encode()
        enc = encrypt_resource(
            OTHER_KEY if kind == "wrong_key" else APIV3_KEY, plaintext, "transaction"
        )
        if kind == "wrong_aad":
            enc["associated_data"] = "refund"
        if kind == "wrong_nonce":
            enc["nonce"] = "000000000000"
        doc["resource"].update(enc)
        h, b = _resign(doc)
        return kind, h, b, False
    if kind == "missing_resource":
        doc.pop(draw(st.sampled_from(["resource", "id", "event_type"])))
        h, b = _resign(doc)
        return kind, h, b, False
    if kind == "valid_refund":
        refund = WECHAT.refund(
            resource["out_trade_no"],
            refund=draw(st.integers(0, 100)),
            total=100,
            transaction_id=resource["transaction_id"],
            out_refund_no=f"R{event_id[-20:]}",
        )
        h, b = _valid(event_id, refund, "REFUND.SUCCESS")
        return kind, h, b, True
    if kind == "ignored_type":
        h, b = _valid(
            event_id,
            resource,
            draw(st.sampled_from(["SECURITY_ECHO.SUCCESS", "PROFIT_SHARING.SUCCESS", "X"])),
        )
        return kind, h, b, False
    return kind, headers, body, True  # "valid": foreign mchid/appid and odd amounts included


# -- the property ------------------------------------------------------------------------


def test_hostile_input_is_refused_and_never_published(harness: Harness) -> None:
    ledger = Ledger()

    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(hostile())
    def one(case: tuple[str, dict[str, str], bytes, bool]) -> None:
        kind, headers, body, should_publish = case
        status, answer = harness.post(body, headers)
        ledger.cases += 1
        ledger.kinds[kind] = ledger.kinds.get(kind, 0) + 1
        ledger.statuses[status] = ledger.statuses.get(status, 0) + 1
        assert status < 500, (kind, status, answer[:200])
        if should_publish:
            assert status == 204, (kind, status, answer[:200])
            ledger.expected.add(json.loads(body)["id"])
        elif kind == "ignored_type":
            assert status == 204, (kind, status)
        else:
            assert 400 <= status < 500, (kind, status, answer[:200])
            reply = json.loads(answer)
            assert reply["code"] == "FAIL" and reply["message"]
            assert APIV3_KEY not in reply["message"] and "o-fuzz-payer" not in reply["message"]

    one()
    assert ledger.cases >= CASES
    published = harness.loop.run_until_complete(_drain(harness.spy))
    assert set(published) == ledger.expected  # nothing rejected was published …
    assert len(published) == len(ledger.expected)  # … and each accepted one exactly once
    print(f"fuzz: {ledger.cases} cases, statuses {ledger.statuses}, kinds {ledger.kinds}")


async def _drain(queue: aio_pika.abc.AbstractQueue) -> list[str]:
    """The ids of the events published. Ingress's records of what it refused
    (``notification.rejected``, for the console) are not events: they are left out, and
    none may carry the payer's data."""
    ids: list[str] = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        if message.type == NOTIFICATION_REJECTED:
            assert b"o-fuzz-payer" not in message.body
            continue
        ids.append(message.message_id or "")
    return ids
