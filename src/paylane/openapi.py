"""``make openapi``: the services' OpenAPI documents, written to ``docs/openapi/`` from
their route tables (``paylane_common.web.openapi``). A test compares the committed files with
what this writes, so regenerate them whenever a route, a model or a description changes."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

from paylane_common.web.openapi import Api, render
from paylane_ingress.api import INGRESS_API
from paylane_notifier.api import NOTIFIER_API
from paylane_order.api import ORDER_API

from . import generated

#: ``docs/openapi/{name}.json`` → the API it describes.
DOCUMENTS: dict[str, Api] = {"order": ORDER_API, "ingress": INGRESS_API, "notifier": NOTIFIER_API}
DEFAULT_DIR = Path("docs/openapi")


def write_all(directory: Path = DEFAULT_DIR) -> list[Path]:
    files = {f"{name}.json": partial(render, api) for name, api in DOCUMENTS.items()}
    return generated.write_files(directory, files)


def main(argv: list[str] | None = None) -> int:
    return generated.main(write_all, DEFAULT_DIR, argv)


if __name__ == "__main__":
    sys.exit(main())
