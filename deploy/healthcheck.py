"""Container health check: GET a paylane health endpoint with the standard library only
(the runtime image has no curl). Exit 0 on a 2xx answer, 1 otherwise.

    python /app/healthcheck.py [PATH]     # PATH defaults to /healthz

The port is ``HTTP_PORT`` when set, else the default port of the service this container
runs, read from PID 1's command line (``paylane serve order`` -> 8081), so the image's one
HEALTHCHECK works whichever service a container runs. ``/readyz`` and ``/metrics`` are
on each service's admin listener only: ``ADMIN_PORT`` when set, else the service's default
(ingress 9080, order 9081, entitlement 9082, notifier 9083); the sandbox serves them on
its one port.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_PORTS = {
    "ingress": 8080,
    "order": 8081,
    "entitlement": 8082,
    "notifier": 8083,
    "alert-relay": 9094,
}
SANDBOX_PORT = 8090
#: Services that serve these paths on a second, internal listener only (ADMIN_PORT).
DEFAULT_ADMIN_PORTS = {
    "ingress": 9080,
    "order": 9081,
    "entitlement": 9082,
    "notifier": 9083,
    "alert-relay": 9095,
}
ADMIN_PATHS = ("/readyz", "/metrics")


def service_name() -> str:
    try:
        argv = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    except OSError:
        argv = []
    words = [a.decode(errors="replace") for a in argv]
    for name in (*DEFAULT_PORTS, "sandbox"):
        if name in words:
            return name
    return "ingress"


def service_port(path: str = "/healthz") -> int:
    name = service_name()
    if path in ADMIN_PATHS and name in DEFAULT_ADMIN_PORTS:
        if os.environ.get("ADMIN_PORT"):
            return int(os.environ["ADMIN_PORT"])
        return DEFAULT_ADMIN_PORTS[name]
    if os.environ.get("HTTP_PORT"):
        return int(os.environ["HTTP_PORT"])
    return {**DEFAULT_PORTS, "sandbox": SANDBOX_PORT}[name]


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
    url = f"http://127.0.0.1:{service_port(path)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
