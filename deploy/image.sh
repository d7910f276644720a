#!/usr/bin/env bash
# `make image`: build the paylane image (deploy/Dockerfile) as $PAYLANE_IMAGE.
#
# Environment (all optional):
#   PAYLANE_IMAGE     the tag to build                  (default paylane:local)
#   CONTAINER_ENGINE  docker | podman                   (default: docker when it has BuildKit
#                                                        (buildx), else podman, else docker)
#   PYTHON_IMAGE      the Python base image             (default: the Dockerfile's)
#   UV_IMAGE          the image uv is copied from       (default: the Dockerfile's)
#   BUILD_CA          a CA bundle file, given to the build as the secret "ca" (a TLS-
#                     inspecting proxy's CA; never stored in a layer)
#   UV_DEFAULT_INDEX  a PyPI mirror to download the locked packages from (UV_INDEX_URL too)
#
# Where the official base images cannot be pulled (no registry reachable), it builds
# stand-ins from Debian's packages (deploy/base-images/) and says so: a Debian bookworm
# image made with debootstrap (needs root), Debian's Python 3.11 on it, and uv's binary
# from its wheel on PyPI. They are tagged localhost/paylane-base/…:<hash of their recipe>,
# so a second build on the same machine reuses them.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "image: $*" >&2; }

engine=${CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
    if command -v docker >/dev/null && docker buildx version >/dev/null 2>&1; then
        engine=docker
    elif command -v podman >/dev/null; then
        engine=podman
    else
        engine=docker
    fi
fi
command -v "$engine" >/dev/null || { say "$engine is not installed"; exit 1; }

dockerfile_arg() { sed -n "s/^ARG $1=//p" deploy/Dockerfile | head -1; }
PAYLANE_IMAGE=${PAYLANE_IMAGE:-paylane:local}
PYTHON_IMAGE=${PYTHON_IMAGE:-$(dockerfile_arg PYTHON_IMAGE)}
UV_IMAGE=${UV_IMAGE:-$(dockerfile_arg UV_IMAGE)}
uv_version=${UV_IMAGE##*:}

have() { "$engine" image inspect "$1" >/dev/null 2>&1; }
# Present, or pulled now; a registry that is not reachable fails within the timeout.
obtain() { have "$1" || timeout 120 "$engine" pull -q "$1" >/dev/null 2>&1; }
recipe_hash() { cat "$@" | sha256sum | cut -c1-12; }

debian_base() {  # the tag of the debootstrapped Debian image, built when missing
    local tag
    tag=localhost/paylane-base/debian:bookworm-$(recipe_hash deploy/base-images/debian.sh)
    if ! have "$tag"; then
        say "building $tag with debootstrap (about a minute)"
        [ "$(id -u)" = 0 ] || { say "debootstrap needs root: run make image as root"; exit 1; }
        deploy/base-images/debian.sh "$engine" "$tag"
    fi
    # The name the test-only stand-ins (tests/containers/images) build FROM.
    "$engine" tag "$tag" localhost/paylane-base/debian:bookworm
    echo "$tag"
}

# `deploy/image.sh --debian-base`: only the Debian base (the tag on stdout), which the
# test-only stand-ins (tests/containers/images) build FROM.
if [ "${1:-}" = --debian-base ]; then
    debian_base
    exit 0
fi

if ! obtain "$PYTHON_IMAGE"; then
    debian=$(debian_base)
    tag=localhost/paylane-base/python:3.11-bookworm-$(recipe_hash deploy/base-images/debian.sh \
        deploy/base-images/python.Containerfile)
    say "$PYTHON_IMAGE cannot be pulled: using a stand-in built from Debian's packages, $tag"
    have "$tag" || "$engine" build -q -f deploy/base-images/python.Containerfile \
        --build-arg DEBIAN_IMAGE="$debian" -t "$tag" deploy/base-images >/dev/null
    PYTHON_IMAGE=$tag
fi

if ! obtain "$UV_IMAGE"; then
    tag=localhost/paylane-base/uv:$uv_version
    say "$UV_IMAGE cannot be pulled: using uv $uv_version from its wheel on PyPI, $tag"
    if ! have "$tag"; then
        work=$(mktemp -d)
        trap 'rm -rf "$work"' EXIT
        pip_args=()
        index=${UV_DEFAULT_INDEX:-${UV_INDEX_URL:-}}
        [ -n "$index" ] && pip_args+=(--index-url "$index")
        [ -n "${BUILD_CA:-}" ] && pip_args+=(--cert "$BUILD_CA")
        python3 -m pip download --quiet --no-deps --only-binary=:all: "${pip_args[@]}" \
            --platform "manylinux_2_17_$(uname -m)" --dest "$work" "uv==$uv_version"
        python3 -m zipfile -e "$work"/uv-*.whl "$work/wheel"
        install -m 0755 "$work"/wheel/uv-*.data/scripts/uv "$work/uv"
        "$engine" build -q -f deploy/base-images/uv.Containerfile -t "$tag" "$work" >/dev/null
    fi
    UV_IMAGE=$tag
fi

args=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --build-arg "UV_IMAGE=$UV_IMAGE")
# podman writes OCI images by default, which have no HEALTHCHECK: ask for docker's format.
[ "$engine" = podman ] && args+=(--format docker)
if [ -n "${BUILD_CA:-}" ]; then
    [ -s "$BUILD_CA" ] || { say "BUILD_CA=$BUILD_CA: no such file"; exit 1; }
    args+=(--secret "id=ca,src=$BUILD_CA")
fi
for variable in UV_DEFAULT_INDEX UV_INDEX_URL; do
    [ -n "${!variable:-}" ] && args+=(--build-arg "$variable=${!variable}")
done
say "building $PAYLANE_IMAGE with $engine (python: $PYTHON_IMAGE, uv: $UV_IMAGE)"
"$engine" build -f deploy/Dockerfile -t "$PAYLANE_IMAGE" "${args[@]}" .
"$engine" image inspect --format '{{.Size}}' "$PAYLANE_IMAGE" \
    | awk -v image="$PAYLANE_IMAGE" '{ printf "image: %s is %.0f MB\n", image, $1 / 1e6 }' >&2
