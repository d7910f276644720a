"""Ingress fixtures: WeChat Pay keys made in the test, the app on a real broker, a spy queue."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from paylane_common.topology import ORDER_PAYMENTS, declare_exchange
from paylane_common.wechatpay import build_message, build_notification, certificate_serial, sign
from paylane_ingress.main import build_app
from paylane_ingress.settings import IngressSettings
from services.ingress.tests.support import NOW, self_signed
from tests.support import hygiene

MCHID = "1900000109"
APPID = "wxd678efh567hg6787"


@dataclass(frozen=True)
class WechatKeys:
    apiv3_key: str
    public_key: RSAPrivateKey  # WeChat Pay's "public key" mode: we hold the private half
    public_key_id: str
    cert_key: RSAPrivateKey  # platform certificate mode
    cert_serial: str
    certs_dir: Path
    internal_secret: str


@pytest.fixture(scope="session")
def wechat_keys(tmp_path_factory: pytest.TempPathFactory) -> WechatKeys:
    public_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed(cert_key)
    certs_dir = tmp_path_factory.mktemp("platform_certs")
    (certs_dir / "wechatpay.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keys = WechatKeys(
        apiv3_key=secrets.token_hex(16),  # 32 ASCII characters, used as raw bytes
        public_key=public_key,
        public_key_id="PUB_KEY_ID_0114" + secrets.token_hex(10).upper(),
        cert_key=cert_key,
        cert_serial=certificate_serial(cert),
        certs_dir=certs_dir,
        internal_secret="internal-" + secrets.token_hex(12),
    )
    hygiene.register(keys.apiv3_key, keys.internal_secret)
    return keys


@pytest.fixture(scope="session")
def ingress_settings(amqp_url: str, wechat_keys: WechatKeys) -> IngressSettings:
    """Both key modes at once (a migration), as DESIGN §2 allows."""
    public_pem = wechat_keys.public_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return IngressSettings(
        amqp_url=amqp_url,
        wechatpay_apiv3_key=wechat_keys.apiv3_key,
        wechatpay_public_key=public_pem.decode(),
        wechatpay_public_key_id=wechat_keys.public_key_id,
        wechatpay_platform_certs_dir=wechat_keys.certs_dir,
        internal_api_secret=wechat_keys.internal_secret,
        notify_max_skew_s=300,
    )


StartApp = Callable[[], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def start_ingress(ingress_settings: IngressSettings) -> AsyncIterator[StartApp]:
    """Starts a private app (for tests that break it); closed at the end of the test."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start() -> TestClient[web.Request, web.Application]:
        client = TestClient(TestServer(build_app(ingress_settings, clock=lambda: NOW)))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture(scope="session")
