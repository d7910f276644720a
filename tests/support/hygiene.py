"""What must never appear in a log line: every secret the tests make is registered here,
with the log files of the processes they start; the root conftest checks them all when
the session ends (``check_session_logs``)."""

from __future__ import annotations

import io
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO, cast

from paylane_common.runtime.logs import configure_logging

SECRETS: set[str] = set()
LOG_FILES: list[Path] = []
#: PEM blocks, JWT client tokens, and the payer openids the tests use.
PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
]


def register(*secrets: str) -> None:
    SECRETS.update(s for s in secrets if s)


def register_log(path: Path) -> None:
    LOG_FILES.append(path)


class Tee(io.TextIOBase):
    """Writes to the real stream and to the session's log file."""

    def __init__(self, *streams: TextIO) -> None:
        self._streams = streams

    def write(self, text: str) -> int:
        for stream in self._streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self._streams:
            stream.flush()


SESSION_LOG = Path(tempfile.mkdtemp(prefix="paylane-test-logs-")) / "session.log"


def configure_session_logging() -> None:
    """JSON logs to stderr and to the session file (idempotent)."""
    global _session_file
    if _session_file is None:
        _session_file = SESSION_LOG.open("a", encoding="utf-8")
        register_log(SESSION_LOG)
    # The handlers only write and flush: a TextIOBase serves, though it is no typing.TextIO.
    configure_logging("json", stream=cast(TextIO, Tee(sys.stderr, _session_file)))


_session_file: TextIO | None = None


def leaks(text: str) -> list[str]:
    """Secrets or patterns found in ``text`` (only their kind, never the value)."""
    found = [f"registered secret #{i}" for i, s in enumerate(sorted(SECRETS)) if s in text]
    found += [f"pattern {p.pattern[:30]}" for p in PATTERNS if p.search(text)]
    return found


def leaking_lines(paths: Iterable[Path]) -> dict[str, list[str]]:
    """``{"path:line": [what leaks]}`` for every line of these files that leaks."""
    found: dict[str, list[str]] = {}
    for path in dict.fromkeys(paths):  # a restarted service appends to the same file
        if not path.exists():
            continue
        text = path.read_text(errors="replace")
        if not _leaks_somewhere(text):  # one pass over the file; lines only if it leaks
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if leaked := leaks(line):
                found[f"{path}:{number}"] = leaked
    return found


def _leaks_somewhere(text: str) -> bool:
    # ``in`` over the whole text is a C scan per secret (a regex alternation of them all
    # tries every secret at every position: minutes on the chaos suites' logs).
    return any(s in text for s in SECRETS) or any(p.search(text) for p in PATTERNS)


def check_session_logs() -> None:
    """AssertionError naming (never quoting) the first lines that leak, of every log the
    session wrote: its own and its services'."""
    if _session_file is not None:
        _session_file.flush()
    found = leaking_lines(LOG_FILES)
    if found:
        raise AssertionError(f"{len(found)} log lines leak: {dict(list(found.items())[:10])}")
