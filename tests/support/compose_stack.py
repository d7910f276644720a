"""The docker-compose stack of deploy/ run for real by the container tier (tests/containers).

The stack runs through ``deploy/compose.sh`` (what ``make up`` uses) under a project name of
its own, with the secrets made by ``deploy/compose_secrets.py`` in a temporary folder. The
images are the ones compose names; where the official ones cannot be pulled, CI points
``MYSQL_IMAGE``, ``RABBITMQ_IMAGE`` and ``PROMETHEUS_IMAGE`` at test-only stand-ins
(tests/containers/images).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.ci import skip_or_fail
from tests.support.manifests import DEPLOY, ROOT, make_compose_secrets

COMPOSE = DEPLOY / "compose.sh"
#: Where the host reaches each service: the ports the compose file publishes.
URLS = {
    "ingress": "http://127.0.0.1:8080",
    "order": "http://127.0.0.1:8081",
    "notifier": "http://127.0.0.1:8083",
    "sandbox": "http://127.0.0.1:8090",
    "rabbitmq": "http://127.0.0.1:15672",
    "prometheus": "http://127.0.0.1:9090",
}
PODMAN_SOCKET = Path("/run/podman/podman.sock")


def engine_host() -> str | None:
    """The container engine's API, as deploy/compose.sh picks it; None without one."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    if Path("/var/run/docker.sock").is_socket():
        return "unix:///var/run/docker.sock"
    if PODMAN_SOCKET.is_socket():
        return f"unix://{PODMAN_SOCKET}"
    return None


def engine_cli() -> str:
    """The engine's command line: docker (to whatever DOCKER_HOST names), else podman."""
    return "docker" if shutil.which("docker") else "podman"


def require_engine() -> str:
    host = engine_host()
    if host is None:
        why = "no container engine (Docker, or podman's API socket): see docs/deployment.md"
        skip_or_fail(why, f"{why}; .ci/run sets one up")
    return host


