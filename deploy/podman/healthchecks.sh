#!/usr/bin/env bash
# Runs the containers' healthchecks where podman cannot: podman schedules each container's
# HEALTHCHECK with a systemd timer, so on a machine without systemd (a CI container, WSL
# without systemd) no check ever runs and `depends_on: condition: service_healthy` waits
# forever. This loop does what the timers do: every few seconds, `podman healthcheck run`
# for each running container that has a healthcheck (podman keeps the streak, retries and
# start period itself). Docker, and podman under systemd, need none of this.
#
#   deploy/podman/healthchecks.sh [SECONDS]      # in the background; default every 3 s
set -uo pipefail
every=${1:-3}
while true; do
    for id in $(podman ps -q --filter health=starting --filter health=healthy \
        --filter health=unhealthy 2>/dev/null | sort -u); do
        podman healthcheck run "$id" >/dev/null 2>&1 &
    done
    wait
    sleep "$every"
done
