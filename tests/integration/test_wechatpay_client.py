"""WechatPayClient and CertificateRefresher against the in-process sandbox (a real
counterpart: it checks our signatures, signs its answers, and injects faults), and ingress
accepting a new platform certificate serial after a background refresh (RabbitMQ)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from wechatpayv3.core import Core
from wechatpayv3.utils import rsa_decrypt, rsa_sign

from paylane_common.wechatpay import (
    CertificateRefresher,
    DecryptionError,
    NotificationVerifier,
    ResponseVerificationError,
    VerifierKeys,
    WechatPayApiError,
    WechatPayClient,
    WechatPayUnavailable,
    load_certificate,
    read_certificate,
)
from paylane_common.wechatpay.testing import (
    certificate_pem,
    new_event_id,
    new_private_key,
    order_request,
    self_signed_certificate,
    signed_notification,
)
from paylane_ingress.config import INGRESS_CONFIG
from paylane_ingress.main import build_app as build_ingress
from paylane_ingress.settings import IngressSettings
from paylane_sandbox.auth import MerchantAuthenticator
from tests.support.polling import eventually
from tests.support.sandbox import RunningSandbox, running_sandbox, sandbox_settings
from tests.support.wechat import FakeWechat

PLACE = "/v3/pay/transactions"
CERTIFICATES = "/v3/certificates"
StartSandbox = Callable[..., Awaitable[RunningSandbox]]


class Calls:
    """Every request the client's session starts, as ``(method, raw path, monotonic time)``,
    and what it sent: ``(raw path, headers, body)``."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, float]] = []
        self.sent: list[tuple[str, dict[str, str], bytes]] = []

    def trace_config(self) -> aiohttp.TraceConfig:
        async def on_start(_s: Any, _ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
            self.log.append((params.method, params.url.raw_path, time.monotonic()))
            self.sent.append((params.url.raw_path, dict(params.headers), b""))

        async def on_chunk(_s: Any, _ctx: Any, params: aiohttp.TraceRequestChunkSentParams) -> None:
            path, headers, body = self.sent[-1]
            self.sent[-1] = (path, headers, body + params.chunk)

        config = aiohttp.TraceConfig()
        config.on_request_start.append(on_start)
        config.on_request_chunk_sent.append(on_chunk)
        return config

    def times(self, path_prefix: str) -> list[float]:
        return [at for _, path, at in self.log if path.startswith(path_prefix)]

    def count(self, path_prefix: str) -> int:
        return len(self.times(path_prefix))


@pytest.fixture(scope="module")
def keys() -> FakeWechat:
    return FakeWechat()


@pytest.fixture
async def start_sandbox(keys: FakeWechat) -> AsyncIterator[StartSandbox]:
    """``await start_sandbox(**settings_overrides)``; every sandbox stops after the test."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> RunningSandbox:
            return await stack.enter_async_context(
                running_sandbox(sandbox_settings(keys, **overrides))
            )

        yield start


@pytest.fixture
async def sandbox(start_sandbox: StartSandbox) -> RunningSandbox:
    return await start_sandbox()


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
async def make_client(
    keys: FakeWechat, calls: Calls
) -> AsyncIterator[Callable[..., WechatPayClient]]:
    """``make_client(base_url, verifier_keys=public key only, verifier=None, **options)``:
    tiny backoff."""
    async with aiohttp.ClientSession(trace_configs=[calls.trace_config()]) as session:

        def make(
            base_url: str,
            verifier_keys: VerifierKeys | None = None,
            verifier: NotificationVerifier | None = None,
            **options: Any,
        ) -> WechatPayClient:
            options = {"backoff_initial_s": 0.001, "backoff_max_s": 0.005, **options}
            return WechatPayClient(
                base_url=base_url,
                mchid=keys.mchid,
                signer=keys.merchant_signer(),
                verifier=verifier or NotificationVerifier(verifier_keys or keys.verifier_keys()),
                session=session,
                **options,
            )

        yield make


async def both_modes(sandbox: RunningSandbox, keys: FakeWechat) -> VerifierKeys:
    """The platform key by public key id and by the sandbox's certificate serial."""
    serial = (await sandbox.info())["certificate_serial"]
    public = keys.platform_key.public_key()
    return VerifierKeys(keys.public_key_id, public, {serial: public})


async def api_error(call: Awaitable[Any]) -> tuple[int, str, bool]:
    with pytest.raises(WechatPayApiError) as caught:
        await call
    return caught.value.status, caught.value.code, caught.value.retryable


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- placing orders and verifying answers ------------------------------------------------


PREPAY = {
    "JSAPI": ("prepay_id", "wx"),
    "NATIVE": ("code_url", "weixin://wxpay/bizpayurl?pr="),
    "H5": ("h5_url", "https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id="),
}


@pytest.mark.parametrize("trade_type", list(PREPAY))
async def test_place_answers_the_prepay_shape_of_each_trade_type(
    start_sandbox: StartSandbox, make_client: Any, keys: FakeWechat, trade_type: str
) -> None:
    sandbox = await start_sandbox(sandbox_sign_mode="mixed")  # answers under both serials
    client = make_client(sandbox.base_url, await both_modes(sandbox, keys))
    body = order_request(trade_type)
    field, prefix = PREPAY[trade_type]

    answer = await client.place(trade_type, body)
    assert list(answer) == [field]
    assert answer[field].startswith(prefix) and len(answer[field]) > len(prefix)
    assert await client.place(trade_type, body) == answer  # idempotent
    order = await sandbox.ok("GET", f"/sandbox/orders/{body['out_trade_no']}")
    assert order["request"] == body  # the body arrived exactly as signed


async def test_an_answer_signed_under_an_unknown_serial_fails_verification(
    start_sandbox: StartSandbox, make_client: Any, keys: FakeWechat, calls: Calls
) -> None:
    sandbox = await start_sandbox(sandbox_sign_mode="certificate")
    body = order_request("native")

    with pytest.raises(ResponseVerificationError, match="failed verification") as caught:
        await make_client(sandbox.base_url).place("NATIVE", body)  # knows the public key only
    assert not isinstance(caught.value, WechatPayApiError)
    assert caught.value.reason == "unknown_serial"
    assert caught.value.request_id and len(caught.value.request_id) == 32  # WeChat's Request-ID
    assert calls.count(PLACE) == 1  # not retried

    answer = await make_client(sandbox.base_url, await both_modes(sandbox, keys)).place(
        "NATIVE", body
    )
    assert answer["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")


# --- the migration from platform certificates to the public key ------------------------------


async def certificate_only(sandbox: RunningSandbox, keys: FakeWechat) -> VerifierKeys:
    """The sandbox's platform certificate, as a merchant without the public key holds it."""
    async with sandbox.client.get("/sandbox/platform-certificate") as response:
        info = read_certificate(await response.text())
    known = VerifierKeys()
    known.add(info)
    return known


CLIENTS = ("public_key_only", "certificate_only", "both_modes")
#: Which client can verify the answers of which sandbox sign mode. ``mixed`` is WeChat's
#: migration: it signs under the serial the request names, so every client verifies it.
VERIFIES = {
    ("public_key_only", "public_key"): True,
    ("public_key_only", "certificate"): False,
    ("public_key_only", "mixed"): True,
    ("certificate_only", "public_key"): False,
    ("certificate_only", "certificate"): True,
    ("certificate_only", "mixed"): True,
    ("both_modes", "public_key"): True,
    ("both_modes", "certificate"): True,
    ("both_modes", "mixed"): True,
}


@pytest.mark.parametrize(("held", "mode"), list(VERIFIES))
async def test_each_client_against_each_sign_mode(
    start_sandbox: StartSandbox, make_client: Any, keys: FakeWechat, held: str, mode: str
) -> None:
    sandbox = await start_sandbox(sandbox_sign_mode=mode)
    if held == "public_key_only":
        verifier_keys = keys.verifier_keys()
    elif held == "certificate_only":
        verifier_keys = await certificate_only(sandbox, keys)
    else:
        verifier_keys = await both_modes(sandbox, keys)
    client = make_client(sandbox.base_url, verifier_keys)
    for _ in range(3):  # not one lucky answer
        call = client.place("NATIVE", order_request("native"))
        if VERIFIES[(held, mode)]:
            assert (await call)["code_url"]
        else:
            with pytest.raises(ResponseVerificationError) as caught:
                await call
            assert caught.value.reason == "unknown_serial"


# wechatpayv3 reads the naive not_valid_after that cryptography deprecates.
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
async def test_the_request_names_the_public_key_else_the_newest_valid_certificate(
    sandbox: RunningSandbox, make_client: Any, keys: FakeWechat
) -> None:
    """What the client sends is what wechatpayv3 sends: the public key id when it has one,
    else a certificate's serial (wechatpayv3: the one expiring last; expired ones unused)."""
    now = datetime.now(UTC)
    old = self_signed_certificate(
        new_private_key(), not_before=now - timedelta(days=400), lifetime=timedelta(days=405)
    )
    new = self_signed_certificate(
        new_private_key(), not_before=now - timedelta(days=1), lifetime=timedelta(days=900)
    )
    expired = self_signed_certificate(
        new_private_key(),
        not_before=now - timedelta(days=30),
        lifetime=timedelta(days=29),
    )
    certificates = [read_certificate(certificate_pem(c)) for c in (old, new, expired)]
    by_certificates = VerifierKeys()
    for info in certificates:
        by_certificates.add(info)
    assert by_certificates.request_serial(now.timestamp()) == certificates[1].serial
    official = Core.__new__(Core)  # its header logic, without its network bootstrap
    official._public_key_id = None
    official._certificates = [
        x509.load_pem_x509_certificate(certificate_pem(c).encode()) for c in (old, new)
    ]
    assert official._last_certificate().serial_number == new.serial_number
    # wechatpayv3 drops a leading zero nibble that wechatpay-go's "%X" of the bytes keeps.
    assert certificates[1].serial.lstrip("0") == hex(new.serial_number)[2:].upper()

    only_expired = VerifierKeys()
    only_expired.add(certificates[2])
    assert only_expired.request_serial(now.timestamp()) is None

    seen: list[str | None] = []
    both = keys.verifier_keys()
    for info in certificates:
        both.add(info)
    assert both.request_serial(now.timestamp()) == keys.public_key_id

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Wechatpay-Serial"))
        return web.json_response({"code": "SYSTEM_ERROR", "message": "recorded"}, status=400)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    async with TestServer(app) as server:
        base = str(server.make_url("")).rstrip("/")
        for verifier_keys in (both, by_certificates, only_expired):
            with pytest.raises(WechatPayApiError):
                await make_client(base, verifier_keys, max_attempts=1).query_refund("R1")
    assert seen == [keys.public_key_id, certificates[1].serial, None]


async def test_the_clients_signed_headers_win_and_a_callers_serial_is_sent_once(
    make_client: Any, keys: FakeWechat
) -> None:
    """A caller's headers go under the client's own, compared case-insensitively: they
    cannot replace the Authorization, Accept or Content-Type the request is signed and sent
    with, and the Wechatpay-Serial a caller names (the key its fields are encrypted under)
    is the one sent, once."""
    received: list[tuple[list[tuple[str, str]], bytes]] = []

    async def record(request: web.Request) -> web.Response:
        headers = [(k.decode().lower(), v.decode()) for k, v in request.raw_headers]
        received.append((headers, await request.read()))
        return web.json_response({"code": "PARAM_ERROR", "message": "recorded"}, status=400)

    certificate_serial = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
    caller = {
        "Authorization": 'WECHATPAY2-SHA256-RSA2048 mchid="1",signature="forged"',
        "accept": "text/html",
        "content-type": "text/plain",
        "wechatpay-serial": certificate_serial,
        "X-Trace": "t-1",
    }
    path = "/v3/refund/domestic/refunds"
    app = web.Application()
    app.router.add_post(path, record)
    async with TestServer(app) as server:
        client = make_client(str(server.make_url("")).rstrip("/"), max_attempts=1)
        with pytest.raises(WechatPayApiError):
            await client._call("POST", path, {"out_refund_no": "R1"}, caller)
        two = {"Wechatpay-Serial": keys.public_key_id, "wechatpay-serial": certificate_serial}
        with pytest.raises(ValueError, match="two different Wechatpay-Serial"):
            await client._call("POST", path, {"out_refund_no": "R1"}, two)

    [(headers, body)] = received

    def sent(name: str) -> list[str]:
        return [value for key, value in headers if key == name]

    assert sent("wechatpay-serial") == [certificate_serial]
    assert sent("accept") == ["application/json"]
    assert sent("content-type") == ["application/json"]
    assert sent("x-trace") == ["t-1"]
    [authorization] = sent("authorization")
    public = keys.merchant_key.public_key()
    # Checked as WeChat Pay checks it (the sandbox's check): the client's own signature.
    MerchantAuthenticator(keys.mchid, keys.merchant_serial_no, public).check(
        "POST", path, authorization, body
    )


async def test_an_unknown_serial_triggers_one_download_and_a_second_verification(
    start_sandbox: StartSandbox, make_client: Any, keys: FakeWechat, calls: Calls
) -> None:
    sandbox = await start_sandbox(sandbox_sign_mode="certificate")
    known = keys.verifier_keys()  # the public key only: the certificate is not known yet
    client = make_client(sandbox.base_url, known)
    CertificateRefresher(client, known, keys.apiv3_key, min_gap_s=3600)  # not started

    assert (await client.place("NATIVE", order_request("native")))["code_url"]
    assert calls.count(CERTIFICATES) == 1
    assert known.get((await sandbox.info())["certificate_serial"]) is not None
    assert (await client.place("NATIVE", order_request("native")))["code_url"]
    assert calls.count(CERTIFICATES) == 1  # known now: no more downloads


async def test_downloads_on_unknown_serials_are_rate_limited(
    start_sandbox: StartSandbox, make_client: Any, keys: FakeWechat, calls: Calls
) -> None:
    sandbox = await start_sandbox(sandbox_sign_mode="certificate")
    known = keys.verifier_keys()
    client = make_client(sandbox.base_url, known)
    CertificateRefresher(client, known, "w" * 32, min_gap_s=3600)  # a wrong APIv3 key

    for _ in range(3):
        with pytest.raises(ResponseVerificationError) as caught:
            await client.place("NATIVE", order_request("native"))
        assert caught.value.reason == "unknown_serial"
    assert calls.count(CERTIFICATES) == 1  # the failed download is not repeated at once


@pytest.mark.parametrize(
    ("age_s", "verified"), [(0, True), (299, True), (300, False), (-300, False)]
)
async def test_answers_signed_by_wechatpayv3_under_the_requested_serial(
    make_client: Any, keys: FakeWechat, age_s: int, verified: bool
) -> None:
    """wechatpayv3's signing acts as WeChat in migration: it signs under the serial the
    request names (the certificate when none). Our public-key-only client asks for the
    public key, so it verifies, unless the answer is 300 s or more old (as the official
    SDKs count it)."""
    seen: list[str | None] = []
    now = int(time.time()) + 0.9  # one frozen clock for both sides: no race with the second

    async def answer(request: web.Request) -> web.Response:
        requested = request.headers.get("Wechatpay-Serial")
        seen.append(requested)
        body = '{"code_url":"weixin://wxpay/bizpayurl?pr=v3"}'
        timestamp, nonce = str(int(now) - age_s), uuid.uuid4().hex
        signature = rsa_sign(keys.platform_key, f"{timestamp}\n{nonce}\n{body}\n")
        headers = {
            "Wechatpay-Serial": requested or "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
            "Wechatpay-Signature": signature,
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
            "Request-ID": "08F78BB5AF0610D302108B0F81D9CE1E",
        }
        return web.Response(body=body, headers=headers, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v3/pay/transactions/native", answer)
    async with TestServer(app) as server:
        verifier = NotificationVerifier(keys.verifier_keys(), clock=lambda: now)
        client = make_client(str(server.make_url("")).rstrip("/"), verifier=verifier)
        call = client.place("NATIVE", order_request("native"))
        if verified:
            assert (await call)["code_url"] == "weixin://wxpay/bizpayurl?pr=v3"
        else:
            with pytest.raises(ResponseVerificationError) as caught:
                await call
            assert caught.value.reason == "stale_timestamp"
            assert caught.value.request_id == "08F78BB5AF0610D302108B0F81D9CE1E"
    assert seen == [keys.public_key_id]


async def test_api_errors_keep_wechats_request_id(
    sandbox: RunningSandbox, make_client: Any
) -> None:
    with pytest.raises(WechatPayApiError) as caught:
        await make_client(sandbox.base_url).query_by_out_trade_no("T404404404")
    assert caught.value.code == "ORDER_NOT_EXIST"
    assert caught.value.request_id and len(caught.value.request_id) == 32


# --- query, close, refund --------------------------------------------------------------------


async def test_query_after_payment_then_refund(sandbox: RunningSandbox, make_client: Any) -> None:
    client = make_client(sandbox.base_url)
    body = order_request("jsapi")
    no = body["out_trade_no"]
    await client.place("JSAPI", body)
    assert (await client.query_by_out_trade_no(no))["trade_state"] == "NOTPAY"

    paid = await sandbox.ok("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
    by_no = await client.query_by_out_trade_no(no)
    assert by_no["trade_state"] == "SUCCESS"
    assert by_no["transaction_id"] == paid["transaction_id"]
    assert by_no["trade_type"] == "JSAPI" and by_no["amount"]["payer_total"] == 990
    assert await client.query_by_transaction_id(paid["transaction_id"]) == by_no

    out_refund_no = f"R{no}"
    request = {
        "out_trade_no": no,
        "out_refund_no": out_refund_no,
        "reason": "test",
        "amount": {"refund": 490, "total": 990, "currency": "CNY"},
    }
    refund = await client.create_refund(request)
    assert refund["status"] == "PROCESSING"
    assert refund["out_refund_no"] == out_refund_no
    assert refund["transaction_id"] == by_no["transaction_id"]
    assert refund["amount"]["refund"] == 490 and refund["refund_id"]
    assert (await client.query_refund(out_refund_no))["refund_id"] == refund["refund_id"]

    await sandbox.ok("PUT", "/sandbox/switches", {"drop_next": 1})  # nobody listens to notify_url
    await sandbox.ok("POST", f"/sandbox/refunds/{out_refund_no}/complete", {"status": "SUCCESS"})
    assert (await client.query_refund(out_refund_no))["status"] == "SUCCESS"
    assert (await client.query_by_out_trade_no(no))["trade_state"] == "REFUND"


@pytest.mark.parametrize(
    ("out_trade_no", "on_the_wire"),
    [("C{hex}", "C{hex}"), ("A-b*c|d-{hex}", "A-b%2Ac%7Cd-{hex}")],
    ids=["plain", "star-pipe-dash"],
)
async def test_close_then_query_shows_closed(
    sandbox: RunningSandbox, make_client: Any, calls: Calls, out_trade_no: str, on_the_wire: str
) -> None:
    hex_part = uuid.uuid4().hex[:10].upper()
    no, wire = out_trade_no.format(hex=hex_part), on_the_wire.format(hex=hex_part)
    client = make_client(sandbox.base_url)
    await client.place("NATIVE", order_request("native", out_trade_no=no))

    queried = await client.query_by_out_trade_no(no)
    assert (queried["out_trade_no"], queried["trade_state"]) == (no, "NOTPAY")
    assert await client.close(no) is None  # 204
    assert (await client.query_by_out_trade_no(no))["trade_state"] == "CLOSED"
    assert await client.close(no) is None  # closing a closed order: 204 again
    # the sandbox checked our signature over the path exactly as sent
    paths = {path for _, path, _ in calls.log}
    assert f"{PLACE}/out-trade-no/{wire}/close" in paths
    assert f"{PLACE}/out-trade-no/{wire}" in paths


# --- abnormal refunds ------------------------------------------------------------------------


async def abnormal_refund(sandbox: RunningSandbox, client: WechatPayClient) -> dict[str, Any]:
    """A paid order's refund that WeChat Pay reports ABNORMAL (refunds wait: manual mode)."""
    body = order_request("native")
    no = body["out_trade_no"]
    await client.place("NATIVE", body)
    await sandbox.ok("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
    amount = {"refund": 990, "total": 990, "currency": "CNY"}
    refund = await client.create_refund(
        {"out_trade_no": no, "out_refund_no": f"R{no}", "amount": amount}
    )
    await sandbox.ok("POST", f"/sandbox/refunds/R{no}/complete", {"status": "ABNORMAL"})
    return refund


@pytest.mark.parametrize("mode", ["public_key", "certificate"])
async def test_abnormal_refund_to_a_card_is_encrypted_under_the_platform_key(
    start_sandbox: StartSandbox, make_client: Any, keys: FakeWechat, calls: Calls, mode: str
) -> None:
    sandbox = await start_sandbox(sandbox_sign_mode=mode)
    if mode == "public_key":
        verifier_keys, serial = keys.verifier_keys(), keys.public_key_id
    else:  # what a certificate-mode merchant holds: the downloaded certificate only
        serial = (await sandbox.info())["certificate_serial"]
        verifier_keys = VerifierKeys()
        verifier_keys.add_certificate(serial, keys.platform_key.public_key())
    client = make_client(sandbox.base_url, verifier_keys)
    refund = await abnormal_refund(sandbox, client)

    answer = await client.apply_abnormal_refund(
        refund["refund_id"],
        refund["out_refund_no"],
        "USER_BANK_CARD",
        bank_type="ICBC_DEBIT",
        bank_account="6214830000000000",
        real_name="张三",
    )
    assert (answer["status"], answer["channel"]) == ("PROCESSING", "OTHER_BANKCARD")
    [(_, headers, raw)] = [c for c in calls.sent if c[0].endswith("/apply-abnormal-refund")]
    assert headers["Wechatpay-Serial"] == serial
    sent = json.loads(raw)
    assert sent["bank_type"] == "ICBC_DEBIT"
    # The independent SDK decrypts what paylane sent, as WeChat Pay would.
    assert rsa_decrypt(sent["bank_account"], keys.platform_key) == "6214830000000000"
    assert rsa_decrypt(sent["real_name"], keys.platform_key) == "张三"
    state = await sandbox.ok("GET", f"/sandbox/refunds/{refund['out_refund_no']}")
    assert state["abnormal_refund"]["real_name"] == "张三"


async def test_abnormal_refund_to_the_merchant_and_its_errors(
    sandbox: RunningSandbox, make_client: Any
) -> None:
    client = make_client(sandbox.base_url)
    refund = await abnormal_refund(sandbox, client)
    no = refund["out_refund_no"]
    with pytest.raises(ValueError, match="USER_BANK_CARD needs"):
        await client.apply_abnormal_refund(refund["refund_id"], no, "USER_BANK_CARD")

    answer = await client.apply_abnormal_refund(refund["refund_id"], no, "MERCHANT_BANK_CARD")
    assert answer["status"] == "PROCESSING"
    await sandbox.ok("POST", f"/sandbox/refunds/{no}/complete", {"status": "SUCCESS"})
    assert await api_error(
        client.apply_abnormal_refund(
            refund["refund_id"],
            no,
            "USER_BANK_CARD",
            bank_type="X",
            bank_account="1",
            real_name="2",
        )
    ) == (400, "INVALID_REQUEST", False)
    assert await api_error(
        client.apply_abnormal_refund("50000000000000000000000000001", no, "MERCHANT_BANK_CARD")
    ) == (404, "RESOURCE_NOT_EXISTS", False)


# --- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code"), [(500, "SYSTEM_ERROR"), (429, "FREQUENCY_LIMITED")])
async def test_retryable_errors_are_retried_until_success(
    sandbox: RunningSandbox, make_client: Any, calls: Calls, status: int, code: str
) -> None:
    await sandbox.add_fault(path_prefix=PLACE, count=2, status=status, code=code)
    answer = await make_client(sandbox.base_url).place("JSAPI", order_request("jsapi"))
    assert answer["prepay_id"].startswith("wx")
    assert calls.count(PLACE) == 3
    assert await sandbox.faults() == []  # both faults consumed


async def test_a_slow_answer_times_out_and_is_retried(
    sandbox: RunningSandbox, make_client: Any, calls: Calls
) -> None:
    await sandbox.add_fault(path_prefix=PLACE, count=1, delay_s=0.3)
    client = make_client(sandbox.base_url, request_timeout_s=0.1)
    assert (await client.place("NATIVE", order_request("native")))["code_url"]
    assert calls.count(PLACE) == 2


async def test_param_error_is_raised_after_one_attempt(
    sandbox: RunningSandbox, make_client: Any, calls: Calls
) -> None:
    await sandbox.add_fault(path_prefix=PLACE, count=2, status=400, code="PARAM_ERROR")
    place = make_client(sandbox.base_url).place("JSAPI", order_request("jsapi"))
    assert await api_error(place) == (400, "PARAM_ERROR", False)
    assert calls.count(PLACE) == 1
    assert [f["remaining"] for f in await sandbox.faults()] == [1]


async def test_out_trade_no_used_is_not_retried(
    sandbox: RunningSandbox, make_client: Any, calls: Calls
) -> None:
    client = make_client(sandbox.base_url)
    body = order_request("jsapi")
    await client.place("JSAPI", body)
    place = client.place("JSAPI", {**body, "description": "another body"})
    assert await api_error(place) == (403, "OUT_TRADE_NO_USED", False)
    assert calls.count(PLACE) == 2  # one each


async def test_persistent_server_errors_give_up_after_max_attempts(
    sandbox: RunningSandbox, make_client: Any, calls: Calls
) -> None:
    await sandbox.add_fault(path_prefix=PLACE, count=10, status=500)
    place = make_client(sandbox.base_url, max_attempts=3).place("JSAPI", order_request("jsapi"))
    assert await api_error(place) == (500, "SYSTEM_ERROR", True)
    assert calls.count(PLACE) == 3
    assert [f["remaining"] for f in await sandbox.faults()] == [7]


async def test_unreachable_api_is_unavailable_within_bounds(make_client: Any, calls: Calls) -> None:
    base_url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(WechatPayUnavailable):
        await make_client(base_url, max_attempts=3).query_by_out_trade_no("T123456789")
    assert calls.count("/v3/") == 3  # bounded by max_attempts

    calls.log.clear()
    client = make_client(
        base_url, max_attempts=10_000, max_elapsed_s=0.3, backoff_initial_s=0.01, backoff_max_s=0.02
    )
    with pytest.raises(WechatPayUnavailable):
        await client.query_by_out_trade_no("T123456789")
    # The time budget, not the attempt cap, ended it: several tries, far fewer than 10,000.
    assert 1 < calls.count("/v3/") < 10_000


# --- platform certificates -------------------------------------------------------------------


@pytest.mark.parametrize("sign_mode", ["public_key", "certificate"])
async def test_download_certificates_decrypts_the_sandbox_certificate(
    start_sandbox: StartSandbox, make_client: Any, keys: FakeWechat, sign_mode: str
) -> None:
    # certificate mode: the client knows no certificate yet and bootstraps from the download
    sandbox = await start_sandbox(sandbox_sign_mode=sign_mode)
    client = make_client(sandbox.base_url)
    [cert] = await client.download_certificates(keys.apiv3_key)

    assert cert.serial == (await sandbox.info())["certificate_serial"]
    async with sandbox.client.get("/sandbox/platform-certificate") as response:
        assert load_certificate(await response.text())[0] == cert.serial
    assert cert.public_key.public_numbers() == keys.platform_key.public_key().public_numbers()
    assert cert.not_after > datetime.now(UTC)
    with pytest.raises(DecryptionError):
        await client.download_certificates("x" * 32)


async def test_refresh_once_adds_the_certificate(
    sandbox: RunningSandbox, make_client: Any, keys: FakeWechat
) -> None:
    known = keys.verifier_keys()
    client = make_client(sandbox.base_url, known)
    serial = (await sandbox.info())["certificate_serial"]
    refresher = CertificateRefresher(client, known, keys.apiv3_key)
    assert known.get(serial) is None

    assert await refresher.refresh_once() == 1
    assert known.get(serial) is not None
    assert known.serials() == [keys.public_key_id, serial]
    assert await refresher.refresh_once() == 0
    await sandbox.ok("PUT", "/sandbox/switches", {"sign_mode": "certificate"})
    assert (await client.place("NATIVE", order_request("native")))["code_url"]


async def test_requested_refreshes_are_rate_limited(
    sandbox: RunningSandbox, make_client: Any, keys: FakeWechat, calls: Calls
) -> None:
    gap = 0.4
    known = keys.verifier_keys()
    serial = (await sandbox.info())["certificate_serial"]
    refresher = CertificateRefresher(
        make_client(sandbox.base_url, known), known, keys.apiv3_key, min_gap_s=gap
    )
    refresher.start()
    try:
        refresher.request_refresh()
        refresher.request_refresh()
        await eventually(lambda: known.get(serial) is not None, timeout=3)
        assert calls.count(CERTIFICATES) == 1
        refresher.request_refresh()
        refresher.request_refresh()
        await eventually(lambda: calls.count(CERTIFICATES) >= 2, timeout=gap + 3)
        first, second = calls.times(CERTIFICATES)
        assert second - first >= gap - 0.02  # one download per min_gap_s at most
    finally:
        await refresher.stop()


# --- ingress: a new Wechatpay-Serial accepted after a background refresh ----------------------


@pytest.mark.integration
async def test_ingress_learns_a_new_serial_in_the_background(
    start_sandbox: StartSandbox, make_client: Any, keys: FakeWechat, amqp_url: str, tmp_path: Any
) -> None:
    sandbox = await start_sandbox(sandbox_sign_mode="certificate")
    serial = (await sandbox.info())["certificate_serial"]
    body = order_request("jsapi")
    await make_client(sandbox.base_url, await both_modes(sandbox, keys)).place("JSAPI", body)
    await sandbox.ok("POST", f"/sandbox/orders/{body['out_trade_no']}/pay", {"notify": False})
    resource = (await sandbox.ok("GET", f"/sandbox/orders/{body['out_trade_no']}"))["transaction"]
    event_id = new_event_id()

    def notification() -> tuple[dict[str, str], bytes]:
        """Signed now by the sandbox platform key, under its certificate serial."""
        return signed_notification(
            resource,
            apiv3_key=keys.apiv3_key,
            signing_key=keys.platform_key,
            serial=serial,
            event_id=event_id,
        )

    old_cert = self_signed_certificate(new_private_key())  # an unrelated old certificate
    (tmp_path / "old.pem").write_text(certificate_pem(old_cert))
    settings = IngressSettings(
        amqp_url=amqp_url,
        wechatpay_apiv3_key=keys.apiv3_key,
        wechatpay_platform_certs_dir=tmp_path,
        wechatpay_mchid=keys.mchid,
        wechatpay_merchant_private_key=keys.merchant_private_key_pem,
        wechatpay_merchant_serial_no=keys.merchant_serial_no,
        wechatpay_api_base=sandbox.base_url,
    )
    assert settings.refreshes_certificates
    # A slow download: the 401 must not wait for it (no network call inside the request).
    await sandbox.add_fault(path_prefix=CERTIFICATES, count=1, delay_s=0.3)

    async with TestClient(TestServer(build_ingress(settings))) as ingress:
        known = ingress.app[INGRESS_CONFIG].verifier.keys
        headers, data = notification()
        async with ingress.post("/notify/wechatpay", data=data, headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["message"] == "unknown Wechatpay-Serial"
        assert known.get(serial) is None

        await eventually(lambda: known.get(serial) is not None, timeout=5)
        assert await sandbox.faults() == []  # the download went to the sandbox

        headers, data = notification()  # the same event, signed afresh
        async with ingress.post("/notify/wechatpay", data=data, headers=headers) as response:
            assert response.status == 204, await response.text()
