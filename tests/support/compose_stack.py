"""The docker-compose stack of deploy/ run for real by the container tier (tests/containers).

The stack runs through ``deploy/compose.sh`` (what ``make up`` uses) under a project name of
its own, with the secrets made by ``deploy/compose_secrets.py`` in a temporary folder. The
images are the ones compose names; where the official ones cannot be pulled, CI points
``MYSQL_IMAGE``, ``RABBITMQ_IMAGE`` and ``PROMETHEUS_IMAGE`` at test-only stand-ins
(tests/containers/images).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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


def require_engine() -> str:
    host = engine_host()
    if host is None:
        why = "no container engine (Docker, or podman's API socket): see docs/deployment.md"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; .ci/run sets one up")
        pytest.skip(why)
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
        secrets = make_compose_secrets(tmp / "secrets")
        env = {
            **os.environ,
            "DOCKER_HOST": require_engine(),
            "COMPOSE_PROJECT_NAME": f"paylane-ci-{uuid.uuid4().hex[:8]}",
            "PAYLANE_SECRETS_DIR": str(secrets),
            "COMPOSE_PROFILES": "sandbox",
            **extra,
        }
        # The developer's deploy/.env must not change what is tested: an empty env file.
        empty = tmp / "compose.env"
        empty.write_text("")
        env["COMPOSE_ENV_FILES"] = str(empty)
        return cls(secrets=secrets, env=env)

    @property
    def project(self) -> str:
        return self.env["COMPOSE_PROJECT_NAME"]

    def run(
        self, *args: str, check: bool = True, timeout: float = 600, **env: str
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(COMPOSE), *args],
            env={**self.env, **env},
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
        self.run("up", "-d", "--wait", "--wait-timeout", "300", *services, **env)

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
        """``command`` in ``service``'s container. Through ``docker exec``: `compose exec`
        on podman's API answers 0 whatever the command's exit status."""
        container = self.run("ps", "-q", service).stdout.strip()
        assert container, f"{service} has no running container"
        args = [f"--env={name}={value}" for name, value in (env or {}).items()]
        done = subprocess.run(
            ["docker", "exec", *args, container, *command],
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
