#!/usr/bin/env bash
# A Debian bookworm base image from Debian's own packages, for machines that cannot pull
# images from a registry: debootstrap (minbase) into a temporary folder, then `import`.
#
#   deploy/base-images/debian.sh ENGINE TAG        # as root (debootstrap needs it)
#
# DEBIAN_MIRROR overrides the package mirror (default http://deb.debian.org/debian).
set -euo pipefail
engine=$1 tag=$2
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
command -v debootstrap >/dev/null || { echo "debian.sh: debootstrap is not installed" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -20 "$root.log" >&2
    exit 1
}
rm -f "$root.log"
# What a registry's debian:bookworm-slim leaves out too: the package cache and lists.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar --numeric-owner -C "$root" -c . | "$engine" import \
    --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$tag" >/dev/null
