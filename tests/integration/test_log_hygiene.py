"""The end-of-session log check (the root conftest's ``no_secret_in_any_log``): what it
finds, and that a leak fails the session rather than passing unnoticed. Needs no broker
and no database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import hygiene

ROOT = Path(__file__).resolve().parents[2]


def test_the_scanner_finds_what_it_looks_for() -> None:
    hygiene.register("a-secret-only-this-test-uses-123")
    assert hygiene.leaks('{"event": "x", "key": "a-secret-only-this-test-uses-123"}')
    assert hygiene.leaks("-----BEGIN PRIVATE KEY-----\nMIIE")
    assert hygiene.leaks("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0abc.c2lnbmF0dXJlLXZhbHVl")
    assert not hygiene.leaks('{"event": "order_paid", "out_trade_no": "P2026"}')


def test_the_check_names_the_leaking_line_without_quoting_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = "a-planted-secret-0123456789"
    log = tmp_path / "service.log"
    lines = [{"event": "fine"}, {"event": "oops", "value": planted}]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    monkeypatch.setattr(hygiene, "SECRETS", {planted})
    monkeypatch.setattr(hygiene, "LOG_FILES", [log, log, tmp_path / "never-written.log"])
    with pytest.raises(AssertionError, match="1 log lines leak") as failed:
        hygiene.check_session_logs()
    assert f"{log}:2" in str(failed.value)
    assert planted not in str(failed.value)
    log.write_text('{"event": "fine"}\n')
    hygiene.check_session_logs()


def test_a_leak_fails_the_session_as_an_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session of its own (another process: its secrets and logs stay its own) with the
    real root conftest, whose one test logs a registered secret and passes."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    pytester.makepyfile(
        test_leaky="""
        import structlog

        from tests.support import hygiene

        def test_logs_a_secret():
            hygiene.register("a-planted-secret-9876543210")
            structlog.get_logger().info("oops", value="a-planted-secret-9876543210")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_logs_a_secret*", "*1 log lines leak*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
