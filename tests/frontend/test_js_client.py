"""clients/js under Node's test runner, its stack tests against this stack's real notifier
(WebSocket, SSE, the fallback, the snapshot) and order API, the sandbox paying."""

from __future__ import annotations

import asyncio
import os
import re

import pytest

from tests.frontend.conftest import REPO, Frontend
from tests.support.ci import require_tool

pytestmark = pytest.mark.e2e

CLIENT = REPO / "clients" / "js"


async def test_node_test_runner_passes_against_the_stack(frontend: Frontend, node: str) -> None:
    require_tool(
        str(CLIENT / "node_modules") if (CLIENT / "node_modules" / "ws").is_dir() else None,
        "clients/js/node_modules missing: run `npm ci --prefix clients/js` (ws, eventsource)",
    )
    env = {
        **os.environ,
        "PAYLANE_ORDER_API_URL": frontend.url("order"),
        "PAYLANE_NOTIFIER_URL": frontend.url("notifier"),
        "PAYLANE_SANDBOX_URL": frontend.url("sandbox"),
    }
    process = await asyncio.create_subprocess_exec(
        node,
        "--test",
        "test/",
        cwd=CLIENT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 90)
    report = output.decode(errors="replace")
    assert process.returncode == 0, report
    counts = dict(re.findall(r"^# (pass|fail|skipped) (\d+)$", report, re.MULTILINE))
    assert counts.get("fail") == "0" and counts.get("skipped") == "0", report
    # A skipped suite counts as neither: the stack tests must have run, not been skipped.
    assert "# SKIP" not in report and "against the notifier" in report, report
