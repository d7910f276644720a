"""Where the integration tests find RabbitMQ and MySQL.

With a Docker engine, testcontainers starts MySQL 8 and RabbitMQ; without one (detected in
well under a second), the local services are used: ``PAYLANE_TEST_AMQP_URL`` /
``PAYLANE_TEST_MYSQL_URL`` or the defaults of DESIGN §2. Either way each test session gets
its own RabbitMQ vhost and its own database, so runs never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pymysql

from paylane_common.amqp import broker_urls, host_of


@dataclass
class BrokerControl:
    """Runs ``rabbitmqctl`` where the broker lives (host or container)."""

    run: Callable[[list[str]], str]

    @classmethod
    def local(cls) -> BrokerControl:
        """The broker of this machine, through its ``rabbitmqctl``."""
        return cls(_local_rabbitmqctl)

    def stop(self) -> None:
        self.run(["stop_app"])

    def start(self) -> None:
        self.run(["start_app"])
        self.run(["await_startup"])

    def add_vhost(self, vhost: str, user: str) -> None:
        self.run(["add_vhost", vhost])
        self.run(["set_permissions", "-p", vhost, user, ".*", ".*", ".*"])

    def delete_vhost(self, vhost: str) -> None:
        self.run(["delete_vhost", vhost])

    def bindings(self, vhost: str, destination: str) -> set[str]:
        """The routing keys binding ``destination`` to an exchange in ``vhost`` (the
        default exchange's implicit binding left out)."""
        columns = ["source_name", "destination_name", "routing_key"]
        out = self.run(["list_bindings", "-q", "--no-table-headers", "-p", vhost, *columns])
        rows = (line.split("\t") for line in out.splitlines() if line.strip())
        return {row[2] for row in rows if len(row) == 3 and row[0] and row[1] == destination}

    def close_connections(self, vhost: str, name: str) -> int:
        """Have the broker close ``vhost``'s client connections named ``name`` (the broker
        stays up); how many it closed."""
        listing = self.run(["list_connections", "-q", "pid", "vhost", "client_properties"])
        pids = [
            line.split("\t")[0]
            for line in listing.splitlines()[1:]
            if line.split("\t")[1:2] == [vhost] and f'"{name}"' in line
        ]
        for pid in pids:
            self.run(["close_connection", pid, "test: broker-side close"])
        return len(pids)


@dataclass
class Infra:
    amqp_host: str
    amqp_port: int
    amqp_user: str
    amqp_password: str
    mysql_host: str
    mysql_port: int
    mysql_user: str
    mysql_password: str
    broker: BrokerControl
    kind: str
    #: ``host:port`` of the other nodes of a cluster (``AMQP_URL`` names them all).
    amqp_more_hosts: tuple[str, ...] = ()

    def amqp_url(self, vhost: str) -> str:
        hosts = ",".join((f"{self.amqp_host}:{self.amqp_port}", *self.amqp_more_hosts))
        return (
            f"amqp://{quote(self.amqp_user)}:{quote(self.amqp_password)}"
            f"@{hosts}/{quote(vhost, safe='')}"
        )

    def mysql_url(self, database: str) -> str:
        return (
            f"mysql://{quote(self.mysql_user)}:{quote(self.mysql_password)}"
            f"@{self.mysql_host}:{self.mysql_port}/{database}"
        )

    def mysql_admin(self) -> pymysql.Connection:
        return pymysql.connect(
            host=self.mysql_host,
            port=self.mysql_port,
            user=self.mysql_user,
            password=self.mysql_password,
            autocommit=True,
        )


def docker_available() -> bool:
    """True when a Docker engine answers ``/_ping`` within a second."""
    if os.environ.get("PAYLANE_TEST_LOCAL") == "1":
        return False
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: str | tuple[str, int] = host.removeprefix("unix://")
        elif host.startswith("tcp://"):
            name, _, port = host.removeprefix("tcp://").partition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (name, int(port or 2375))
        else:
            return False
        with sock:
            sock.settimeout(1.0)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except (OSError, ValueError):
        return False


def _local_rabbitmqctl(args: list[str]) -> str:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError("rabbitmqctl not found: the local broker cannot be controlled")
    done = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@contextlib.contextmanager
def provide_infra() -> Iterator[Infra]:
    if docker_available():
        yield from _containers()
        return
    from urllib.parse import urlsplit

    # A cluster's URL names several hosts: the first is the one rabbitmqctl runs next to.
    first, *others = broker_urls(
        os.environ.get("PAYLANE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    amqp = urlsplit(first)
    mysql = urlsplit(os.environ.get("PAYLANE_TEST_MYSQL_URL", "mysql://root:@127.0.0.1:3306/"))
    yield Infra(
        amqp_host=amqp.hostname or "127.0.0.1",
        amqp_port=amqp.port or 5672,
        amqp_user=amqp.username or "guest",
        amqp_password=amqp.password or "guest",
        mysql_host=mysql.hostname or "127.0.0.1",
        mysql_port=mysql.port or 3306,
        mysql_user=mysql.username or "root",
        mysql_password=mysql.password or "",
        broker=BrokerControl.local(),
        kind="local",
        amqp_more_hosts=tuple(host_of(url) for url in others),
    )


def _containers() -> Iterator[Infra]:
    from testcontainers.mysql import MySqlContainer
    from testcontainers.rabbitmq import RabbitMqContainer

    with (
        MySqlContainer("mysql:8.0", root_password="paylane") as mysql,
        RabbitMqContainer("rabbitmq:3.13") as rabbit,
    ):

        def ctl(args: list[str]) -> str:
            code, out = rabbit.exec(["rabbitmqctl", *args])
            if code != 0:
                raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {out!r}")
            return out.decode() if isinstance(out, bytes) else str(out)

        yield Infra(
            amqp_host=rabbit.get_container_host_ip(),
            amqp_port=int(rabbit.get_exposed_port(5672)),
            amqp_user="guest",
            amqp_password="guest",
            mysql_host=mysql.get_container_host_ip(),
            mysql_port=int(mysql.get_exposed_port(3306)),
            mysql_user="root",
            mysql_password="paylane",
            broker=BrokerControl(ctl),
            kind="containers",
        )


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
