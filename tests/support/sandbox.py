"""The WeChat Pay sandbox run in process (aiohttp TestServer), with keys made per session,
for tests that need a real counterpart to paylane's WeChat Pay client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from paylane_common.settings import load_settings
from paylane_common.wechatpay.testing import FakeWechatPay
from paylane_sandbox.app_keys import SANDBOX
from paylane_sandbox.main import build_app
from paylane_sandbox.sandbox import Sandbox
from paylane_sandbox.settings import SandboxSettings
from tests.support import hygiene


@dataclass(frozen=True)
class SandboxKeys(FakeWechatPay):
    """Both sides' secrets (the kit's merchant account) as the sandbox's settings."""

    def settings(self, **overrides: Any) -> SandboxSettings:
        hygiene.register(self.apiv3_key)
        values: dict[str, Any] = {
            "wechatpay_mchid": self.mchid,
            "wechatpay_apiv3_key": self.apiv3_key,
            "wechatpay_appid": self.appid,
            "wechatpay_merchant_private_key": self.merchant_private_key_pem,
            "wechatpay_merchant_serial_no": self.merchant_serial_no,
            "sandbox_platform_private_key": self.platform_private_key_pem,
            "wechatpay_public_key_id": self.public_key_id,
            "sandbox_time_factor": 0.01,
            "sandbox_refund_mode": "manual",
            "log_format": "console",
        }
        values.update(overrides)
        return load_settings(SandboxSettings, **values)


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
