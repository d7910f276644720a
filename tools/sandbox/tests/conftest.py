"""Sandbox fixtures: keys made here, the sandbox on a TestServer, a merchant that signs its
requests with paylane_common's MerchantSigner, and a notify endpoint that records what
arrives. No RabbitMQ or MySQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from multidict import CIMultiDictProxy

from paylane_common.runtime.settings import load_settings
from paylane_common.wechatpay import (
    MerchantSigner,
    NotificationHeaders,
    NotificationVerifier,
    VerificationError,
    VerifierKeys,
    decrypt_notification,
    parse_notification,
)
from paylane_common.wechatpay.testing import (
    APPID,
    MCHID,
    new_apiv3_key,
    new_private_key,
    order_request,
    private_key_pem,
)
from paylane_sandbox.app_keys import SANDBOX
from paylane_sandbox.main import build_app
from paylane_sandbox.settings import SandboxSettings

MERCHANT_SERIAL = "3775B6A45ACD588826D15E583A95F5DD11112222"
PUBLIC_KEY_ID = "PUB_KEY_ID_0114232134912410000000000000001"
CERT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
TIME_FACTOR = 0.01


@pytest.fixture(scope="session")
def merchant_key() -> RSAPrivateKey:
    return new_private_key()


@pytest.fixture(scope="session")
def platform_key() -> RSAPrivateKey:
    return new_private_key()


@pytest.fixture(scope="session")
def apiv3_key() -> str:
    return new_apiv3_key()


@pytest.fixture
def make_settings(
    merchant_key: RSAPrivateKey, platform_key: RSAPrivateKey, apiv3_key: str
) -> Callable[..., SandboxSettings]:
    def make(_drop: tuple[str, ...] | list[str] = (), **overrides: Any) -> SandboxSettings:
        values: dict[str, Any] = {
            "wechatpay_mchid": MCHID,
            "wechatpay_apiv3_key": apiv3_key,
            "wechatpay_appid": APPID,
            "wechatpay_merchant_private_key": private_key_pem(merchant_key),
            "wechatpay_merchant_serial_no": MERCHANT_SERIAL,
            "sandbox_platform_private_key": private_key_pem(platform_key),
            "wechatpay_public_key_id": PUBLIC_KEY_ID,
            "sandbox_platform_cert_serial": CERT_SERIAL,
            "sandbox_time_factor": TIME_FACTOR,
            "log_format": "console",
        }
        values.update(overrides)
        for name in _drop:
            values.pop(name, None)
        return load_settings(SandboxSettings, **values)

    return make


@pytest.fixture(scope="session")
def verifier(platform_key: RSAPrivateKey) -> NotificationVerifier:
    """What a merchant holds: the platform key by id and by certificate serial."""
    public = platform_key.public_key()
    return NotificationVerifier(VerifierKeys(PUBLIC_KEY_ID, public, {CERT_SERIAL: public}))


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Harness:
    """The sandbox, a signing merchant and the control API."""

    client: TestClient[web.Request, web.Application]
    signer: MerchantSigner
    verifier: NotificationVerifier
    apiv3_key: str

    async def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        signer: MerchantSigner | None = None,
        authorization: str | None = None,
        verify: bool = True,
        headers: dict[str, str] | None = None,
        serial: str | None = None,
    ) -> Answer:
        """A merchant call (with ``headers`` added); the answer's WeChat Pay signature is
        verified unless told not to."""
        data = b"" if body is None else json.dumps(body).encode()
        if authorization is None:
            authorization = (signer or self.signer).authorization(method, path, data)
        headers = {**(headers or {}), "Authorization": authorization, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if serial is not None:  # the key the merchant asks WeChat to sign the answer with
            headers["Wechatpay-Serial"] = serial
        async with self.client.request(method, path, data=data, headers=headers) as response:
            answer = Answer(response.status, response.headers, await response.read())
        if verify:
            self.verifier.verify(NotificationHeaders.from_mapping(answer.headers), answer.body)
        return answer

    async def control(self, method: str, path: str, body: Any = None) -> Answer:
        async with self.client.request(method, path, json=body) as response:
            return Answer(response.status, response.headers, await response.read())

    async def place(self, kind: str = "jsapi", **overrides: Any) -> tuple[dict[str, Any], Answer]:
        body = order_request(kind, **overrides)
        return body, await self.api("POST", f"/v3/pay/transactions/{kind}", body)

    async def notifications(self, **query: str) -> list[dict[str, Any]]:
        answer = await self.control("GET", "/sandbox/notifications?" + urlencode(query))
        assert answer.status == 200
        records: list[dict[str, Any]] = answer.json["notifications"]
        return records

    async def wait_notifications(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 3.0, **query: str
    ) -> list[dict[str, Any]]:
        """Wait until ``predicate`` holds for the sandbox's record (it is updated just after
        the merchant answers, so it may trail what the receiver saw), then read it."""
        sender = self.client.app[SANDBOX].notification_sender

        def matching() -> list[dict[str, Any]]:
            records = [n.to_json() for n in sender.records]
            return [r for r in records if all(r.get(k) == v for k, v in query.items())]

        await sender.wait_for(lambda: predicate(matching()), timeout)
        return await self.notifications(**query)

    async def switches(self, **values: Any) -> dict[str, Any]:
        answer = await self.control("PUT", "/sandbox/switches", values)
        assert answer.status == 200, answer.body
        result: dict[str, Any] = answer.json
        return result


@pytest.fixture
def body_for() -> Callable[..., dict[str, Any]]:
    """``body_for(kind, **fields)``: a valid place-order body of the kit's merchant."""
    return order_request


