"""``paylane dev …``: local development helpers (never for production).

``init`` writes throw-away WeChat Pay keys and an env file for ``make run``; ``order``
creates a user and a pending order in the database; ``notify`` signs and sends a
``TRANSACTION.SUCCESS`` notification for it exactly as WeChat Pay would.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dotenv import dotenv_values

from paylane_common.contract.catalog import DEFAULT_CATALOG
from paylane_common.contract.ids import new_row_id
from paylane_common.contract.tokens import (
    SESSION_AUDIENCE,
    TokenSigner,
    load_signing_key,
    private_pem,
    public_pem,
)
from paylane_common.runtime.service import command_resources
from paylane_common.runtime.settings import BaseServiceSettings, load_settings
from paylane_common.storage import db
from paylane_common.wechatpay import load_private_key
from paylane_common.wechatpay.testing import (
    new_apiv3_key,
    new_private_key,
    new_public_key_id,
    new_serial_no,
    private_key_pem,
    public_key_pem,
    signed_notification,
    transaction_resource,
)

DEV_DIR = Path(".dev")
DEV_MCHID = "1900000109"
DEV_APPID = "wxd678efh567hg6787"


def init(args: argparse.Namespace) -> int:
    """Create ``.dev/`` keys and ``.dev/env``; later calls keep them and add what is new."""
    directory: Path = args.dir
    directory.mkdir(parents=True, exist_ok=True)
    keys = {}
    for name in ("platform", "merchant"):
        path = directory / f"{name}_private_key.pem"
        if not path.exists():
            path.write_text(private_key_pem(new_private_key()))
        keys[name] = load_private_key(path.read_bytes())
    (directory / "platform_public_key.pem").write_text(public_key_pem(keys["platform"]))
    # The client tokens' Ed25519 key: the order service signs, the notifier gets only
    # the public half (the Procfile keeps the private one from it).
    token_key = directory / "client_token_private_key.pem"
    if not token_key.exists():
        token_key.write_text(private_pem(Ed25519PrivateKey.generate()))
        token_key.chmod(0o600)
    token_public = directory / "client_token_public_key.pem"
    token_public.write_text(public_pem(load_signing_key(token_key.read_text())))
    wanted = {
        "WECHATPAY_MCHID": DEV_MCHID,
        "WECHATPAY_APPID": DEV_APPID,
        "WECHATPAY_APIV3_KEY": new_apiv3_key(),
        "WECHATPAY_PUBLIC_KEY_ID": new_public_key_id(),
        "WECHATPAY_PUBLIC_KEY_FILE": str((directory / "platform_public_key.pem").resolve()),
        "WECHATPAY_MERCHANT_PRIVATE_KEY_FILE": str(
            (directory / "merchant_private_key.pem").resolve()
        ),
        "WECHATPAY_MERCHANT_SERIAL_NO": new_serial_no(),
        "WECHATPAY_API_BASE": "http://127.0.0.1:8090",
        "WECHATPAY_NOTIFY_URL": "http://127.0.0.1:8080/notify/wechatpay",
        "SANDBOX_PLATFORM_PRIVATE_KEY_FILE": str(
            (directory / "platform_private_key.pem").resolve()
        ),
        # WeChat's retry schedule at 1/10 (15 s → 1.5 s) so a demo shows retries quickly.
        "SANDBOX_TIME_FACTOR": "0.1",
        # At least 32 bytes each (the services refuse shorter ones), and two of them.
        "INTERNAL_API_SECRET": secrets.token_urlsafe(32),
        "BACKEND_API_SECRET": secrets.token_urlsafe(32),
        # The mini-program login (POST /auth/miniprogram) against the sandbox's jscode2session.
        "WECHAT_API_BASE": "http://127.0.0.1:8090",
        **dict.fromkeys(("WECHAT_APP_SECRET", "SANDBOX_APP_SECRET"), secrets.token_urlsafe(24)),
        "CLIENT_TOKEN_PRIVATE_KEY_FILE": str(token_key.resolve()),
        "CLIENT_TOKEN_PUBLIC_KEY_FILE": str(token_public.resolve()),
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
        async with command_resources(settings, "dev") as opened:
            async with db.transaction(await opened.pool(maxsize=1)) as cur:
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
    signer = TokenSigner.from_pem(Path(env["CLIENT_TOKEN_PRIVATE_KEY_FILE"]).read_text())
    # A new user: session version 0 (no paylane_user_sessions row).
    token = signer.session(user_id, version=0, out_trade_no=out_trade_no)
    session = signer.verifier.verify(token, SESSION_AUDIENCE)
    ticket = signer.stream_ticket(user_id, session_expires_at=session.expires_at)
    print(f"user_id={user_id} out_trade_no={out_trade_no} amount_total={package.price_fen}")
    print(f"client_token={token}")
    print(f"stream_ticket={ticket}  (for /ws?ticket= or /events?ticket=, within a minute)")
    return 0


def notify(args: argparse.Namespace) -> int:
    env = _dev_env(args.dir)
    platform_key = load_private_key((args.dir / "platform_private_key.pem").read_bytes())
    resource = transaction_resource(
        args.out_trade_no,
        args.amount,
        args.transaction_id,
        appid=env["WECHATPAY_APPID"],
        mchid=env["WECHATPAY_MCHID"],
        openid="o-dev-payer",
        success_time=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
    )
    headers, body = signed_notification(
        resource,
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
