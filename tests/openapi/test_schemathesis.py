"""Schemathesis (property-based API testing) against the order API and ingress, each a
process on a stack of its own (a vhost and a database nobody else uses, the sandbox
playing WeChat Pay): from the document each serves at ``/openapi.json``, examples, the
coverage phase's edge cases (positive and negative) and generated requests, a bounded
number per operation, with the caller's credentials. No answer may be a 5xx, and every
answer must be one the document describes (status, content type, body); what the
document refuses must be refused."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from paylane.openapi import DOCUMENTS
from tests.support.infra import Infra
from tests.support.isolated import IsolatedStack, isolated_stack
from tests.support.stack_config import BACKEND, INTERNAL

pytestmark = pytest.mark.e2e

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        # What the document refuses, the service refuses (its bodies' models are the
        # document's), a required header is required, other methods are a 405 with Allow.
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
    )
)
#: Generated cases per operation and phase: a few hundred requests per API in all.
MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
async def isolated(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[IsolatedStack]:
    """A stack of its own: what schemathesis publishes and writes never reaches the other
    end-to-end tests' stack (its reconciler would close their orders, its consumers
    take their events)."""
    log_dir = tmp_path_factory.mktemp("schemathesis-logs")
    # An empty database, not the adopting team's seed: the seed's orders were paid at a
    # WeChat Pay this sandbox never saw, so a refund of one (which schemathesis reaches
    # once GET /orders lists them) is WeChat Pay's refusal, a documented 502.
    async with isolated_stack(infra, log_dir, prefix="paylane_openapi", seed=False) as env:
        yield env


@pytest.mark.parametrize("service", sorted(DOCUMENTS))
async def test_each_service_serves_its_document(isolated: IsolatedStack, service: str) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{isolated.stack.services[service].url}/openapi.json"
        async with http.get(url) as response:
            assert response.status == 200
            assert await response.json() == DOCUMENTS[service].document()


@pytest.mark.parametrize(("service", "credentials"), [("order", BACKEND), ("ingress", INTERNAL)])
async def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    isolated: IsolatedStack, service: str, credentials: dict[str, str], tmp_path: Path
) -> None:
    [(header, secret)] = credentials.items()
    process = await asyncio.create_subprocess_exec(
        SCHEMATHESIS,
        "run",
        f"{isolated.stack.services[service].url}/openapi.json",
        f"--checks={CHECKS}",
        f"--max-examples={MAX_EXAMPLES}",
        "--phases=examples,coverage,fuzzing",
        "--suppress-health-check=all",
        "--request-timeout=15",
        f"--header={header}: {secret}",
        cwd=tmp_path,  # its .hypothesis/ examples database
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    report = output.decode(errors="replace")
    assert process.returncode == 0, report
