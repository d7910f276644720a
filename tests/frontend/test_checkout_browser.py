"""The checkout demo and the sandbox console in a real headless Chromium (Debian's chromium
and chromium-driver, driven by selenium): a package bought on the checkout page shows its
QR code, the payer pays in the console, and the checkout page turns to paid from the push
(paylane-client.js over the notifier). Screenshots of both pages are kept as artefacts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.frontend.conftest import Frontend

pytestmark = pytest.mark.e2e

#: A bound on each wait for the page (a push, a poll of the console): not a timing assertion.
WAIT_S = 30


def _wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT_S)


def _image_loaded(driver: WebDriver, css: str) -> bool:
    return bool(
        driver.execute_script(
            "const img = document.querySelector(arguments[0]);"
            "return !!img && img.complete && img.naturalWidth > 0;",
            css,
        )
    )


def pay_from_the_console(driver: WebDriver, sandbox: str, artifacts: Path) -> str:
    """The browser session: checkout → order and QR; console → pay; checkout → paid."""
    driver.get(f"{sandbox}/checkout")
    buy = '[data-package="basic"] button'
    _wait(driver).until(ec.element_to_be_clickable((By.CSS_SELECTOR, buy))).click()
    number = _wait(driver).until(lambda d: d.find_element(By.ID, "out-trade-no").text or None)
    _wait(driver).until(lambda d: _image_loaded(d, "#qr"))
    _wait(driver).until(
        ec.text_to_be_present_in_element((By.ID, "connection"), "live over WebSocket")
    )
    assert driver.find_element(By.ID, "status").get_attribute("data-status") == "pending"
    checkout = driver.current_window_handle

    driver.switch_to.new_window("window")
    driver.get(sandbox + "/")
    row = f'tr[data-order="{number}"]'
    _wait(driver).until(lambda d: _image_loaded(d, f"{row} img.qr"))
    driver.find_element(By.CSS_SELECTOR, f'{row} button[data-action="pay"]').click()
    _wait(driver).until(
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, f"{row} [data-field]"), "SUCCESS")
    )
    # The notification's delivery, answered by ingress, shows in the console.
    delivered = "#notifications tr[data-notification] .badge.ok"
    _wait(driver).until(ec.presence_of_element_located((By.CSS_SELECTOR, delivered)))
    console_shot = driver.get_screenshot_as_png()

    driver.switch_to.window(checkout)
    _wait(driver).until(
        lambda d: d.find_element(By.ID, "status").get_attribute("data-status") == "paid"
    )
    _wait(driver).until(ec.text_to_be_present_in_element((By.ID, "plan"), "Your plan"))
    (artifacts / "checkout-paid.png").write_bytes(driver.get_screenshot_as_png())
    (artifacts / "sandbox-console.png").write_bytes(console_shot)
    return str(number)


async def test_paid_in_the_console_the_checkout_page_turns_paid_from_the_push(
    frontend: Frontend, browser: WebDriver, artifacts: Path
) -> None:
    number = await asyncio.to_thread(
        pay_from_the_console, browser, frontend.url("sandbox"), artifacts
    )
    assert number.startswith("P")
    assert (artifacts / "checkout-paid.png").stat().st_size > 0
