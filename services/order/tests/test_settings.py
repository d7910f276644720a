"""The order service's settings that protect what WeChat Pay would otherwise refuse late:
the notify URL's scheme, the order lifetime against the prepay_id's."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from paylane_common.contract.tokens import SESSION_AUDIENCE, TokenError, TokenSigner, public_pem
from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.settings import load_settings
from paylane_common.wechatpay.testing import FakeWechatPay
from paylane_order.config import OrderConfig
from paylane_order.settings import OrderSettings
from tests.support.stack_config import TOKEN_PRIVATE_KEY

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
        "client_token_private_key": TOKEN_PRIVATE_KEY,
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


@pytest.mark.parametrize(
    ("wechat_api_base", "wechatpay_api_base"),
    [
        ("https://api.weixin.qq.com", "https://api.mch.weixin.qq.com"),
        # `paylane dev`, `make run`, the tests: the sandbox on this machine.
        ("http://127.0.0.1:8090", "https://api.mch.weixin.qq.com"),
        ("http://localhost:8090", "http://127.0.0.1:8090"),
        ("http://[::1]:8090", "http://[::1]:8090"),
        # The compose stack: one sandbox plays WeChat Pay and WeChat.
        ("http://sandbox:8090", "http://sandbox:8090"),
    ],
)
def test_the_login_api_base_is_https_or_a_local_sandbox(
    wechat_api_base: str, wechatpay_api_base: str
) -> None:
    got = settings(wechat_api_base=wechat_api_base, wechatpay_api_base=wechatpay_api_base)
    assert got.wechat_api_base == wechat_api_base


@pytest.mark.parametrize(
    ("wechat_api_base", "wechatpay_api_base"),
    [
        # jscode2session is sent the AppSecret: never in the clear over a network.
        ("http://api.weixin.qq.com", "https://api.mch.weixin.qq.com"),
        ("http://sandbox:8090", "https://api.mch.weixin.qq.com"),
        # A plain-http WeChat Pay sandbox vouches for itself only, not for another host.
        ("http://login.example.com", "http://sandbox:8090"),
        ("http://sandbox:8091", "http://sandbox:8090"),
    ],
)
def test_a_plain_http_login_api_base_elsewhere_is_refused(
    wechat_api_base: str, wechatpay_api_base: str
) -> None:
    with pytest.raises(ConfigError, match="WECHAT_API_BASE must be https://"):
        settings(wechat_api_base=wechat_api_base, wechatpay_api_base=wechatpay_api_base)


def test_the_api_secrets_are_32_bytes_at_least_and_differ() -> None:
    strong, other = "b" * 32, "i" * 32
    got = settings(backend_api_secret=strong, internal_api_secret=other)
    assert got.backend_api_secret is not None
    assert got.backend_api_secret.get_secret_value() == strong
    assert settings(backend_api_secret="").backend_api_secret is None  # blank: unset
    with pytest.raises(ConfigError, match="BACKEND_API_SECRET must be at least 32 bytes"):
        settings(backend_api_secret="b" * 31)
    # The order service never uses INTERNAL_API_SECRET, but a process given both (one
    # env file for all, as `make run` has) refuses the two alike.
    with pytest.raises(ConfigError, match="INTERNAL_API_SECRET must differ from BACKEND"):
        settings(backend_api_secret=strong, internal_api_secret=strong)


def test_the_apiv3_key_is_required() -> None:
    """The payment gate verifies and decrypts WeChat Pay's notifications in the order
    service itself: without the key it could not, so the service does not start."""
    with pytest.raises(ConfigError, match="WECHATPAY_APIV3_KEY is required"):
        settings(wechatpay_apiv3_key=None)


def test_the_token_signing_key_is_an_ed25519_private_key() -> None:
    with pytest.raises(ConfigError, match=r"CLIENT_TOKEN_PRIVATE_KEY .*not an Ed25519 key"):
        settings(client_token_private_key=KEYS.merchant_private_key_pem)  # RSA


def test_tokens_of_a_rotations_previous_key_are_still_accepted() -> None:
    """CLIENT_TOKEN_PUBLIC_KEY adds keys the order service accepts tokens from (the
    previous key while a rotation's old sessions live); it signs with its own."""
    old_key = Ed25519PrivateKey.generate()
    old = TokenSigner(old_key)
    config = OrderConfig.from_settings(settings(client_token_public_key=public_pem(old_key)))
    session = old.session("user-1", version=0)
    assert config.tokens.verifier.verify(session, SESSION_AUDIENCE).user_id == "user-1"
    assert config.tokens.kid != old.kid
    assert config.tokens.verifier.key_ids == {config.tokens.kid, old.kid}
    # Without it, the old key's tokens are refused.
    with pytest.raises(TokenError):
        OrderConfig.from_settings(settings()).tokens.verifier.verify(session, SESSION_AUDIENCE)


#: What WeChat Cloud Hosting's open interface needs: no merchant key, serial, APIv3 key,
#: WeChat Pay public key or notify URL.
CLOUDHOSTING = {
    "wechatpay_mode": "cloudhosting",
    "wechatpay_mchid": KEYS.mchid,
    "wechatpay_appid": KEYS.appid,
    "cloudhosting_env_id": "prod-env-1a2b",
    "cloudhosting_service": "paylane-ingress",
    "client_token_private_key": TOKEN_PRIVATE_KEY,
}


def test_cloudhosting_mode_needs_no_merchant_key() -> None:
    hosted = load_settings(OrderSettings, **CLOUDHOSTING)
    assert hosted.wechatpay_merchant_private_key is None
    assert hosted.wechatpay_apiv3_key is None and hosted.wechatpay_notify_url is None
    assert hosted.cloudhosting_api_base == "http://api.weixin.qq.com"
    target = hosted.cloudhosting_target()
    assert (target.env_id, target.service, target.path) == (
        "prod-env-1a2b",
        "paylane-ingress",
        "/notify/cloudhosting",
    )
    config = OrderConfig.from_settings(hosted)
    assert config.cloudhosting and not config.trust_platform_headers
    assert config.merchant.notify_url == ""


@pytest.mark.parametrize("missing", ["cloudhosting_env_id", "cloudhosting_service"])
def test_cloudhosting_mode_needs_where_results_go(missing: str) -> None:
    values = {k: v for k, v in CLOUDHOSTING.items() if k != missing}
    with pytest.raises(ConfigError, match=missing.upper()):
        load_settings(OrderSettings, **values)


@pytest.mark.parametrize(
    "missing", ["wechatpay_merchant_private_key", "wechatpay_merchant_serial_no"]
)
def test_direct_mode_still_needs_the_merchant_key(missing: str) -> None:
    with pytest.raises(ConfigError, match=missing.upper()):
        settings(**{missing: None})
