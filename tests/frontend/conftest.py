"""The whole stack as processes for the browser and the JavaScript client, on a vhost and a
database of their own: orders here must stay payable while a person (a browser) acts, so
they expire after ten minutes, not the four seconds of tests/e2e, and that stack's
reconciler must not see them."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.ci import require_tool
from tests.support.infra import Infra
from tests.support.isolated import isolated_stack
from tests.support.stack import Stack
from tests.support.stack_config import ORDER_ENV

REPO = Path(__file__).parents[2]


@dataclass(frozen=True)
class Frontend:
    stack: Stack

    def url(self, service: str) -> str:
        return self.stack.services[service].url


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go: ``$PAYLANE_TEST_ARTIFACTS`` or ``test-artifacts/`` (git-ignored)."""
    path = Path(os.environ.get("PAYLANE_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
async def frontend(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Frontend]:
    """The stack on a vhost and a migrated (empty) database of its own."""
    async with isolated_stack(
        infra,
        tmp_path_factory.mktemp("frontend-logs"),
        prefix="paylane_frontend",
        seed=False,
        order_settings={**ORDER_ENV, "ORDER_TTL_S": "600"},
    ) as env:
        yield Frontend(env.stack)


@pytest.fixture(scope="session")
def node() -> str:
    return require_tool(shutil.which("node"), "node not installed: it runs clients/js's tests")


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    chromium = require_tool(
        shutil.which("chromium"), "chromium not installed (Debian's chromium package)"
    )
    driver_path = require_tool(
        shutil.which("chromedriver"), "chromedriver not installed (Debian's chromium-driver)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=ChromeService(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
