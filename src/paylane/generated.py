"""What the generators share (``make openapi``, ``make docs``): files rendered from the
code, written to a folder, each named on stdout. Tests compare the committed files with
what the generator writes into a temporary folder."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path


def write_files(directory: Path, files: Mapping[str, Callable[[], str]]) -> list[Path]:
    """Each ``name -> render`` as ``directory/name``; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, render in files.items():
        path = directory / name
        path.write_text(render())
        written.append(path)
    return written


def main(write_all: Callable[[Path], list[Path]], default: Path, argv: list[str] | None) -> int:
    """The generator's command line: an optional folder (default ``default``)."""
    args = sys.argv[1:] if argv is None else argv
    for path in write_all(Path(args[0]) if args else default):
        print(f"wrote {path}")
    return 0
