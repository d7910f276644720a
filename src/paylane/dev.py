"""``paylane dev …``: local development helpers (never for production).

``init`` writes throw-away WeChat Pay keys and an env file for ``make run``; ``order``
creates a user and a pending order in the database; ``notify`` signs and sends a
``TRANSACTION.SUCCESS`` notification for it exactly as WeChat Pay would.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import string
import time
import uuid
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dotenv import dotenv_values

from paylane_common import db
from paylane_common.catalog import DEFAULT_CATALOG
from paylane_common.ids import new_row_id
from paylane_common.settings import BaseServiceSettings, load_settings
from paylane_common.tokens import issue_client_token
from paylane_common.wechatpay import build_notification, load_private_key

DEV_DIR = Path(".dev")
DEV_MCHID = "1900000109"
DEV_APPID = "wxd678efh567hg6787"


def init(args: argparse.Namespace) -> int:
    """Create ``.dev/`` keys and ``.dev/env``; later calls keep them and add what is new."""
    directory: Path = args.dir
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.PrivateFormat.PKCS8
    keys = {}
    for name in ("platform", "merchant"):
        path = directory / f"{name}_private_key.pem"
        if not path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            path.write_bytes(
                key.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption())
            )
        keys[name] = load_private_key(path.read_bytes())
    (directory / "platform_public_key.pem").write_bytes(
        keys["platform"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    alphabet = string.ascii_letters + string.digits
    wanted = {
        "WECHATPAY_MCHID": DEV_MCHID,
        "WECHATPAY_APPID": DEV_APPID,
        "WECHATPAY_APIV3_KEY": "".join(secrets.choice(alphabet) for _ in range(32)),
        "WECHATPAY_PUBLIC_KEY_ID": f"PUB_KEY_ID_{uuid.uuid4().hex[:24].upper()}",
        "WECHATPAY_PUBLIC_KEY_FILE": str((directory / "platform_public_key.pem").resolve()),
        "WECHATPAY_MERCHANT_PRIVATE_KEY_FILE": str(
            (directory / "merchant_private_key.pem").resolve()
        ),
        "WECHATPAY_MERCHANT_SERIAL_NO": uuid.uuid4().hex[:40].upper(),
        "WECHATPAY_API_BASE": "http://127.0.0.1:8090",
        "WECHATPAY_NOTIFY_URL": "http://127.0.0.1:8080/notify/wechatpay",
        "SANDBOX_PLATFORM_PRIVATE_KEY_FILE": str(
            (directory / "platform_private_key.pem").resolve()
        ),
        # WeChat's retry schedule at 1/10 (15 s → 1.5 s) so a demo shows retries quickly.
        "SANDBOX_TIME_FACTOR": "0.1",
        "INTERNAL_API_SECRET": secrets.token_urlsafe(24),
        "BACKEND_API_SECRET": secrets.token_urlsafe(24),
        # The mini-program login (POST /auth/miniprogram) against the sandbox's jscode2session.
        "WECHAT_API_BASE": "http://127.0.0.1:8090",
        **dict.fromkeys(("WECHAT_APP_SECRET", "SANDBOX_APP_SECRET"), secrets.token_urlsafe(24)),
        "CLIENT_TOKEN_SECRET": secrets.token_urlsafe(32),
        "LOG_FORMAT": "console",
    }
    env_file = directory / "env"
    present = _read_env(env_file) if env_file.exists() else {}
    missing = {k: v for k, v in wanted.items() if k not in present}
    with env_file.open("a") as out:
        out.writelines(f"{k}={v}\n" for k, v in missing.items())
    print(f"{env_file}: " + (f"added {', '.join(missing)}" if missing else "up to date"))
    return 0


def _read_env(path: Path) -> dict[str, str]:
    """``KEY=value`` lines as honcho reads them for ``make run`` (``honcho start -e``):
    comments and quotes understood, ``$VAR`` taken literally, a bare ``KEY`` ignored."""
    values = dotenv_values(path, interpolate=False)
    return {key: value for key, value in values.items() if value is not None}


def _dev_env(directory: Path) -> dict[str, str]:
    env_file = directory / "env"
    if not env_file.exists():
        raise SystemExit(f"{env_file} is missing: run `paylane dev init` (or `make run`) first")
    return _read_env(env_file)


def order(args: argparse.Namespace) -> int:
    env = _dev_env(args.dir)
    package = DEFAULT_CATALOG[args.package]
    settings = load_settings(BaseServiceSettings)

    async def create() -> tuple[str, str]:
        out_trade_no = f"DEV{time.strftime('%Y%m%d%H%M%S')}{secrets.token_hex(3).upper()}"
        user_id = new_row_id("user")
        async with db.create_pool(settings.mysql_url, maxsize=1) as pool:
            async with db.transaction(pool) as cur:
                await cur.execute(
                    "INSERT INTO users (id, openid) VALUES (%s, %s)",
                    (user_id, f"o-dev-{secrets.token_hex(6)}"),
                )
                # As the cloud function writes them: yuan in ``amount`` (the fen column,
                # amount_total, is generated from it), no generation.
                await cur.execute(
                    "INSERT INTO payment_orders (id, out_trade_no, user_id, generation_id,"
                    " package_type, trade_type, amount, status)"
                    " VALUES (%s, %s, %s, '', %s, 'JSAPI', %s, 'pending')",
                    (new_row_id("order"), out_trade_no, user_id, package.name, package.price_yuan),
                )
        return user_id, out_trade_no

    user_id, out_trade_no = asyncio.run(create())
    token = issue_client_token(env["CLIENT_TOKEN_SECRET"], user_id, out_trade_no)
    print(f"user_id={user_id} out_trade_no={out_trade_no} amount_total={package.price_fen}")
    print(f"client_token={token}")
    return 0


def notify(args: argparse.Namespace) -> int:
    env = _dev_env(args.dir)
    platform_key = load_private_key((args.dir / "platform_private_key.pem").read_bytes())
    resource = {
        "appid": env["WECHATPAY_APPID"],
        "mchid": env["WECHATPAY_MCHID"],
        "out_trade_no": args.out_trade_no,
        "transaction_id": args.transaction_id or f"42{uuid.uuid4().int % 10**26:026d}",
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "success_time": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "payer": {"openid": "o-dev-payer"},
        "amount": {"total": args.amount, "payer_total": args.amount, "currency": "CNY"},
    }
    headers, body = build_notification(
        event_id=f"EV-{uuid.uuid4().hex[:20]}",
        event_type="TRANSACTION.SUCCESS",
        resource_plaintext=resource,
        original_type="transaction",
        apiv3_key=env["WECHATPAY_APIV3_KEY"],
        signing_key=platform_key,
        serial=env["WECHATPAY_PUBLIC_KEY_ID"],
    )

    async def send() -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(args.url, data=body, headers=headers) as response,
        ):
            return response.status, await response.text()

    status, text = asyncio.run(send())
    print(f"POST {args.url} -> {status} {text}")
    return 0 if status in (200, 204) else 1


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = commands.add_parser("dev", help="local development helpers (throw-away keys)")
    dev.add_argument("--dir", type=Path, default=DEV_DIR, help="where dev keys live")
    verbs = dev.add_subparsers(dest="verb", required=True)
    verbs.add_parser("init", help="write .dev/ keys and env file").set_defaults(func=init)
    create = verbs.add_parser("order", help="create a user and a pending order (uses MYSQL_URL)")
    create.add_argument("--package", choices=sorted(DEFAULT_CATALOG), default="premium")
    create.set_defaults(func=order)
    send = verbs.add_parser("notify", help="send a signed TRANSACTION.SUCCESS to ingress")
    send.add_argument("out_trade_no")
    send.add_argument("amount", type=int, help="amount paid, in fen")
    send.add_argument("--transaction-id")
    send.add_argument("--url", default="http://127.0.0.1:8080/notify/wechatpay")
    send.set_defaults(func=notify)