async def client(
    ingress_settings: IngressSettings,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = build_app(ingress_settings, clock=lambda: NOW)
    async with TestClient(TestServer(app)) as client:
        yield client


def _transaction_resource(**changes: Any) -> dict[str, Any]:
    """A decrypted TRANSACTION.SUCCESS resource with unique ids."""
    resource: dict[str, Any] = {
        "appid": APPID,
        "mchid": MCHID,
        "out_trade_no": "P" + uuid.uuid4().hex[:20].upper(),
        "transaction_id": "42000" + str(uuid.uuid4().int)[:23],
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "attach": "",
        "success_time": "2025-11-22T10:53:20+08:00",
        "payer": {"openid": "oUpF8u" + secrets.token_urlsafe(16)},
        "amount": {"total": 2990, "payer_total": 2990, "currency": "CNY", "payer_currency": "CNY"},
    }
    resource.update(changes)
    return resource


def _refund_resource(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "mchid": MCHID,
        "out_trade_no": "P" + uuid.uuid4().hex[:20].upper(),
        "transaction_id": "42000" + str(uuid.uuid4().int)[:23],
        "out_refund_no": "R" + uuid.uuid4().hex[:20].upper(),
        "refund_id": "5000" + str(uuid.uuid4().int)[:25],
        "refund_status": "SUCCESS",
        "success_time": "2025-11-22T10:53:20+08:00",
        "user_received_account": "支付用户零钱",
        "amount": {"total": 2990, "refund": 1000, "payer_total": 2990, "payer_refund": 1000},
    }
    resource.update(changes)
    return resource


@dataclass(frozen=True)
class Signed:
    event_id: str
    headers: dict[str, str]
    body: bytes
    resource: dict[str, Any]

    def changed(self, body: bytes | None = None, drop: str = "", **headers: str) -> Signed:
        """Another body and/or headers (``Wechatpay_Nonce=`` sets ``Wechatpay-Nonce``)."""
        new = {k: v for k, v in self.headers.items() if k != drop}
        new.update({k.replace("_", "-"): v for k, v in headers.items()})
        return replace(self, body=self.body if body is None else body, headers=new)

    def resigned(self, key: RSAPrivateKey, body: bytes) -> Signed:
        """``body`` validly signed with ``key`` under these headers."""
        ts, nonce = self.headers["Wechatpay-Timestamp"], self.headers["Wechatpay-Nonce"]
        return self.changed(body, Wechatpay_Signature=sign(key, build_message(ts, nonce, body)))


Notify = Callable[..., Signed]


@pytest.fixture(scope="session")
def notification(wechat_keys: WechatKeys) -> Notify:
    """``notification(event_type=..., resource=..., signing_key=..., serial=..., ...)``."""

    def make(
        event_type: str = "TRANSACTION.SUCCESS",
        resource: dict[str, Any] | None = None,
        *,
        original_type: str | None = None,
        signing_key: RSAPrivateKey | None = None,
        serial: str | None = None,
        skew: int = 0,
        apiv3_key: str | None = None,
    ) -> Signed:
        if resource is None:
            refund = event_type.startswith("REFUND.")
            resource = _refund_resource() if refund else _transaction_resource()
        event_id = "EV-" + uuid.uuid4().hex
        headers, body = build_notification(
            event_id=event_id,
            event_type=event_type,
            resource_plaintext=resource,
            original_type=original_type
            or ("refund" if event_type.startswith("REFUND.") else "transaction"),
            apiv3_key=apiv3_key or wechat_keys.apiv3_key,
            signing_key=signing_key or wechat_keys.public_key,
            serial=serial or wechat_keys.public_key_id,
            timestamp=NOW + skew,
        )
        return Signed(event_id, headers, body, resource)

    return make


@pytest.fixture(scope="session")
def transaction_resource() -> Callable[..., dict[str, Any]]:
    """``transaction_resource(**changes)``: a decrypted TRANSACTION.SUCCESS resource."""
    return _transaction_resource


class Spy:
    """An exclusive queue bound ``#`` on ``paylane``: sees everything the app publishes."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, queue: aio_pika.abc.AbstractQueue):
        self._channel = channel
        self.queue = queue

    async def drain(self) -> list[AbstractIncomingMessage]:
        """Everything published so far. The app answers only after the broker confirmed, so
        a marker published (confirmed) now is queued after all of it: read up to the marker."""
        marker = "marker-" + uuid.uuid4().hex
        await self._channel.default_exchange.publish(
            aio_pika.Message(b"", message_id=marker), routing_key=self.queue.name, mandatory=True
        )
        seen: list[AbstractIncomingMessage] = []
        while True:
            message = await self.queue.get(no_ack=True, fail=False, timeout=5)
            assert message is not None, "the confirmed marker is missing from the spy queue"
            if message.message_id == marker:
                return seen
            seen.append(message)


@pytest.fixture
async def spy(amqp_connection: AbstractRobustConnection) -> AsyncIterator[Spy]:
    channel = await amqp_connection.channel()
    exchange = await declare_exchange(channel)
    queue = await channel.declare_queue(f"test.spy.{uuid.uuid4().hex}", exclusive=True)
    await queue.bind(exchange, routing_key="#")
    yield Spy(channel, queue)
    await queue.delete(if_unused=False, if_empty=False)
    # What ingress published also landed in order.payments: leave it empty for other suites.
    payments = await channel.get_queue(ORDER_PAYMENTS.name, ensure=False)
    await payments.purge()
    await channel.close()


KEY_VARIABLES = (
    "WECHATPAY_APIV3_KEY",
    "WECHATPAY_PUBLIC_KEY",
    "WECHATPAY_PUBLIC_KEY_ID",
    "WECHATPAY_PLATFORM_CERTS_DIR",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, wechat_keys: WechatKeys) -> pytest.MonkeyPatch:
    """A valid ingress environment (public key mode) to break one variable at a time."""
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    pem = wechat_keys.public_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    monkeypatch.setenv("WECHATPAY_APIV3_KEY", "0123456789abcdefABCDEF0123456789")
    monkeypatch.setenv("WECHATPAY_PUBLIC_KEY", pem.decode())
    monkeypatch.setenv("WECHATPAY_PUBLIC_KEY_ID", wechat_keys.public_key_id)
    return monkeypatch
