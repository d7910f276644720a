"""Container health check: GET a paylane health endpoint with the standard library only
(the runtime image has no curl). Exit 0 on a 2xx answer, 1 otherwise.

    python /app/healthcheck.py [PATH]     # PATH defaults to /healthz

The port is ``HTTP_PORT`` when set, else the default port of the service this container
runs, read from PID 1's command line (``paylane serve order`` -> 8081), so the image's one
HEALTHCHECK works whichever service a container runs.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_PORTS = {"ingress": 8080, "order": 8081, "entitlement": 8082, "notifier": 8083}
SANDBOX_PORT = 8090


def service_port() -> int:
    if os.environ.get("HTTP_PORT"):
        return int(os.environ["HTTP_PORT"])
    try:
        argv = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    except OSError:
        argv = []
    words = [a.decode(errors="replace") for a in argv]
    for name, port in {**DEFAULT_PORTS, "sandbox": SANDBOX_PORT}.items():
        if name in words:
            return port
    return DEFAULT_PORTS["ingress"]


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
    url = f"http://127.0.0.1:{service_port()}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
