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
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from paylane_common.broker.topology import ORDER_PAYMENTS, ORDER_REJECTIONS, declare_exchange
from paylane_common.contract.events import NOTIFICATION_REJECTED
from paylane_common.wechatpay import build_message, certificate_serial, sign
from paylane_common.wechatpay.testing import (
    FakeWechatPay,
    certificate_pem,
    new_event_id,
    new_private_key,
    self_signed_certificate,
    signed_notification,
)
from paylane_ingress.main import build_app
from paylane_ingress.settings import IngressSettings
from services.ingress.tests.support import CERT_START, NOW
from tests.support import hygiene


@dataclass(frozen=True, kw_only=True)
class WechatKeys(FakeWechatPay):
    """WeChat Pay in both key modes at once: the kit's public key (``platform_key`` under
    ``public_key_id``) and a platform certificate of another key, in ``certs_dir``."""

    cert_key: RSAPrivateKey
    cert_serial: str
    certs_dir: Path
    internal_secret: str


@pytest.fixture(scope="session")
def wechat_keys(tmp_path_factory: pytest.TempPathFactory) -> WechatKeys:
    cert_key = new_private_key()
    cert = self_signed_certificate(cert_key, not_before=CERT_START)
    certs_dir = tmp_path_factory.mktemp("platform_certs")
    (certs_dir / "wechatpay.pem").write_text(certificate_pem(cert))
    keys = WechatKeys(
        cert_key=cert_key,
        cert_serial=certificate_serial(cert),
        certs_dir=certs_dir,
        internal_secret="internal-" + secrets.token_hex(12),
    )
    hygiene.register(keys.apiv3_key, keys.internal_secret)
    return keys


@pytest.fixture(scope="session")
def ingress_settings(amqp_url: str, wechat_keys: WechatKeys) -> IngressSettings:
    """Both key modes at once (a migration), as docs/configuration.md allows."""
    return IngressSettings(
        amqp_url=amqp_url,
        wechatpay_apiv3_key=wechat_keys.apiv3_key,
        wechatpay_public_key=wechat_keys.platform_public_key_pem,
        wechatpay_public_key_id=wechat_keys.public_key_id,
        wechatpay_platform_certs_dir=wechat_keys.certs_dir,
        internal_api_secret=wechat_keys.internal_secret,
        notify_max_skew_s=300,
        # The session's app answers every ingress test of a worker: with the default 20
        # rejection records a second, a test's record could fall under the cap that the
        # tests before it in that second used up. The cap has a test of its own.
        ingress_rejections_per_s=10_000,
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
            resource = wechat_keys.refund() if refund else wechat_keys.transaction()
        event_id = new_event_id()
        headers, body = signed_notification(
            resource,
            apiv3_key=apiv3_key or wechat_keys.apiv3_key,
            signing_key=signing_key or wechat_keys.platform_key,
            serial=serial or wechat_keys.public_key_id,
            event_type=event_type,
            event_id=event_id,
            timestamp=NOW + skew,
            original_type=original_type,
        )
        return Signed(event_id, headers, body, resource)

    return make


@pytest.fixture(scope="session")
def transaction_resource(wechat_keys: WechatKeys) -> Callable[..., dict[str, Any]]:
    """``transaction_resource(**changes)``: a decrypted TRANSACTION.SUCCESS resource."""
    return wechat_keys.transaction


class Spy:
    """An exclusive queue bound ``#`` on ``paylane``: sees everything the app publishes."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, queue: aio_pika.abc.AbstractQueue):
        self._channel = channel
        self.queue = queue

    async def drain(self) -> list[AbstractIncomingMessage]:
        """Every event published so far. The app answers only after the broker confirmed, so
        a marker published (confirmed) now is queued after all of it: read up to the marker.
        The records of rejected notifications (``notification.rejected``, published in the
        background after the answer, rejections.py) are not events: left out."""
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
            if message.routing_key != NOTIFICATION_REJECTED:
                seen.append(message)


@pytest.fixture
async def spy(amqp_connection: AbstractRobustConnection) -> AsyncIterator[Spy]:
    channel = await amqp_connection.channel()
    exchange = await declare_exchange(channel)
    queue = await channel.declare_queue(f"test.spy.{uuid.uuid4().hex}", exclusive=True)
    await queue.bind(exchange, routing_key="#")
    yield Spy(channel, queue)
    await queue.delete(if_unused=False, if_empty=False)
    # What ingress published also landed in order.payments (and its rejection records in
    # order.rejections): leave them empty for other suites.
    for spec in (ORDER_PAYMENTS, ORDER_REJECTIONS):
        await (await channel.get_queue(spec.name, ensure=False)).purge()
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
    monkeypatch.setenv("WECHATPAY_APIV3_KEY", "0123456789abcdefABCDEF0123456789")
    monkeypatch.setenv("WECHATPAY_PUBLIC_KEY", wechat_keys.platform_public_key_pem)
    monkeypatch.setenv("WECHATPAY_PUBLIC_KEY_ID", wechat_keys.public_key_id)
    return monkeypatch
