"""The existing system's env file on real RabbitMQ, MariaDB and the sandbox: ingress and
the order service started with only its names (``WECHAT_*`` with PEMs on one line,
``DB_*``) take an order and its payment; ``paylane config import`` of that file, started
with paylane's names, does the same; ``paylane config check`` reaches the database and
the broker it names."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiomysql
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dotenv import dotenv_values

from paylane_common.contract.tokens import private_pem
from paylane_common.runtime.existing_env import DB_PARTS
from paylane_common.runtime.settings import MySQLParams
from tests.support import hygiene
from tests.support.polling import eventually
from tests.support.queries import order_status
from tests.support.stack import Stack, free_port
from tests.support.stack_api import new_order, sandbox
from tests.support.stack_config import BACKEND_SECRET
from tests.support.wechat import FakeWechat

pytestmark = pytest.mark.integration

WECHAT = FakeWechat()
TOKEN_KEY = private_pem(Ed25519PrivateKey.generate())
#: What the existing system has no name for: paylane's additions, in paylane's names.
PAYLANE_ONLY = {
    "CLIENT_TOKEN_PRIVATE_KEY": TOKEN_KEY,
    "BACKEND_API_SECRET": BACKEND_SECRET,
    "RECONCILE_AFTER_S": "600",
    "RECONCILE_INTERVAL_S": "30",
}


def one_line(pem: str) -> str:
    return pem.strip().replace("\n", "\\n")


def existing_env(mysql_url: str, notify_url: str) -> dict[str, str]:
    """The Node backend's merchant and database variables, its PEMs on one line."""
    db = MySQLParams.from_url(mysql_url)
    env = {
        "WECHAT_APPID": WECHAT.appid,
        "WECHAT_MCHID": WECHAT.mchid,
        "WECHAT_SERIAL_NO": WECHAT.merchant_serial_no,
        "WECHAT_PRIVATE_KEY": one_line(WECHAT.merchant_private_key_pem),
        "WECHAT_APIV3_KEY": WECHAT.apiv3_key,
        "WECHAT_PUBLIC_KEY": one_line(WECHAT.platform_public_key_pem),
        "WECHAT_PUBLIC_KEY_ID": WECHAT.public_key_id,
        "WECHAT_NOTIFY_URL": notify_url,
        "DB_HOST": db.host,
        "DB_PORT": str(db.port),
        "DB_USER": db.user,
        "DB_NAME": db.database,
    }
    if db.password:
        env["DB_PASSWORD"] = db.password
    return env


def warnings_in(log: Path) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == "existing_config_names"]


async def paylane(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``paylane ARGV`` as a process: its exit code and its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paylane.cli",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def pays(stack: Stack, pool: aiomysql.Pool) -> None:
    """An order placed by the backend is paid in the sandbox and settles as paid."""
    order = await new_order(stack, "basic")
    status, paid = await sandbox(stack, "POST", f"/sandbox/orders/{order.out_trade_no}/pay")
    assert status == 200, paid

    async def settled() -> bool:
        return await order_status(pool, order.out_trade_no) == "paid"

    await eventually(settled, 30, what=f"{order.out_trade_no} paid")


async def test_the_existing_env_file_runs_ingress_and_order_as_it_is_and_imported(
    amqp_url: str,
    mysql_url: str,
    db_pool: aiomysql.Pool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # make exports MYSQL_URL: paylane's own name would win over DB_*.
    monkeypatch.delenv("MYSQL_URL", raising=False)
    hygiene.register(WECHAT.apiv3_key, BACKEND_SECRET)
    stack = Stack({"AMQP_URL": amqp_url}, tmp_path)
    ingress_port = free_port()
    notify_url = f"http://127.0.0.1:{ingress_port}/notify/wechatpay"
    existing = existing_env(mysql_url, notify_url)
    try:
        box = await stack.start("sandbox", WECHAT.sandbox_env())
        paylane_only = {**PAYLANE_ONLY, "WECHATPAY_API_BASE": box.url}
        ingress = await stack.start("ingress", existing, port=ingress_port)
        order = await stack.start("order", {**existing, **paylane_only})
        await pays(stack, db_pool)
        # One warning in each, naming the old names it read.
        for service in (ingress, order):
            [warning] = warnings_in(service.log_path)
            assert warning["used"]["WECHATPAY_APIV3_KEY"] == ["WECHAT_APIV3_KEY"]
        # In the order the URL is made of them (a password only where the server has one).
        db_parts = [name for name in DB_PARTS if name in existing]
        assert warnings_in(order.log_path)[0]["used"]["MYSQL_URL"] == db_parts
        await stack.stop("order")

        # The same file through `paylane config import`, the order service on its output.
        source = tmp_path / "existing.env"
        source.write_text(
            # Single-quoted: the PEMs' \n stay literal, as the existing files have them.
            "".join(f"{name}='{value}'\n" for name, value in {**existing, **paylane_only}.items())
        )
        out = tmp_path / "imported"
        code, report = await paylane("config", "import", str(source), "--out", str(out))
        assert code == 0, report
        imported = {k: str(v) for k, v in dotenv_values(out / "paylane.env").items()}
        assert not any(name.startswith(("WECHAT_", "DB_")) for name in imported)
        assert "MYSQL_URL_FILE" in imported and "WECHATPAY_APIV3_KEY" not in imported
        order = await stack.start("order", imported, alias="order-imported")
        stack.services["order"] = stack.services.pop("order-imported")  # for new_order
        await pays(stack, db_pool)
        assert warnings_in(order.log_path) == []
    finally:
        await stack.stop_all()


async def test_config_check_reaches_the_database_and_broker_it_names(
    amqp_url: str, mysql_url: str, tmp_path: Path
) -> None:
    base = {k: v for k, v in os.environ.items() if k != "MYSQL_URL"}
    env = {
        **base,
        **existing_env(mysql_url, "https://pay.example.com/notify/wechatpay"),
        **PAYLANE_ONLY,
        "AMQP_URL": amqp_url,
    }
    code, shown = await paylane("config", "check", "--service", "order", env=env)
    assert code == 0, shown
    assert shown.rstrip().endswith("no problems")
    assert WECHAT.apiv3_key not in shown and "BEGIN PRIVATE KEY" not in shown

    # A database that is not there is a problem naming the variable it came from.
    env["DB_NAME"] = "paylane_no_such_database"
    code, shown = await paylane("config", "check", "--service", "order", env=env)
    assert code == 1, shown
    assert "problem: MYSQL_URL (given as DB_HOST, DB_PORT" in shown
    assert "mysql not reachable" in shown
    assert shown.rstrip().endswith("1 problem(s)")
