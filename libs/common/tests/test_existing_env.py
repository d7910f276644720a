"""The existing system's names (``WECHAT_*``, the cloud functions' ``WX_*``, ``DB_*``,
``DATABASE_URL``) read as paylane's, and PEMs written on one line with literal ``\\n``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs

from paylane_common.contract.tokens import private_pem, public_pem
from paylane_common.runtime import existing_env
from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.existing_env import DB_PARTS, RENAMES, translate
from paylane_common.runtime.settings import (
    BaseServiceSettings,
    PrivateKeyPem,
    PublicKeyPem,
    TokenSigningKey,
    TokenVerifyingKeys,
    load_settings,
    pem_with_newlines,
)
from paylane_common.wechatpay.merchant_api import MerchantApiSettings
from paylane_common.wechatpay.testing import (
    FakeWechatPay,
    certificate_pem,
    self_signed_certificate,
)

KIT = FakeWechatPay()


def one_line(pem: str) -> str:
    """A PEM as the existing env files hold it: one line, literal ``\\n``."""
    return pem.strip().replace("\n", "\\n")


def existing_env_file() -> dict[str, str]:
    """The Node backend's merchant and database variables, as its env file has them."""
    return {
        "WECHAT_APPID": KIT.appid,
        "WECHAT_MCHID": KIT.mchid,
        "WECHAT_SERIAL_NO": KIT.merchant_serial_no,
        "WECHAT_PRIVATE_KEY": one_line(KIT.merchant_private_key_pem),
        "WECHAT_APIV3_KEY": KIT.apiv3_key,
        "WECHAT_PUBLIC_KEY": one_line(KIT.platform_public_key_pem),
        "WECHAT_PUBLIC_KEY_ID": KIT.public_key_id,
        "WECHAT_NOTIFY_URL": "https://pay.example.com/api/payment/callback",
        "DB_HOST": "sh-cynosdbmysql.sql.tencentcdb.com",
        "DB_PORT": "26462",
        "DB_USER": "app",
        "DB_PASSWORD": "p@ss:w/rd",
        "DB_NAME": "prod",
    }


