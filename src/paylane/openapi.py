"""``make openapi``: the services' OpenAPI documents, written to ``docs/openapi/`` from
their route tables (``paylane_common.openapi``). A test compares the committed files with
what this writes, so regenerate them whenever a route, a model or a description changes."""

from __future__ import annotations

import sys
from pathlib import Path

from paylane_common.openapi import Api, render
from paylane_ingress.api import INGRESS_API
from paylane_notifier.api import NOTIFIER_API
from paylane_order.api import ORDER_API

#: ``docs/openapi/{name}.json`` → the API it describes.
DOCUMENTS: dict[str, Api] = {"order": ORDER_API, "ingress": INGRESS_API, "notifier": NOTIFIER_API}
DEFAULT_DIR = Path("docs/openapi")


def write_all(directory: Path = DEFAULT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, api in DOCUMENTS.items():
        path = directory / f"{name}.json"
        path.write_text(render(api))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for path in write_all(Path(args[0]) if args else DEFAULT_DIR):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
