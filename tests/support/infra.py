"""Where the integration tests find RabbitMQ and MySQL.

With a Docker engine (``DOCKER_HOST``; podman's Docker API does), testcontainers starts
MySQL and RabbitMQ: the official ``mysql:8.4`` and ``rabbitmq:3.13-management`` unless
``PAYLANE_TEST_MYSQL_IMAGE`` / ``PAYLANE_TEST_RABBITMQ_IMAGE`` name others (CI without a
registry: the stand-ins of tests/containers/images). Without an engine (detected in well
under a second), or with ``PAYLANE_TEST_LOCAL=1``, the local services are used:
``PAYLANE_TEST_AMQP_URL`` / ``PAYLANE_TEST_MYSQL_URL`` or the defaults of docs/configuration.md.
Either way each test session gets its own RabbitMQ vhost and its own database, so runs
never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import pymysql

from paylane_common.broker.amqp import broker_urls, host_of

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

#: The images the containers kind starts unless the environment names others.
MYSQL_IMAGE = "mysql:8.4"
RABBITMQ_IMAGE = "rabbitmq:3.13-management"
MYSQL_ROOT_PASSWORD = "paylane"
RABBITMQ_USER = RABBITMQ_PASSWORD = "guest"
#: Put on the session's containers: a later session removes those of a dead one (with
#: Ryuk disabled nothing else would).
OWNER_LABEL = "org.paylane.tests.owner"


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

    def unacked(self, vhost: str) -> int:
        """The messages delivered to ``vhost``'s consumers and not yet settled (what a
        passive declaration's count leaves out), as the channels count them now: a
        quorum queue's own count in ``list_queues`` is refreshed only every few seconds."""
        columns = ["vhost", "messages_unacknowledged"]
        out = self.run(["list_channels", "-q", "--no-table-headers", *columns])
        rows = [line.split("\t") for line in out.splitlines() if line.strip()]
        if any(len(row) != 2 or not row[1].isdigit() for row in rows):
            raise RuntimeError(f"rabbitmqctl list_channels: unexpected output {out!r}")
        return sum(int(row[1]) for row in rows if row[0] == vhost)

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


def container_images() -> tuple[str, str]:
    """The MySQL and RabbitMQ images of the containers kind."""
    return (
        os.environ.get("PAYLANE_TEST_MYSQL_IMAGE") or MYSQL_IMAGE,
        os.environ.get("PAYLANE_TEST_RABBITMQ_IMAGE") or RABBITMQ_IMAGE,
    )


def describe() -> str:
    """One line for the test run's header: which kind of infrastructure this session
    gets (the same test ``provide_infra`` makes), and from where."""
    if docker_available():
        mysql, rabbitmq = (_resolved(image) for image in container_images())
        engine = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return (
            f"paylane infra: containers (mysql image {mysql}, rabbitmq image {rabbitmq}, "
            f"engine {engine})"
        )
    from urllib.parse import urlsplit

    amqp = urlsplit(broker_urls(_local_amqp_url())[0])
    mysql_url = urlsplit(_local_mysql_url())
    return (
        f"paylane infra: local (rabbitmq {amqp.hostname}:{amqp.port or 5672}, "
        f"mysql {mysql_url.hostname}:{mysql_url.port or 3306})"
    )


def _resolved(image: str) -> str:
    """``image`` and, when the engine has it under another name, that one: podman
    resolves a short name such as ``mysql:8.4`` to a local ``localhost/…/mysql:8.4``
    (a stand-in), and the header should say which image really runs."""
    import docker

    try:
        client = docker.from_env(timeout=5)
    except docker.errors.DockerException:
        return image
    try:
        tags = client.images.get(image).tags
    except docker.errors.ImageNotFound:
        return f"{image} (not present: to be pulled)"
    except docker.errors.DockerException:
        return image
    finally:
        client.close()
    return image if image in tags or not tags else f"{image} = {tags[0]}"


