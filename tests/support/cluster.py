"""A three-node RabbitMQ cluster on this machine, for the tests that need one.

Three nodes of the installed server, each with its own node name (``paylane-c1@localhost``
…), AMQP and distribution ports, data and log directories, all under one temporary
directory that is also their ``HOME`` (so they and their ``rabbitmqctl`` share an Erlang
cookie of their own, never the local broker's). No plugins, so no management or
Prometheus listener to collide with the local broker's. The nodes start in parallel; the
second and third then ``rabbitmqctl join_cluster`` the first. A node can be killed
(``kill -9``) and started again: it rejoins the cluster on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.infra import BrokerControl, Infra

#: Where the packages (deb, rpm) keep the server's own scripts; their ``/usr/sbin``
#: entries are wrappers that switch to the ``rabbitmq`` user and its files.
PACKAGE_SCRIPTS = Path("/usr/lib/rabbitmq/bin")
NODES = 3
START_TIMEOUT_S = 90
USER = PASSWORD = "guest"


def rabbitmq_scripts() -> Path | None:
    """The directory of ``rabbitmq-server`` and ``rabbitmqctl`` as they run for any user:
    ``PAYLANE_TEST_RABBITMQ_SBIN``, the packages' own directory, or ``PATH``'s."""
    for candidate in (os.environ.get("PAYLANE_TEST_RABBITMQ_SBIN"), PACKAGE_SCRIPTS):
        if candidate and (Path(candidate) / "rabbitmq-server").exists():
            return Path(candidate)
    found = shutil.which("rabbitmq-server")
    return Path(found).parent if found else None


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free right now (held together while picked)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


@dataclass
class Node:
    name: str
    amqp_port: int
    dist_port: int
    home: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        return self.home / "pid"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.amqp_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class RabbitCluster:
    """Three nodes under ``base``; ``start()`` / ``stop()``; ``kill(node)`` and
    ``restart(node)`` one of them; what the cluster says about queues and connections."""

    def __init__(self, scripts: Path, base: Path, size: int = NODES) -> None:
        self.scripts = scripts
        self.base = base
        ports = _free_ports(2 * size)
        self.nodes = [
            Node(f"paylane-c{i + 1}@localhost", ports[2 * i], ports[2 * i + 1], base / f"c{i + 1}")
            for i in range(size)
        ]
        self.log = base / "cluster.log"

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        cookie = self.base / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        for node in self.nodes:
            self._prepare(node)
            self._spawn(node)
        for node in self.nodes:
            self._wait(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(["stop_app"], node)
            self.ctl(["join_cluster", first.name], node)
            self.ctl(["start_app"], node)
        self.ctl(["await_online_nodes", str(len(self.nodes))], first)

    def stop(self) -> None:
        """Every node killed, its directory removed."""
        for node in self.nodes:
            self.kill(node)
        shutil.rmtree(self.base, ignore_errors=True)

    def kill(self, node: Node) -> None:
        """``kill -9`` the node's VM (no goodbye to its peers or clients)."""
        if node.pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(node.pid_file.read_text().strip()), signal.SIGKILL)
            node.pid_file.unlink()
        if node.process is not None:
            with contextlib.suppress(ProcessLookupError):
                node.process.kill()  # the start script, waiting for the VM
            node.process.wait(10)
            node.process = None

    def restart(self, node: Node) -> None:
        """Start a killed node again, with its data: it rejoins the cluster."""
        self._spawn(node)
        self._wait(node)

    def revive(self) -> None:
        """Every killed node started again."""
        for node in self.nodes:
            if not node.running:
                self.restart(node)

    def _prepare(self, node: Node) -> None:
        node.home.mkdir(parents=True)
        (node.home / "rabbitmq-env.conf").write_text("")  # not the local broker's
        (node.home / "enabled_plugins").write_text("[].\n")
        (node.home / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )

    def _env(self, node: Node | None = None) -> dict[str, str]:
        env = {
            **os.environ,
            "HOME": str(self.base),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "none.conf"),
        }
        if node is None:
            return env
        return {
            **env,
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(node.home / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(node.home / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.home / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(node.home / "data"),
            "RABBITMQ_LOG_BASE": str(node.home / "log"),
            "RABBITMQ_PID_FILE": str(node.pid_file),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Distribution on loopback only, like the node's AMQP listener.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _spawn(self, node: Node) -> None:
        with (node.home / "stdout.log").open("ab") as out:
            node.process = subprocess.Popen(
                [str(self.scripts / "rabbitmq-server")],
                env=self._env(node),
                cwd=node.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C of the test run is not the nodes'
            )

    def _wait(self, node: Node) -> None:
        """Until the node's applications run (its pid file names the VM)."""
        try:
            self.ctl(["wait", str(node.pid_file), "--timeout", str(START_TIMEOUT_S)], node)
        except RuntimeError as exc:
            tail = (node.home / "stdout.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{node.name} did not start: {exc}\n{tail}") from None

    # --- rabbitmqctl -----------------------------------------------------------------

    def ctl(self, args: list[str], node: Node | None = None) -> str:
        """``rabbitmqctl -n <node> args`` (default: a running node)."""
        return self._run("rabbitmqctl", args, node)

    def _run(self, tool: str, args: list[str], node: Node | None) -> str:
        target = node or self.running_node()
        command = [str(self.scripts / tool), "-n", target.name, *args]
        done = subprocess.run(
            command, env=self._env(), capture_output=True, text=True, timeout=120, check=False
        )
        with self.log.open("a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {' '.join(command[1:])} -> {done.returncode}\n")
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {done.stderr.strip()[-1000:]}")
        return done.stdout

    def running_node(self) -> Node:
        for node in self.nodes:
            if node.running:
                return node
        raise RuntimeError("no node of the cluster is running")

    def node_named(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def _listing(self, args: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.ctl([*args, "-q", "--formatter", "json"]))
        return rows

    def queues(self, vhost: str) -> dict[str, dict[str, Any]]:
        """``{queue: {"leader": node, "members": [...], "online": [...]}}`` of ``vhost``."""
        rows = self._listing(["list_queues", "-p", vhost, "name", "leader", "members", "online"])
        return {row["name"]: row for row in rows}

    def leader(self, vhost: str, queue: str) -> Node:
        """The node leading ``queue`` (a quorum queue or a stream) now."""
        return self.node_named(self.queues(vhost)[queue]["leader"])

    def connected_node(self, vhost: str, connection_name: str) -> Node:
        """The node a client's connection named ``connection_name`` is on (by the port it
        connected to: each node listens on its own)."""
        rows = self._listing(["list_connections", "vhost", "port", "client_properties"])
        ports = {
            row["port"]
            for row in rows
            if row["vhost"] == vhost
            and ["connection_name", "longstr", connection_name] in row["client_properties"]
        }
        if len(ports) != 1:
            raise RuntimeError(f"{connection_name} in {vhost}: connected to ports {ports}")
        port = ports.pop()
        return next(node for node in self.nodes if node.amqp_port == port)

    # --- as the tests' infrastructure --------------------------------------------------

    def infra(self, local: Infra) -> Infra:
        """``local`` (its database) with this cluster as the broker: URLs naming the
        three nodes, ``rabbitmqctl`` on a running one."""
        first, *others = self.nodes
        return dataclasses.replace(
            local,
            amqp_host="127.0.0.1",
            amqp_port=first.amqp_port,
            amqp_more_hosts=tuple(node.host for node in others),
            amqp_user=USER,
            amqp_password=PASSWORD,
            broker=BrokerControl(self.ctl),
            kind="cluster",
        )


@contextlib.contextmanager
def rabbit_cluster(scripts: Path, base: Path) -> Iterator[RabbitCluster]:
    """A started cluster, stopped and removed afterwards whatever happened."""
    cluster = RabbitCluster(scripts, base)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
