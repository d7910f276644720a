"""Runs last (collection order): nothing the whole session logged holds a secret, a key,
a client token or a payer's openid: the in-process log and every service's log file."""

from __future__ import annotations

from pathlib import Path

from tests.support import hygiene

# The shared test vectors' APIv3 key and payer openid.
hygiene.register("0123456789abcdefABCDEF0123456789", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")


def test_the_scanner_finds_what_it_looks_for(tmp_path: Path) -> None:
    hygiene.register("a-secret-only-this-test-uses-123")
    assert hygiene.leaks('{"event": "x", "key": "a-secret-only-this-test-uses-123"}')
    assert hygiene.leaks("-----BEGIN PRIVATE KEY-----\nMIIE")
    assert hygiene.leaks("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0abc.c2lnbmF0dXJlLXZhbHVl")
    assert not hygiene.leaks('{"event": "order_paid", "out_trade_no": "P2026"}')


def test_no_log_line_of_the_session_leaks() -> None:
    found: dict[str, list[str]] = {}
    lines = 0
    for path in hygiene.LOG_FILES:
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            lines += 1
            if leaks := hygiene.leaks(line):
                found.setdefault(f"{path.name}:{number}", leaks)
    assert lines > 0
    assert not found, f"{len(found)} log lines leak: {dict(list(found.items())[:10])}"
