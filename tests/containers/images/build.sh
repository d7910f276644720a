#!/bin/sh
# Builds the test-only stand-ins for the official images CI cannot pull (README.md here):
#   localhost/paylane-ci/mysql:8.4                  MariaDB with mysql's entrypoint contract
#   localhost/paylane-ci/rabbitmq:3.13-management   Debian's RabbitMQ + management
#   localhost/paylane-ci/prometheus:v2.53.2         Debian's Prometheus
# An image whose label matches its directory's hash and the base image's id is reused.
#
#   tests/containers/images/build.sh [NAME...]     # default: all three
#
# CONTAINER_ENGINE: podman (default) or docker. DEBIAN_IMAGE: the base (default
# localhost/paylane-base/debian:bookworm, made by make image: deploy/image.sh).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
engine=${CONTAINER_ENGINE:-podman}
base=${DEBIAN_IMAGE:-localhost/paylane-base/debian:bookworm}
label=org.paylane.standin.source

tag_of() {
    case "$1" in
        mysql) echo localhost/paylane-ci/mysql:8.4 ;;
        rabbitmq) echo localhost/paylane-ci/rabbitmq:3.13-management ;;
        prometheus) echo localhost/paylane-ci/prometheus:v2.53.2 ;;
        *) echo "build.sh: no stand-in named '$1'" >&2; return 1 ;;
    esac
}

# The directory's files (names, modes and contents) and the base image's id, hashed.
source_hash() {
    (
        cd "$here/$1"
        find . -type f | LC_ALL=C sort | while IFS= read -r f; do
            printf '%s %s %s\n' "$f" "$(stat -c %a "$f")" "$(sha256sum <"$f" | cut -d' ' -f1)"
        done
        printf 'base %s\n' "$base_id"
    ) | sha256sum | cut -d' ' -f1
}

# Nothing is pulled: the base is local (podman's --pull=never; docker's default for a
# local FROM is the same).
pull=
[ "$engine" = podman ] && pull=--pull=never

if ! base_id=$("$engine" image inspect --format '{{.Id}}' "$base" 2>/dev/null); then
    echo "build.sh: base image $base not found (make image, deploy/image.sh, makes it)" >&2
    exit 1
fi

[ $# -gt 0 ] || set -- mysql rabbitmq prometheus
for name in "$@"; do
    tag=$(tag_of "$name")
    hash=$(source_hash "$name")
    have=$("$engine" image inspect --format "{{index .Config.Labels \"$label\"}}" "$tag" \
        2>/dev/null || true)
    if [ "$have" = "$hash" ]; then
        echo "reused $tag (${hash%"${hash#????????????}"})"
        continue
    fi
    start=$(date +%s)
    "$engine" build $pull --build-arg "DEBIAN_IMAGE=$base" \
        --label "$label=$hash" --label "org.paylane.standin.base=$base_id" \
        --tag "$tag" --file "$here/$name/Containerfile" "$here/$name"
    echo "built $tag (${hash%"${hash#????????????}"}) in $(($(date +%s) - start)) s"
done
