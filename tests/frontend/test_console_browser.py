"""The operators' console in a real headless Chromium, on the order service's admin port of
the whole stack: operators added with ``paylane operators add``; a support operator signs
in, finds a paid order, reads its timeline, refunds it with a reason and sees the refund
and the audit entry, then the health page's queue depths from the broker; a viewer sees
no action, and a refund posted with the viewer's own session and CSRF token is refused
(403). The public port has no console."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.frontend.conftest import Frontend
from tests.support.polling import eventually
from tests.support.stack import Stack
from tests.support.stack_api import call, new_order, sandbox

pytestmark = pytest.mark.e2e

#: A bound on each wait for the page: not a timing assertion.
WAIT_S = 30
PASSWORD = "a long console password"


def _wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT_S)


async def _operator(stack: Stack, role: str) -> str:
    """An operator added as an operator adds one: ``paylane operators add`` (stdin)."""
    name = f"{role}-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "MYSQL_URL": stack.base_env["MYSQL_URL"], "LOG_FORMAT": "json"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paylane.cli",
        "operators",
        "add",
        name,
        "--role",
        role,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate(f"{PASSWORD}\n".encode())
    assert process.returncode == 0, err.decode()
    return name


async def _paid_order(stack: Stack) -> str:
    order = await new_order(stack, "basic", "NATIVE")
    no = order.out_trade_no
    status, paid = await sandbox(stack, "POST", f"/sandbox/orders/{no}/pay")
    assert status == 200, paid

    async def is_paid() -> bool:
        headers = {"Authorization": f"Bearer {order.client_token}"}
        _, body = await call(stack, "order", "GET", f"/orders/{no}", None, headers)
        return bool(body["status"] == "paid")

    await eventually(is_paid, WAIT_S, "the order paid")
    return no


def _sign_in(driver: WebDriver, console: str, name: str) -> None:
    driver.get(f"{console}/console/")
    _wait(driver).until(ec.presence_of_element_located((By.ID, "name"))).send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "sign-in").click()
    _wait(driver).until(ec.text_to_be_present_in_element((By.ID, "operator"), name))


def support_refunds(driver: WebDriver, console: str, name: str, no: str, shots: Path) -> None:
    _sign_in(driver, console, name)
    driver.find_element(By.NAME, "out_trade_no").send_keys(no)
    driver.find_element(By.ID, "search").click()
    # The list before the search shows the newest orders, this one too: wait for the answer.
    _wait(driver).until(ec.url_contains(f"out_trade_no={no}"))
    _wait(driver).until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, f'tr[data-order="{no}"] a'))
    ).click()
    _wait(driver).until(ec.presence_of_element_located((By.ID, "timeline")))
    status = driver.find_element(By.CSS_SELECTOR, '[data-field="status"]').text
    assert status == "paid"
    timeline = driver.find_element(By.ID, "timeline").text
    assert "order placed" in timeline and "paid" in timeline
    assert "applied by order" in timeline  # the payment event's inbox row
    (shots / "console-order.png").write_bytes(driver.get_screenshot_as_png())

    # The stack's prices are a fen or so: the whole of it (the amount left empty).
    refundable = driver.find_element(By.CSS_SELECTOR, '[data-field="refundable"]').text
    reason = "customer asked for a refund"
    driver.find_element(By.CSS_SELECTOR, "#refund-form input[name=reason]").send_keys(reason)
    driver.find_element(By.ID, "refund").click()
    notice = _wait(driver).until(ec.presence_of_element_located((By.ID, "notice")))
    assert f"of {refundable} yuan requested" in notice.text, notice.text
    operator_rows = driver.find_elements(By.CSS_SELECTOR, '#timeline tr[data-origin="operator"]')
    assert any(f"refund by {name} (done)" in row.text for row in operator_rows)
    assert any(reason in row.text for row in operator_rows)
    assert driver.find_elements(By.CSS_SELECTOR, "#refunds tr[data-refund]")
    driver.find_element(By.LINK_TEXT, "Audit log").click()
    audit = _wait(driver).until(ec.presence_of_element_located((By.ID, "audit"))).text
    assert name in audit and reason in audit and no in audit
    (shots / "console-refunded.png").write_bytes(driver.get_screenshot_as_png())
    driver.find_element(By.LINK_TEXT, "Health").click()
    dlq = _wait(driver).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-queue="order.payments.dlq"]'))
    )
    assert re.fullmatch(r"order\.payments\.dlq \d+ \d+", dlq.text), dlq.text  # asked of the broker
    (shots / "console-health.png").write_bytes(driver.get_screenshot_as_png())
    driver.find_element(By.CSS_SELECTOR, "#operator + input + button").click()
    _wait(driver).until(ec.presence_of_element_located((By.ID, "sign-in")))


def viewer_looks(driver: WebDriver, console: str, name: str, no: str) -> tuple[str, str]:
    """The viewer's page of the order; answers (its session cookie, its CSRF token)."""
    _sign_in(driver, console, name)
    driver.get(f"{console}/console/orders/{no}")
    _wait(driver).until(ec.presence_of_element_located((By.ID, "read-only")))
    assert not driver.find_elements(By.ID, "refund")
    cookie = driver.get_cookie("paylane_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    token = re.findall(r'name="csrf" value="([^"]+)"', driver.page_source)[0]
    return str(cookie["value"]), token


async def test_an_operator_finds_a_paid_order_reads_its_story_and_refunds_it(
    frontend: Frontend, browser: WebDriver, artifacts: Path
) -> None:
    stack = frontend.stack
    console = stack.services["order"].admin_url
    support, viewer = await _operator(stack, "support"), await _operator(stack, "viewer")
    no = await _paid_order(stack)

    await asyncio.to_thread(support_refunds, browser, console, support, no, artifacts)

    cookie, token = await asyncio.to_thread(viewer_looks, browser, console, viewer, no)
    async with aiohttp.ClientSession(cookies={"paylane_console": cookie}) as http:
        form = {"csrf": token, "amount": "1.00", "reason": "a viewer tries"}
        async with http.post(f"{console}/console/orders/{no}/refund", data=form) as response:
            assert response.status == 403
        # The public port serves no console.
        async with http.get(f"{stack.services['order'].url}/console/sign-in") as response:
            assert response.status == 404
