#!/bin/sh
# The build stage's package install (deploy/Dockerfile): `uv-sync deps` installs the
# locked third-party packages, `uv-sync workspace` then paylane's own packages, as wheels,
# into /app/.venv.
#
# - The build secret "ca" (a CA bundle, e.g. a company's TLS-inspecting proxy), mounted at
#   /run/secrets/ca, is what uv trusts when it is there; it lives only for this RUN.
# - UV_DEFAULT_INDEX (or UV_INDEX_URL), a PyPI mirror: `uv sync --frozen` would ignore it
#   and download from the URLs in uv.lock, so the lock is exported with its hashes and
#   installed from the mirror instead. Same versions, same files (hash-checked).
set -eu
if [ -s /run/secrets/ca ]; then
    export SSL_CERT_FILE=/run/secrets/ca
fi
index=${UV_DEFAULT_INDEX:-${UV_INDEX_URL:-}}
unset UV_INDEX_URL
case "${1:-}" in
deps)
    if [ -z "$index" ]; then
        unset UV_DEFAULT_INDEX
        exec uv sync --frozen --no-dev --no-install-workspace --no-editable
    fi
    # The host only: a company index's URL may carry a token.
    echo "uv-sync: the locked packages from $(echo "$index" | sed -e 's|^\([a-z]*://\)[^@/]*@|\1|' -e 's|^\([a-z]*://[^/]*\).*|\1|')" >&2
    export UV_DEFAULT_INDEX="$index"
    uv export --frozen --no-dev --no-emit-workspace --no-header --format requirements-txt \
        -o /tmp/requirements.txt
    uv venv --allow-existing "$UV_PROJECT_ENVIRONMENT"
    exec uv pip install --python "$UV_PROJECT_ENVIRONMENT" --require-hashes --no-deps \
        -r /tmp/requirements.txt
    ;;
workspace)
    if [ -z "$index" ]; then
        unset UV_DEFAULT_INDEX
        exec uv sync --frozen --no-dev --no-editable
    fi
    # Third-party packages are in place; the workspace's own wheels are built here (their
    # build backend, hatchling, comes from the mirror) and installed without dependencies.
    export UV_DEFAULT_INDEX="$index"
    members=$(uv export --frozen --no-dev --only-emit-workspace --no-header --no-hashes --no-annotate \
        --format requirements-txt | grep -v '^ *#' | sed -e 's/^-e //')
    # shellcheck disable=SC2086 # one path per member
    exec uv pip install --python "$UV_PROJECT_ENVIRONMENT" --no-deps $members
    ;;
*)
    echo "usage: uv-sync deps|workspace" >&2
    exit 2
    ;;
esac