def _local_amqp_url() -> str:
    return os.environ.get("PAYLANE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _local_mysql_url() -> str:
    return os.environ.get("PAYLANE_TEST_MYSQL_URL", "mysql://root:@127.0.0.1:3306/")


def local_mysql() -> dict[str, Any]:
    """pymysql's connection arguments for the machine's own MySQL (PAYLANE_TEST_MYSQL_URL or
    the local default), whatever kind the session's infrastructure is."""
    from urllib.parse import unquote, urlsplit

    url = urlsplit(_local_mysql_url())
    return {
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 3306,
        "user": unquote(url.username or "root"),
        "password": unquote(url.password or ""),
    }


@contextlib.contextmanager
def provide_infra() -> Iterator[Infra]:
    if docker_available():
        yield from _containers()
        return
    from urllib.parse import urlsplit

    # A cluster's URL names several hosts: the first is the one rabbitmqctl runs next to.
    first, *others = broker_urls(_local_amqp_url())
    amqp = urlsplit(first)
    mysql = urlsplit(_local_mysql_url())
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
    # testcontainers 4.x moved the modules; the old paths warn (an error in this suite).
    try:
        from testcontainers.community.mysql import MySqlContainer
    except ImportError:  # before the move
        from testcontainers.mysql import MySqlContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    _remove_orphans()
    mysql_image, rabbitmq_image = container_images()
    labels = {OWNER_LABEL: f"{socket.gethostname()}:{os.getpid()}"}
    mysql = MySqlContainer(mysql_image, root_password=MYSQL_ROOT_PASSWORD).with_kwargs(
        labels=labels
    )
    # Not RabbitMqContainer: its readiness probe is a deprecated decorator (a warning,
    # so an error here). The broker logs this once its listeners are up.
    rabbit = (
        DockerContainer(rabbitmq_image)
        .with_exposed_ports(5672)
        .with_env("RABBITMQ_DEFAULT_USER", RABBITMQ_USER)
        .with_env("RABBITMQ_DEFAULT_PASS", RABBITMQ_PASSWORD)
        .with_kwargs(labels=labels)
        .waiting_for(LogMessageWaitStrategy("Server startup complete").with_startup_timeout(120))
    )
    with contextlib.ExitStack() as stack:
        # Removed (with their anonymous volumes) however the session ends, a failed
        # start included: Ryuk may be disabled (no image of it to pull).
        for container in (mysql, rabbit):
            stack.callback(_remove, container)
        # Both start at once: MySQL's first-start initialisation is the longer wait.
        with ThreadPoolExecutor(2) as pool:
            mysql_started, rabbit_started = pool.submit(mysql.start), pool.submit(rabbit.start)
            mysql_started.result()
            rabbit_started.result()

        def ctl(args: list[str]) -> str:
            # As the image's default user, the way `docker exec` runs it; stderr apart
            # (warnings there must not reach the parsed listings).
            code, output = rabbit.get_wrapped_container().exec_run(
                ["rabbitmqctl", *args], demux=True
            )
            # demux: (stdout, stderr), each None when empty (docker's stubs say bytes).
            out, err = cast(tuple[bytes | None, bytes | None], output)
            if code != 0:
                said = (err or out or b"").decode(errors="replace").strip()
                raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {said}")
            return (out or b"").decode()

        amqp_host, amqp_port = _address(rabbit, 5672)
        mysql_host, mysql_port = _address(mysql, 3306)
        yield Infra(
            amqp_host=amqp_host,
            amqp_port=amqp_port,
            amqp_user=RABBITMQ_USER,
            amqp_password=RABBITMQ_PASSWORD,
            mysql_host=mysql_host,
            mysql_port=mysql_port,
            mysql_user="root",
            mysql_password=MYSQL_ROOT_PASSWORD,
            broker=BrokerControl(ctl),
            kind="containers",
        )


def _address(container: DockerContainer, port: int) -> tuple[str, int]:
    """Where this process reaches ``container``'s ``port``.

    An engine on this machine (podman's service here, even inside a container) publishes
    the port on our loopback: 127.0.0.1 and the published port, when that answers.
    Otherwise testcontainers' own answer (a remote engine, Docker-outside-of-Docker).
    Asked first, testcontainers sees /.dockerenv, looks for a gateway and, on podman,
    fails on a container listing without ``HostConfig``."""
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    published = (wrapped.attrs["NetworkSettings"]["Ports"] or {}).get(f"{port}/tcp") or []
    for binding in published:
        mapped = int(binding["HostPort"])
        if binding.get("HostIp", "") in ("", "0.0.0.0", "127.0.0.1") and _answers(mapped):
            return "127.0.0.1", mapped
    return container.get_container_host_ip(), int(container.get_exposed_port(port))


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0):
            return True
    except OSError:
        return False


def _remove(container: DockerContainer) -> None:
    with contextlib.suppress(Exception):
        container.stop(force=True, delete_volume=True)


def _remove_orphans() -> None:
    """Remove the containers of this machine's test sessions whose process is gone (a
    session killed before its teardown), volumes included."""
    from testcontainers.core.docker_client import DockerClient

    client = DockerClient().client
    try:
        for container in client.containers.list(all=True, filters={"label": OWNER_LABEL}):
            host, _, pid = container.labels.get(OWNER_LABEL, "").rpartition(":")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(Exception):
                    container.remove(force=True, v=True)
    finally:
        client.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
