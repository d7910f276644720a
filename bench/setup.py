"""The bench's own vhost, database, keys and service environment."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomysql
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from paylane_common.contract.tokens import TokenSigner, private_pem, public_pem
from paylane_common.storage.migrate import migrate
from tests.support.infra import BrokerControl
from tests.support.seeding import add_orders
from tests.support.wechat import FakeWechat

#: The client tokens' key: the order service signs (``ORDER_ENV``), the rest check.
TOKEN_KEY = Ed25519PrivateKey.generate()
TOKENS = TokenSigner(TOKEN_KEY)
#: The order service's own (``Stack.service_env["order"]``): the notifier refuses it.
ORDER_ENV = {"CLIENT_TOKEN_PRIVATE_KEY": private_pem(TOKEN_KEY)}
PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"


@dataclass
class BenchEnv:
    vhost: str
    amqp_url: str
    mysql_url: str
    database: str
    wechat: FakeWechat
    broker: BrokerControl

    def service_env(self, mysql_url: str | None = None) -> dict[str, str]:
        return {
            "AMQP_URL": self.amqp_url,
            "MYSQL_URL": mysql_url or self.mysql_url,
            "CLIENT_TOKEN_PUBLIC_KEY": public_pem(TOKEN_KEY),
            "INTERNAL_API_SECRET": "bench-internal-secret-of-at-least-32-bytes",
            # Notifications are signed before the run; give them the whole run to be sent.
            "NOTIFY_MAX_SKEW_S": "3600",
            "RECONCILE_INTERVAL_S": "0",
            **self.wechat.ingress_env(),
            **self.wechat.merchant_env("http://127.0.0.1:9", "http://127.0.0.1:8080/notify"),
        }


def create() -> BenchEnv:
    suffix = uuid.uuid4().hex[:8]
    vhost, database = f"paylane_bench_{suffix}", f"paylane_bench_{suffix}"
    broker = BrokerControl.local()
    broker.add_vhost(vhost, "guest")
    mysql_url = f"mysql://root:@127.0.0.1:3306/{database}"
    migrate(mysql_url)
    return BenchEnv(
        vhost=vhost,
        amqp_url=f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        mysql_url=mysql_url,
        database=database,
        wechat=FakeWechat(),
        broker=broker,
    )


def destroy(env: BenchEnv) -> None:
    env.broker.delete_vhost(env.vhost)
    subprocess.run(
        ["mysql", "-h127.0.0.1", "-uroot", "-e", f"DROP DATABASE IF EXISTS `{env.database}`"],
        check=False,
    )


def purge(env: BenchEnv, queue: str) -> None:
    env.broker.run(["purge_queue", "-p", env.vhost, queue])


def queue_depths(env: BenchEnv) -> dict[str, int]:
    out = env.broker.run(["list_queues", "-p", env.vhost, "-q", "name", "messages"])
    depths = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            depths[parts[0]] = int(parts[1])
    return depths


async def create_orders(
    pool: aiomysql.Pool, users: list[str], count: int, prefix: str, amount: int = 2990
) -> list[tuple[str, str]]:
    """``count`` pending premium orders spread round-robin over ``users``, as the shared
    table has them: a string id, ``amount`` in yuan (the fen column is generated)."""
    orders = [(f"{prefix}{i:08d}", users[i % len(users)]) for i in range(count)]
    await add_orders(
        pool,
        orders,
        package_type="premium",
        trade_type="NATIVE",
        amount=Decimal(amount).scaleb(-2),
        status="pending",
    )
    return orders


def procfile_argv(name: str) -> list[str]:
    """How ``make run`` starts ``name`` (the Procfile's line, e.g. ``nice -n 10 paylane serve
    order``), with ``paylane`` run by this interpreter: the bench's default start is the
    developer's, so a priority given there is measured here."""
    for line in PROCFILE.read_text().splitlines():
        key, _, command = line.partition(":")
        if key.strip() == name and not line.lstrip().startswith("#"):
            words = shlex.split(command)
            at = words.index("paylane")
            return [*words[:at], sys.executable, "-m", "paylane.cli", *words[at + 1 :]]
    raise KeyError(f"{name} is not in {PROCFILE.name}")


def load() -> list[float]:
    """The machine's load averages (1, 5, 15 min): other work on a shared machine."""
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    versions = {}
    for name, cmd in {
        "rabbitmq": ["rabbitmqctl", "version"],
        "mariadb": ["mysql", "-h127.0.0.1", "-uroot", "-N", "-e", "SELECT VERSION()"],
    }.items():
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        versions[name] = done.stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024**2, 1),
        "python": platform.python_version(),
        **versions,
        "note": "everything co-located: load generator, services, RabbitMQ and MariaDB",
    }


def rss_mib(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