@pytest.fixture
async def start_sandbox(
    make_settings: Callable[..., SandboxSettings],
    merchant_key: RSAPrivateKey,
    verifier: NotificationVerifier,
    apiv3_key: str,
) -> AsyncIterator[Callable[..., Any]]:
    """``await start_sandbox(**settings_overrides)`` → a running Harness."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(**overrides: Any) -> Harness:
        client = TestClient(TestServer(build_app(make_settings(**overrides))))
        await client.start_server()
        clients.append(client)
        signer = MerchantSigner(MCHID, MERCHANT_SERIAL, merchant_key)
        return Harness(client, signer, verifier, apiv3_key)

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def sandbox(start_sandbox: Callable[..., Any]) -> Harness:
    harness: Harness = await start_sandbox()
    return harness


@dataclass
class Received:
    path: str
    at: float  # loop time of arrival
    headers: dict[str, str]
    body: bytes
    answered: int
    verified: bool | None = None
    resource: dict[str, Any] | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """The merchant's notify endpoint: answers ``script`` first, then ``default``.

    With ``check`` on, it answers 401 to what does not verify (as a real merchant must),
    and decrypts what does into ``resource``.
    """

    verifier: NotificationVerifier
    apiv3_key: str
    script: list[int] = field(default_factory=list)
    default: int = 204
    check: bool = True
    url: str = ""
    queue: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = asyncio.get_running_loop().time()
        received = Received(request.path, now, dict(request.headers), body, 0)
        status = self.script.pop(0) if self.script else self.default
        if self.check:
            try:
                self.verifier.verify(NotificationHeaders.from_mapping(request.headers), body)
                received.verified = True
                received.resource = decrypt_notification(parse_notification(body), self.apiv3_key)
            except VerificationError:
                received.verified = False
                status = 401
        received.answered = status
        await self.queue.put(received)
        if status == 204:
            return web.Response(status=204)
        return web.json_response({"code": "FAIL", "message": "失败"}, status=status)

    async def next(self, timeout: float = 3.0) -> Received:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def take(self, n: int, timeout: float = 3.0) -> list[Received]:
        return [await self.next(timeout) for _ in range(n)]

    def refund_url(self) -> str:
        return self.url.replace("/notify/wechatpay", "/notify/refunds")


@pytest.fixture
async def receiver(verifier: NotificationVerifier, apiv3_key: str) -> AsyncIterator[Receiver]:
    recv = Receiver(verifier, apiv3_key)
    app = web.Application()
    app.router.add_post("/notify/wechatpay", recv.handle)
    app.router.add_post("/notify/refunds", recv.handle)
    server = TestServer(app)
    await server.start_server()
    recv.url = str(server.make_url("/notify/wechatpay"))
    yield recv
    await server.close()