class _Merchant(BaseServiceSettings, MerchantApiSettings):
    wechatpay_appid: str
    wechatpay_notify_url: str


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No paylane or old name from the test run's environment; this process's record of
    old names used starts empty (and is put back afterwards)."""
    for name in [*RENAMES, *DB_PARTS, *RENAMES.values()]:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    for name in ("AMQP_URL", "HTTP_PORT", "ADMIN_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(existing_env, "_USED", {})
    monkeypatch.setattr(existing_env, "_SHADOWED", {})
    monkeypatch.setattr(existing_env, "_warned", False)
    yield


# --- the table --------------------------------------------------------------------


@pytest.mark.parametrize("old", sorted(RENAMES))
def test_each_old_name_gives_its_paylane_setting(old: str) -> None:
    found = translate({old: "value-1"})
    new = RENAMES[old]
    assert found.values == {new: "value-1"}
    assert found.origins == {new: (old,)}
    assert not found.problems


def test_the_database_parts_are_one_mysql_url_with_the_password_quoted() -> None:
    found = translate(existing_env_file())
    assert found.values["MYSQL_URL"] == (
        "mysql://app:p%40ss%3Aw%2Frd@sh-cynosdbmysql.sql.tencentcdb.com:26462/prod"
    )
    assert found.origins["MYSQL_URL"] == ("DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME")


def test_database_parts_left_out_take_paylanes_defaults() -> None:
    assert translate({"DB_NAME": "prod"}).values["MYSQL_URL"] == "mysql://root:@127.0.0.1:3306/prod"
    url = translate({"DB_HOST": "::1", "DB_NAME": "prod"}).values["MYSQL_URL"]
    assert url == "mysql://root:@[::1]:3306/prod"


def test_database_parts_without_a_name_or_with_a_bad_port_are_a_problem() -> None:
    assert "without DB_NAME" in translate({"DB_HOST": "db", "DB_USER": "app"}).problems["MYSQL_URL"]
    problem = translate({"DB_NAME": "prod", "DB_PORT": "mysql"}).problems["MYSQL_URL"]
    assert "DB_PORT must be a port number" in problem


def test_old_names_that_disagree_are_a_problem_and_agreeing_ones_are_not() -> None:
    found = translate({"WECHAT_MCHID": "1900000109", "WX_MCHID": "1900000999"})
    assert found.problems == {"WECHATPAY_MCHID": "WECHAT_MCHID and WX_MCHID differ: give one value"}
    assert "WECHATPAY_MCHID" not in found.values
    found = translate({"WECHAT_MCHID": "1900000109", "WX_MCH_ID": "1900000109"})
    assert found.values == {"WECHATPAY_MCHID": "1900000109"}
    # DATABASE_URL and the parts both name the database: they must be the same one.
    found = translate({"DATABASE_URL": "mysql://a:b@db:3306/x", "DB_NAME": "y"})
    assert "differ" in found.problems["MYSQL_URL"]


def test_paylanes_own_name_or_its_file_wins_over_old_names() -> None:
    found = translate({"WECHATPAY_MCHID": "1", "WECHAT_MCHID": "2", "WX_MCHID": "3"})
    assert found.values == {}
    assert found.shadowed == {"WECHATPAY_MCHID": ("WECHAT_MCHID", "WX_MCHID")}
    assert not found.problems
    found = translate({"MYSQL_URL_FILE": "/run/secrets/mysql_url", "DB_HOST": "db"})
    assert found.values == {} and not found.problems  # the incomplete parts do not matter
    assert found.shadowed == {"MYSQL_URL": ("DB_HOST",)}


def test_blank_and_lower_case_names_read_as_settings_do() -> None:
    assert translate({"wechat_mchid": "1900000109", "WX_APPID": " "}).values == {
        "WECHATPAY_MCHID": "1900000109"
    }


# --- at start ---------------------------------------------------------------------


def test_a_service_starts_on_the_existing_env_file_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in existing_env_file().items():
        monkeypatch.setenv(name, value)
    settings = load_settings(_Merchant)
    assert settings.wechatpay_mchid == KIT.mchid
    assert settings.wechatpay_appid == KIT.appid
    assert settings.wechatpay_merchant_serial_no == KIT.merchant_serial_no
    assert settings.wechatpay_merchant_private_key is not None
    key = settings.wechatpay_merchant_private_key.get_secret_value()
    assert key == KIT.merchant_private_key_pem.strip()
    assert settings.wechatpay_public_key == KIT.platform_public_key_pem.strip()
    assert settings.wechatpay_apiv3_key is not None
    assert settings.wechatpay_apiv3_key.get_secret_value() == KIT.apiv3_key
    assert settings.mysql.host == "sh-cynosdbmysql.sql.tencentcdb.com"
    assert (settings.mysql.port, settings.mysql.password) == (26462, "p@ss:w/rd")
    assert settings.wechatpay_notify_url.endswith("/api/payment/callback")


def test_one_warning_a_process_names_the_old_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WECHATPAY_APPID", KIT.appid)  # paylane's own, beside an old one
    for name, value in existing_env_file().items():
        monkeypatch.setenv(name, value)
    with capture_logs() as logs:
        load_settings(_Merchant)
        existing_env.warn_once()
        load_settings(_Merchant)
        existing_env.warn_once()
    [warning] = [line for line in logs if line["event"] == "existing_config_names"]
    assert warning["log_level"] == "warning"
    assert warning["used"]["WECHATPAY_MCHID"] == ["WECHAT_MCHID"]
    assert warning["used"]["MYSQL_URL"] == list(DB_PARTS)
    assert warning["ignored"] == {"WECHATPAY_APPID": ["WECHAT_APPID"]}
    assert KIT.apiv3_key not in repr(warning) and "p@ss" not in repr(warning)


def test_no_warning_without_old_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PORT", "8085")
    with capture_logs() as logs:
        load_settings(BaseServiceSettings)
        existing_env.warn_once()
    assert logs == []


def test_a_bad_value_names_the_old_name_it_was_given_as(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in existing_env_file().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WECHAT_APIV3_KEY", "too-short")
    with pytest.raises(ConfigError) as raised:
        load_settings(_Merchant)
    assert "WECHATPAY_APIV3_KEY (given as WECHAT_APIV3_KEY) must be exactly 32 bytes" in str(
        raised.value
    )


def test_disagreeing_old_names_stop_only_a_process_that_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in existing_env_file().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WX_MCHID", "1900000999")
    with pytest.raises(ConfigError, match="WECHATPAY_MCHID: WECHAT_MCHID and WX_MCHID differ"):
        load_settings(_Merchant)
    assert load_settings(BaseServiceSettings).mysql.database == "prod"


# --- PEMs on one line ---------------------------------------------------------------


class _Pems(BaseModel):
    private: PrivateKeyPem
    public: PublicKeyPem
    certificate: PublicKeyPem
    token_private: TokenSigningKey
    token_public: TokenVerifyingKeys


def test_pems_with_literal_backslash_n_load() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    token_key = Ed25519PrivateKey.generate()
    certificate = certificate_pem(self_signed_certificate(KIT.platform_key))
    pems = _Pems(
        private=one_line(KIT.merchant_private_key_pem),
        public=one_line(KIT.platform_public_key_pem),
        # Windows line ends written out as text, too.
        certificate=certificate.strip().replace("\n", "\\r\\n"),
        token_private=one_line(private_pem(token_key)),
        token_public=one_line(public_pem(token_key)),
    )
    assert pems.private.get_secret_value() == KIT.merchant_private_key_pem.strip()
    assert pems.public == KIT.platform_public_key_pem.strip()
    assert pems.certificate == certificate.strip()
    assert pems.token_public == public_pem(token_key).strip()


def test_only_pems_are_touched() -> None:
    assert pem_with_newlines("a\\nb") == "a\\nb"
    assert pem_with_newlines(KIT.platform_public_key_pem) == KIT.platform_public_key_pem
