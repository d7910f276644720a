"""The stack on WeChat Cloud Hosting's terms (``WECHATPAY_MODE=cloudhosting``): the sandbox
plays the platform's open interface (``/_/pay/*``) and delivers results to ingress's
``/notify/cloudhosting`` as the platform delivers them to the container; no service holds
a WeChat Pay key."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tests.support.stack import Stack, free_port
from tests.support.stack_config import APP_SECRET, ORDER_ENV, order_env
from tests.support.wechat import FakeWechat

ENV_ID = "prod-env-1a2b3c"
SERVICE = "paylane-ingress"
CALLBACK_PATH = "/notify/cloudhosting"
#: Every WeChat Pay key a stack's services would get, blanked: this mode needs none.
NO_KEYS = {
    "WECHATPAY_APIV3_KEY": "",
    "WECHATPAY_PUBLIC_KEY": "",
    "WECHATPAY_PUBLIC_KEY_ID": "",
    "WECHATPAY_MERCHANT_PRIVATE_KEY": "",
    "WECHATPAY_MERCHANT_SERIAL_NO": "",
}


async def start_cloudhosting_stack(
    stack: Stack,
    wechat: FakeWechat,
    order_settings: Mapping[str, str] = ORDER_ENV,
    *,
    ingress_amqp: Callable[[str], str] | None = None,
    trust_headers: bool = True,
) -> dict[str, str]:
    """The sandbox (the platform, delivering to ingress's port, picked first), ingress,
    entitlement, notifier and order, all in cloudhosting mode; ``ingress_amqp`` maps the
    broker's URL to ingress's (through a fault proxy). Returns the order service's
    environment."""
    ports = {"ingress": free_port(), "order": free_port(), "notifier": free_port()}
    sandbox = await stack.start(
        "sandbox",
        {
            **wechat.sandbox_env(),
            "SANDBOX_APP_SECRET": APP_SECRET,
            "SANDBOX_CLOUDHOSTING_URL": f"http://127.0.0.1:{ports['ingress']}",
            "SANDBOX_ORDER_API_URL": f"http://127.0.0.1:{ports['order']}",
            "SANDBOX_NOTIFIER_URL": f"http://127.0.0.1:{ports['notifier']}",
        },
    )
    stack.base_env.update(
        {
            **NO_KEYS,
            "WECHATPAY_MODE": "cloudhosting",
            "CLOUDHOSTING_TRUST_HEADERS": "true" if trust_headers else "false",
            # Ingress takes the platform's calls of this environment only.
            "CLOUDHOSTING_ENV_ID": ENV_ID,
        }
    )
    amqp_url = stack.base_env["AMQP_URL"]
    ingress = {"AMQP_URL": ingress_amqp(amqp_url)} if ingress_amqp else {}
    await stack.start("ingress", ingress, port=ports["ingress"])
    stack.base_env.update(
        {
            "CLOUDHOSTING_API_BASE": sandbox.url,
            "CLOUDHOSTING_SERVICE": SERVICE,
            "CLOUDHOSTING_CALLBACK_PATH": CALLBACK_PATH,
        }
    )
    order = order_env(sandbox.url, order_settings)
    for name in ("entitlement", "notifier", "order"):
        await stack.start(name, order if name == "order" else None, port=ports.get(name))
    return order
