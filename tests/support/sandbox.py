"""The WeChat Pay sandbox run in process (aiohttp TestServer), with keys made per session,
for tests that need a real counterpart to paylane's WeChat Pay client."""

from __future__ import annotations

import secrets
import string
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.x509.oid import NameOID

from paylane_common.settings import load_settings
from paylane_common.wechatpay import MerchantSigner, VerifierKeys
from paylane_sandbox.app_keys import SANDBOX
from paylane_sandbox.main import build_app
from paylane_sandbox.sandbox import Sandbox
from paylane_sandbox.settings import SandboxSettings
from tests.support import hygiene

MCHID = "1900000109"
APPID = "wxd678efh567hg6787"


def new_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def self_signed_pem(key: RSAPrivateKey, common_name: str = "unrelated test cert") -> bytes:
    """A certificate PEM of ``key`` (e.g. an old platform certificate for a certs dir)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = datetime.now(UTC) - timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class SandboxKeys:
    """Both sides' secrets: the merchant API key and WeChat Pay's platform key."""

    merchant_key: RSAPrivateKey = field(default_factory=new_key)
    platform_key: RSAPrivateKey = field(default_factory=new_key)
    apiv3_key: str = field(
        default_factory=lambda: "".join(
            secrets.choice(string.ascii_letters + string.digits) for _ in range(32)
        )
    )
    merchant_serial: str = field(default_factory=lambda: secrets.token_hex(20).upper())
    public_key_id: str = field(
        default_factory=lambda: "PUB_KEY_ID_0114" + secrets.token_hex(10).upper()
    )
    mchid: str = MCHID
    appid: str = APPID

    def settings(self, **overrides: Any) -> SandboxSettings:
        hygiene.register(self.apiv3_key)
        values: dict[str, Any] = {
            "wechatpay_mchid": self.mchid,
            "wechatpay_apiv3_key": self.apiv3_key,
            "wechatpay_appid": self.appid,
            "wechatpay_merchant_private_key": private_pem(self.merchant_key),
            "wechatpay_merchant_serial_no": self.merchant_serial,
            "sandbox_platform_private_key": private_pem(self.platform_key),
            "wechatpay_public_key_id": self.public_key_id,
            "sandbox_time_factor": 0.01,
            "sandbox_refund_mode": "manual",
            "log_format": "console",
        }
        values.update(overrides)
        return load_settings(SandboxSettings, **values)

    def signer(self) -> MerchantSigner:
        return MerchantSigner(self.mchid, self.merchant_serial, self.merchant_key)

    def public_key_only(self) -> VerifierKeys:
        """What a public-key-mode merchant knows of WeChat Pay."""
        return VerifierKeys(self.public_key_id, self.platform_key.public_key())


@dataclass
class RunningSandbox:
    client: TestClient[web.Request, web.Application]

    @property
    def base_url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    @property
    def state(self) -> Sandbox:
        return self.client.app[SANDBOX]

    async def control(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A control API call (``/sandbox/...``): ``(status, json or None)``."""
        async with self.client.request(method, path, json=body) as response:
            data = await response.json() if response.content_type == "application/json" else None
            return response.status, data

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = await self.control(method, path, body)
        assert status in (200, 201, 204), (method, path, status, data)
        return data

    async def info(self) -> dict[str, Any]:
        data: dict[str, Any] = await self.ok("GET", "/sandbox/info")
        return data

    async def faults(self) -> list[dict[str, Any]]:
        data = await self.ok("GET", "/sandbox/faults")
        faults: list[dict[str, Any]] = data["faults"]
        return faults

    async def add_fault(self, **spec: Any) -> dict[str, Any]:
        data: dict[str, Any] = await self.ok("POST", "/sandbox/faults", spec)
        return data


@asynccontextmanager
async def running_sandbox(settings: SandboxSettings) -> AsyncIterator[RunningSandbox]:
    async with TestClient(TestServer(build_app(settings))) as client:
        yield RunningSandbox(client)


def order_body(
    kind: str = "jsapi", out_trade_no: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A valid place-order body for ``kind`` (jsapi / native / h5 / app)."""
    body: dict[str, Any] = {
        "appid": APPID,
        "mchid": MCHID,
        "description": "premium package",
        "out_trade_no": out_trade_no or f"T{secrets.token_hex(8).upper()}",
        "notify_url": "http://127.0.0.1:9/notify/wechatpay",
        "amount": {"total": 990, "currency": "CNY"},
    }
    if kind.lower() == "jsapi":
        body["payer"] = {"openid": "o-payer-1"}
    if kind.lower() == "h5":
        body["scene_info"] = {"payer_client_ip": "203.0.113.9", "h5_info": {"type": "Wap"}}
    body.update(extra)
    return body