@dataclass
class ComposeStack:
    """One compose project: ``run`` is ``deploy/compose.sh`` with this project's
    environment (its name, secrets, profiles and image names)."""

    secrets: Path
    env: dict[str, str]
    log: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, tmp: Path, **extra: str) -> ComposeStack:
        secrets = tmp / "secrets"
        # The developer's deploy/.env must not change what is tested: an empty env file.
        empty = tmp / "compose.env"
        empty.write_text("")
        env = {
            **os.environ,
            "DOCKER_HOST": require_engine(),
            "COMPOSE_PROJECT_NAME": f"paylane-ci-{uuid.uuid4().hex[:8]}",
            "PAYLANE_SECRETS_DIR": str(secrets),
            "COMPOSE_PROFILES": "sandbox",
            "COMPOSE_ENV_FILES": str(empty),
            **extra,
        }
        make_compose_secrets(secrets, env)
        return cls(secrets=secrets, env=env)

    def on_podman(self) -> bool:
        """Whether the engine is podman (its Docker API says so in ``version``)."""
        cli = engine_cli()
        if cli == "podman":
            return True
        done = subprocess.run(
            [cli, "version"], env=self.env, capture_output=True, text=True, timeout=30
        )
        return "Podman" in done.stdout

    def add_host_gateway(self, tmp: Path, name: str) -> None:
        """``name`` resolving to this machine in every container that reaches the database
        (Docker on Linux has no such name by default; podman has host.containers.internal)."""
        override = tmp / "compose.host-gateway.yml"
        services = ("dbusers", "migrate", "grants", "order", "entitlement", "notifier", "cli")
        override.write_text(
            "services:\n"
            + "".join(f"  {s}:\n    extra_hosts: ['{name}:host-gateway']\n" for s in services)
        )
        files = self.env.get("COMPOSE_FILE", "docker-compose.yml")
        self.env["COMPOSE_FILE"] = f"{files}:{override}"

    @property
    def project(self) -> str:
        return self.env["COMPOSE_PROJECT_NAME"]

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 600,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(COMPOSE), *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.log.append(f"$ compose {' '.join(args)} -> {done.returncode}\n{done.stderr[-3000:]}")
        if check and done.returncode != 0:
            raise AssertionError(
                f"compose {' '.join(args)} exited {done.returncode}:\n{done.stderr[-6000:]}"
                f"\n{self.diagnose()}"
            )
        return done

    def make(self, target: str, **env: str) -> subprocess.CompletedProcess[str]:
        """A Makefile target (``make up``, ``make down``) run as a user would, for this
        project."""
        done = subprocess.run(
            ["make", "--no-print-directory", target],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"make {target} exited {done.returncode}:\n{done.stdout[-4000:]}"
                f"\n{done.stderr[-4000:]}\n{self.diagnose()}"
            )
        return done

    def up(self, *services: str, **env: str) -> None:
        self.run("up", "-d", "--wait", "--wait-timeout", "300", *services, env=env)

    def states(self) -> dict[str, dict[str, Any]]:
        """Service name -> its container's state (``ps --all``)."""
        out = self.run("ps", "--all", "--format", "json").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
        if len(rows) == 1 and isinstance(rows[0], list):  # older clients: one JSON array
            rows = rows[0]
        return {row["Service"]: row for row in rows}

    def exec(
        self, service: str, *command: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``command`` in ``service``'s container. Through ``docker exec`` (or podman's):
        `compose exec` on podman's API answers 0 whatever the command's exit status."""
        container = self.run("ps", "-q", service).stdout.strip()
        assert container, f"{service} has no running container"
        args = [f"--env={name}={value}" for name, value in (env or {}).items()]
        done = subprocess.run(
            [engine_cli(), "exec", *args, container, *command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{service}: {' '.join(command)} exited {done.returncode}:"
                                 f" {done.stderr[-3000:]}")  # fmt: skip
        return done

    def sql(self, statement: str) -> list[list[str]]:
        """Rows of ``statement`` in the stack's database, as root in the mysql container."""
        password = (self.secrets / "mysql_root_password").read_text().strip()
        command = ("mysql", "--batch", "--skip-column-names", "--user=root", "paylane")
        out = self.exec(
            "mysql", *command, "--execute", statement, env={"MYSQL_PWD": password}
        ).stdout
        return [line.split("\t") for line in out.splitlines()]

    def diagnose(self) -> str:
        """What the containers said: for a failure's message."""
        done = subprocess.run(
            [str(COMPOSE), "logs", "--no-color", "--tail", "40"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return "--- compose logs (last 40 lines per service) ---\n" + done.stdout[-12000:]

    def down(self, *args: str) -> None:
        self.run("--profile", "sandbox", "--profile", "monitoring", "--profile", "cli", "down",
                 *args)  # fmt: skip


def wait_until(predicate: Any, what: str, seconds: float = 60, every: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:.0f} s")
        time.sleep(every)


async def pay_one_order(package: str = "premium") -> dict[str, Any]:
    """One payment through the published ports, as a mini-program user makes it: sign in
    (the sandbox plays jscode2session), order, listen on the notifier, pay in the sandbox.
    Checks that ingress acknowledged WeChat Pay's notification, that the order is paid and
    the user upgraded, and that both pushes arrived; returns the order's number, the
    session token and the user's regenerations."""
    openid = f"o-compose-{uuid.uuid4().hex[:10]}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        async with http.post(
            f"{URLS['sandbox']}/sandbox/miniprogram/codes", json={"openid": openid}
        ) as response:
            assert response.status == 201, await response.text()
            code = (await response.json())["code"]
        async with http.post(f"{URLS['order']}/auth/miniprogram", json={"code": code}) as response:
            assert response.status == 200, await response.text()
            session = await response.json()
        bearer = {"Authorization": f"Bearer {session['token']}"}
        body = {"package_type": package, "trade_type": "NATIVE"}
        async with http.post(f"{URLS['order']}/orders", json=body, headers=bearer) as response:
            assert response.status == 201, await response.text()
            order = await response.json()
        no = order["out_trade_no"]
        ws = await http.ws_connect(f"{URLS['notifier']}/ws?ticket={order['stream_ticket']}")
        first = json.loads((await ws.receive(timeout=10)).data)
        assert first["status"] == "pending", first

        async with http.post(f"{URLS['sandbox']}/sandbox/orders/{no}/pay", json={}) as response:
            assert response.status == 200, await response.text()

        pushed: dict[str, dict[str, Any]] = {}
        while not {"order.paid", "entitlement.granted"} <= set(pushed):
            push = json.loads((await ws.receive(timeout=60)).data)
            pushed[push["type"]] = push
        await ws.close()
        assert pushed["order.paid"]["status"] == "paid"
        assert pushed["entitlement.granted"]["payment_status"] == package

        # WeChat Pay's notification reached ingress's container and was acknowledged.
        async with http.get(
            f"{URLS['sandbox']}/sandbox/notifications", params={"out_trade_no": no}
        ) as response:
            notes = (await response.json())["notifications"]
        answers = [a.get("status") for n in notes for a in n.get("attempts", [])]
        assert answers and answers[-1] in (200, 204), notes

        async with http.get(f"{URLS['order']}/orders/{no}", headers=bearer) as response:
            view = await response.json()
        assert (view["status"], view["payment_status"]) == ("paid", package), view
    return {"no": no, "token": session["token"], "regenerate_count": view["regenerate_count"]}


class Forwarder:
    """``<port>`` on every address → ``upstream``, in threads: the containers reach a server
    of this machine that listens on loopback only (the CI machine's MariaDB, acting as the
    team's own MySQL) through the engine's host address (``host.containers.internal``).
    Only peers on the engine's own networks are forwarded: anyone else on the machine's
    network is cut off at once (the upstream trusts loopback)."""

    def __init__(self, upstream: tuple[str, int], env: dict[str, str]) -> None:
        self.upstream = upstream
        self._env = env
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._listener = socket.create_server(("0.0.0.0", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _engine_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        cli = engine_cli()
        ids = subprocess.run(
            [cli, "network", "ls", "-q"], env=self._env, capture_output=True, text=True,
            timeout=30, check=False,
        ).stdout.split()  # fmt: skip
        if not ids:
            return []
        out = subprocess.run(
            [cli, "network", "inspect", "--format",
             "{{range .IPAM.Config}}{{.Subnet}} {{end}}", *ids],
            env=self._env, capture_output=True, text=True, timeout=30, check=False,
        ).stdout  # fmt: skip
        return [ipaddress.ip_network(subnet) for subnet in out.split() if subnet]

    def _allowed(self, peer: str) -> bool:
        address = ipaddress.ip_address(peer)
        if not any(address in network for network in self._networks):
            self._networks = self._engine_networks()  # a network made since
        return any(address in network for network in self._networks)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, (peer, *_) = self._listener.accept()
            except OSError:
                return
            if not self._allowed(peer):
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            threading.Thread(target=self._link, args=(client, server), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        # The other direction's recv returns too: the connection ends both ways.
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def _link(self, client: socket.socket, server: socket.socket) -> None:
        with client, server:
            upstream = threading.Thread(target=self._pump, args=(client, server), daemon=True)
            upstream.start()
            self._pump(server, client)
            upstream.join()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
