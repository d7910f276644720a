"""The whole stack as the end-to-end and chaos tests run it (every service a process, the
WeChat Pay sandbox one too): its secrets, the sandbox's and the order service's settings,
and the order in which it starts."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from paylane_common.contract.tokens import TokenSigner, private_pem, public_pem
from tests.support import hygiene
from tests.support.stack import Service, Stack, free_port, wait_ready
from tests.support.wechat import APP_APPID, FakeWechat

#: The client tokens' key: the order service's alone; every service gets the public half.
TOKEN_KEY = Ed25519PrivateKey.generate()
TOKEN_PRIVATE_KEY = private_pem(TOKEN_KEY)
TOKEN_PUBLIC_KEY = public_pem(TOKEN_KEY)
#: Mints what the order service would (a test's own tokens and tickets).
TOKENS = TokenSigner(TOKEN_KEY)


def minted_ticket(user_id: str, session_ttl_s: int = 3600) -> str:
    """A stream ticket for ``user_id`` minted here, as the order service would (without
    asking it: for tests where it may be down)."""
    return TOKENS.stream_ticket(user_id, session_expires_at=int(time.time()) + session_ttl_s)


INTERNAL_SECRET = "e2e-internal-secret-of-at-least-32-bytes"
#: The cloud function's credential: for ingress's internal API only.
INTERNAL = {"X-Internal-Secret": INTERNAL_SECRET}
#: The app backend's credential on the order API (never given to ingress).
BACKEND_SECRET = "e2e-backend-secret-of-at-least-32-bytes"
BACKEND = {"X-Internal-Secret": BACKEND_SECRET}
#: The mini-program's AppSecret, known to the sandbox's jscode2session and to order.
APP_SECRET = "e2e-miniprogram-app-secret"
#: The payer of ``FakeWechat.transaction``.
PAYER_OPENID = "o-test-openid"
#: The reconciler passes every 0.5 s and asks about an order once 1 s old, again once 2 s
#: old, then when it expires (4 s). Its effects sweep waits an hour: test_hybrid.py runs it
#: on demand (reconcile --once).
ORDER_ENV = {
    "RECONCILE_AFTER_S": "1",
    "RECONCILE_SECOND_LOOK_S": "2",
    "RECONCILE_INTERVAL_S": "0.5",
    "ORDER_TTL_S": "4",
    "SWEEP_GRACE_S": "3600",
}


def order_env(sandbox_url: str, settings: Mapping[str, str] = ORDER_ENV) -> dict[str, str]:
    """The order service's own settings: the backend secret, the client tokens' private
    key (no other service gets it), the mini-program login, the mobile app's appid (APP
    orders), shipping declared to WeChat (the sandbox plays it; a retry after half a
    second), webhooks to local receivers; then ``settings`` (the reconciler's pace), which
    may override any of them."""
    return {
        "CLIENT_TOKEN_PRIVATE_KEY": TOKEN_PRIVATE_KEY,
        "WECHATPAY_APP_APPID": APP_APPID,
        "BACKEND_API_SECRET": BACKEND_SECRET,
        "WECHAT_APP_SECRET": APP_SECRET,
        "WECHAT_API_BASE": sandbox_url,
        "SHIPPING_UPLOAD": "virtual",
        "SHIPPING_RETRY_BASE_S": "0.5",
        "SHIPPING_INTERVAL_S": "1",
        # Development: the tests' webhook receivers listen on 127.0.0.1 over http.
        "WEBHOOK_ALLOW_PRIVATE": "true",
        **settings,
    }


def new_stack(amqp_url: str, mysql_url: str, wechat: FakeWechat, log_dir: Path) -> Stack:
    """A stack (nothing started yet) whose services share the secrets above and the keys
    of ``wechat``; every one of those is registered as never to be logged."""
    hygiene.register(
        TOKEN_PRIVATE_KEY,
        INTERNAL_SECRET,
        BACKEND_SECRET,
        APP_SECRET,
        wechat.apiv3_key,
        PAYER_OPENID,
    )
    stack = Stack(
        {
            "AMQP_URL": amqp_url,
            "MYSQL_URL": mysql_url,
            "CLIENT_TOKEN_PUBLIC_KEY": TOKEN_PUBLIC_KEY,
            "INTERNAL_API_SECRET": INTERNAL_SECRET,
            **wechat.ingress_env(),
        },
        log_dir,
    )
    # However the order service is (re)started, it signs; no other service gets the key.
    stack.service_env["order"] = {"CLIENT_TOKEN_PRIVATE_KEY": TOKEN_PRIVATE_KEY}
    return stack


async def start_stack(
    stack: Stack, wechat: FakeWechat, order_settings: Mapping[str, str] = ORDER_ENV
) -> dict[str, str]:
    """The sandbox playing WeChat Pay, ingress (its notify URL is the sandbox's callback),
    then entitlement, notifier and order. Returns the order service's environment, to
    start it again alike. The ports of order and notifier are picked first, so that the
    sandbox's checkout demo reaches them (its same-origin proxy)."""
    ports = {"order": free_port(), "notifier": free_port()}
    demo = {
        "SANDBOX_ORDER_API_URL": f"http://127.0.0.1:{ports['order']}",
        "SANDBOX_NOTIFIER_URL": f"http://127.0.0.1:{ports['notifier']}",
    }
    sandbox = await stack.start(
        "sandbox", {**wechat.sandbox_env(), "SANDBOX_APP_SECRET": APP_SECRET, **demo}
    )
    ingress = await stack.start("ingress")
    stack.base_env.update(wechat.merchant_env(sandbox.url, f"{ingress.url}/notify/wechatpay"))
    order = order_env(sandbox.url, order_settings)
    # Every start of "order" (a second replica too) is configured alike: replicas that
    # disagree, on SHIPPING_UPLOAD say, undo each other's bindings (paylane_order.bindings).
    stack.service_env.setdefault("order", {}).update(order)
    for name in ("entitlement", "notifier", "order"):
        await stack.start(name, order if name == "order" else None, port=ports.get(name))
    return order


async def start_cohosted_stack(
    stack: Stack, wechat: FakeWechat, order_settings: Mapping[str, str] = ORDER_ENV
) -> dict[str, str]:
    """:func:`start_stack` with order, entitlement and notifier in one process (``paylane
    serve consumers``), each on its own ports (``<NAME>__HTTP_PORT``…), each known to the
    stack by its name; the order service's own settings are given with its prefix."""
    sandbox = await stack.start(
        "sandbox", {**wechat.sandbox_env(), "SANDBOX_APP_SECRET": APP_SECRET}
    )
    ingress = await stack.start("ingress")
    stack.base_env.update(wechat.merchant_env(sandbox.url, f"{ingress.url}/notify/wechatpay"))
    order = order_env(sandbox.url, order_settings)
    env = {f"ORDER__{name}": value for name, value in order.items()}
    ports = {name: (free_port(), free_port()) for name in COHOSTED}
    for name, (http, admin) in ports.items():
        env |= {f"{name.upper()}__HTTP_PORT": str(http), f"{name.upper()}__ADMIN_PORT": str(admin)}
    process = await stack.start("consumers", env, ready=False)
    for name, (http, admin) in ports.items():
        stack.services[name] = Service(name, http, process.process, process.log_path, admin)
    for name in COHOSTED:
        await wait_ready(stack.services[name])
    return order


#: What ``paylane serve consumers`` runs.
COHOSTED = ("order", "entitlement", "notifier")
