"""The order service's settings that protect what WeChat Pay would otherwise refuse late:
the notify URL's scheme, the order lifetime against the prepay_id's."""

from __future__ import annotations

from typing import Any

import pytest

from paylane_common.exceptions import ConfigError
from paylane_common.settings import load_settings
from paylane_common.wechatpay.testing import FakeWechatPay
from paylane_order.settings import OrderSettings

KEYS = FakeWechatPay()


def settings(**overrides: Any) -> OrderSettings:
    values: dict[str, Any] = {
        "wechatpay_mchid": KEYS.mchid,
        "wechatpay_appid": KEYS.appid,
        "wechatpay_api_base": "https://api.mch.weixin.qq.com",
        "wechatpay_notify_url": "https://pay.example.com/notify/wechatpay",
        "wechatpay_merchant_private_key": KEYS.merchant_private_key_pem,
        "wechatpay_merchant_serial_no": KEYS.merchant_serial_no,
        "wechatpay_public_key": KEYS.platform_public_key_pem,
        "wechatpay_public_key_id": KEYS.public_key_id,
        "client_token_secret": "c" * 32,
        "wechatpay_apiv3_key": KEYS.apiv3_key,
        **overrides,
    }
    return load_settings(OrderSettings, **values)


@pytest.mark.parametrize(
    "url",
    [
        "https://pay.example.com/notify/wechatpay",
        # The sandbox on this machine (`make run`, `paylane dev`, the tests).
        "http://127.0.0.1:8080/notify/wechatpay",
        "http://127.9.9.9/notify/wechatpay",
        "http://[::1]:8080/notify/wechatpay",
        "http://localhost:8080/notify/wechatpay",
    ],
)
def test_notify_url_is_https_or_a_loopback_address(url: str) -> None:
    assert settings(wechatpay_notify_url=url).wechatpay_notify_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://pay.example.com/notify/wechatpay",
        "http://10.0.0.5:8080/notify/wechatpay",
        "http://ingress:8080/notify/wechatpay",
        "http://localhost.example.com/notify/wechatpay",
    ],
)
def test_plain_http_notify_url_for_wechat_pay_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(wechatpay_notify_url=url)
    message = str(info.value)
    assert "WECHATPAY_NOTIFY_URL must be https://" in message
    assert "loopback" in message


def test_a_sandbox_api_base_takes_a_plain_http_notify_url() -> None:
    """The compose stack: its sandbox (http://sandbox:8090) notifies ingress by name."""
    got = settings(
        wechatpay_api_base="http://sandbox:8090",
        wechatpay_notify_url="http://ingress:8080/notify/wechatpay",
    )
    assert got.wechatpay_notify_url == "http://ingress:8080/notify/wechatpay"


def test_notify_url_with_a_query_or_another_scheme_is_refused() -> None:
    for url in ("https://pay.example.com/n?x=1", "ftp://pay.example.com/n"):
        with pytest.raises(ConfigError, match="WECHATPAY_NOTIFY_URL must be an http"):
            settings(wechatpay_notify_url=url)


def test_order_ttl_is_capped_at_the_prepay_ids_two_hours() -> None:
    assert settings(order_ttl_s=7200).order_ttl_s == 7200
    with pytest.raises(ConfigError) as info:
        settings(order_ttl_s=7201)
    message = str(info.value)
    assert "ORDER_TTL_S must be at most 7200" in message
    assert "prepay_id" in message


def test_app_appid_is_optional_and_blank_is_unset() -> None:
    assert settings().wechatpay_app_appid is None
    assert settings(wechatpay_app_appid="").wechatpay_app_appid is None
    assert settings(wechatpay_app_appid="wx8888888888888888").wechatpay_app_appid == (
        "wx8888888888888888"
    )


def test_the_apiv3_key_is_required() -> None:
    """The payment gate verifies and decrypts WeChat Pay's notifications in the order
    service itself: without the key it could not, so the service does not start."""
    with pytest.raises(ConfigError, match="WECHATPAY_APIV3_KEY is required"):
        settings(wechatpay_apiv3_key=None)
