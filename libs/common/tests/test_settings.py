"""Settings: typed, fail fast naming the variable, secrets from *_FILE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from paylane_common.contract.tokens import private_pem, public_pem
from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.settings import (
    ApiSecretSettings,
    BaseServiceSettings,
    CatalogSettings,
    HttpBaseUrl,
    TokenSigningKey,
    TokenVerifyingKeys,
    environment_of,
    load_settings,
)
from paylane_common.wechatpay.testing import new_private_key, private_key_pem, public_key_pem

TOKEN_KEY = Ed25519PrivateKey.generate()
PUBLIC = public_pem(TOKEN_KEY)


class _Svc(BaseServiceSettings, CatalogSettings):
    client_token_public_key: TokenVerifyingKeys
    wechatpay_api_base: HttpBaseUrl = "https://api.mch.weixin.qq.com"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AMQP_URL",
        "AMQP_URL_FILE",
        "MYSQL_URL",
        "MYSQL_URL_FILE",
        "HTTP_PORT",
        "ADMIN_PORT",
        "HTTP_KEEPALIVE_TIMEOUT_S",
        "HTTP_HEADER_TIMEOUT_S",
        "CLIENT_TOKEN_PUBLIC_KEY",
        "CLIENT_TOKEN_PUBLIC_KEY_FILE",
        "PACKAGE_CATALOG",
        "WECHATPAY_API_BASE",
        "INTERNAL_API_SECRET",
        "BACKEND_API_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults_follow_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIENT_TOKEN_PUBLIC_KEY", PUBLIC)
    settings = load_settings(_Svc)
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.mysql.database == "paylane"
    assert settings.catalog["premium"].price_fen == 2990
    assert (settings.http_keepalive_timeout_s, settings.http_header_timeout_s) == (75, 10)


def test_missing_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="CLIENT_TOKEN_PUBLIC_KEY is required"):
        load_settings(_Svc)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MYSQL_URL", "postgres://x/y"),
        ("MYSQL_URL", "mysql://root@127.0.0.1:3306/"),
        ("AMQP_URL", "http://broker"),
        ("HTTP_PORT", "70000"),
        ("ADMIN_PORT", "8080"),  # the public port
        ("ADMIN_PORT", "0"),
        # At most 75 s; shorter ones are allowed (the tests run them).
        ("HTTP_KEEPALIVE_TIMEOUT_S", "120"),
        ("HTTP_KEEPALIVE_TIMEOUT_S", "0"),
        ("HTTP_HEADER_TIMEOUT_S", "0"),
        ("PACKAGE_CATALOG", "{not json"),
        ("PACKAGE_CATALOG", '{"x": {"price_fen": 0, "payment_status": "basic"}}'),
    ],
)
def test_invalid_value_is_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv("CLIENT_TOKEN_PUBLIC_KEY", PUBLIC)
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings(_Svc)


def test_secret_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    secret = tmp_path / "backend-secret"
    secret.write_text("from-a-file-" + "x" * 32 + "\n")
    monkeypatch.setenv("BACKEND_API_SECRET_FILE", str(secret))
    monkeypatch.setenv("CLIENT_TOKEN_PUBLIC_KEY_FILE", str(tmp_path / "public.pem"))
    (tmp_path / "public.pem").write_text(PUBLIC)

    class WithSecret(_Svc):
        backend_api_secret: SecretStr

    settings = load_settings(WithSecret)
    assert settings.backend_api_secret.get_secret_value() == "from-a-file-" + "x" * 32
    assert settings.client_token_public_key == PUBLIC.strip()
    assert "from-a-file" not in repr(settings)


def test_broker_and_database_urls_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The URLs carry passwords: like every other secret they may be mounted files."""
    amqp = tmp_path / "amqp_url"
    amqp.write_text("amqp://paylane-order:s3cret@rabbitmq:5672/\n")
    mysql = tmp_path / "mysql_url"
    mysql.write_text("mysql://paylane:s3cret@mysql:3306/paylane\n")
    monkeypatch.setenv("CLIENT_TOKEN_PUBLIC_KEY", PUBLIC)
    monkeypatch.setenv("AMQP_URL_FILE", str(amqp))
    monkeypatch.setenv("MYSQL_URL_FILE", str(mysql))
    settings = load_settings(_Svc)
    assert settings.amqp_url == "amqp://paylane-order:s3cret@rabbitmq:5672/"
    assert (settings.mysql.user, settings.mysql.host) == ("paylane", "mysql")
    # The variable itself still wins over the file, as for every other secret.
    monkeypatch.setenv("AMQP_URL", "amqp://other:pw@elsewhere:5672/")
    assert load_settings(_Svc).amqp_url == "amqp://other:pw@elsewhere:5672/"


def test_url_from_file_is_validated_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    bad = tmp_path / "mysql_url"
    bad.write_text("postgres://x/y")
    monkeypatch.setenv("CLIENT_TOKEN_PUBLIC_KEY", PUBLIC)
    monkeypatch.setenv("MYSQL_URL_FILE", str(bad))
    with pytest.raises(ConfigError, match="MYSQL_URL"):
        load_settings(_Svc)


def test_unreadable_secret_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("CLIENT_TOKEN_PUBLIC_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="CLIENT_TOKEN_PUBLIC_KEY_FILE"):
        load_settings(_Svc)


def test_service_exits_with_one_clear_line() -> None:
    env = {"PATH": "", "MYSQL_URL": "mysql://root:@127.0.0.1:3306/paylane"}
    done = subprocess.run(
        [sys.executable, "-m", "paylane.cli", "serve", "notifier"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == ["paylane: invalid configuration: CLIENT_TOKEN_PUBLIC_KEY is required"]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (private_pem(TOKEN_KEY), "holds a PRIVATE KEY"),
        (PUBLIC + private_pem(TOKEN_KEY), "holds a PRIVATE KEY"),
        (public_key_pem(new_private_key()), "not an Ed25519 public key"),
        ("not a key", "holds no PEM block"),
    ],
    ids=["private key", "public and private", "RSA", "garbage"],
)
def test_token_public_keys_are_ed25519_public_keys_only(
    monkeypatch: pytest.MonkeyPatch, value: str, why: str
) -> None:
    monkeypatch.setenv("CLIENT_TOKEN_PUBLIC_KEY", value)
    with pytest.raises(ConfigError, match=rf"CLIENT_TOKEN_PUBLIC_KEY .*{why}"):
        load_settings(_Svc)


def test_token_public_keys_may_be_several(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotation: the old key and the new one, PEM blocks one after the other."""
    monkeypatch.setenv("CLIENT_TOKEN_PUBLIC_KEY", PUBLIC + public_pem(Ed25519PrivateKey.generate()))
    assert load_settings(_Svc).client_token_public_key.count("BEGIN PUBLIC KEY") == 2


def test_token_signing_key_is_an_ed25519_private_key(monkeypatch: pytest.MonkeyPatch) -> None:
    class Signer(BaseServiceSettings):
        client_token_private_key: TokenSigningKey

    monkeypatch.setenv("CLIENT_TOKEN_PRIVATE_KEY", private_key_pem(new_private_key()))
    with pytest.raises(ConfigError, match=r"CLIENT_TOKEN_PRIVATE_KEY .*not an Ed25519 key"):
        load_settings(Signer)
    monkeypatch.setenv("CLIENT_TOKEN_PRIVATE_KEY", private_pem(TOKEN_KEY))
    assert load_settings(Signer).client_token_private_key.get_secret_value().startswith("-----")


def test_api_base_is_an_http_url_without_its_trailing_slash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLIENT_TOKEN_PUBLIC_KEY", PUBLIC)
    monkeypatch.setenv("WECHATPAY_API_BASE", "http://127.0.0.1:8090/")
    assert load_settings(_Svc).wechatpay_api_base == "http://127.0.0.1:8090"
    monkeypatch.setenv("WECHATPAY_API_BASE", "api.mch.weixin.qq.com")
    with pytest.raises(ConfigError, match="WECHATPAY_API_BASE must be an http\\(s\\) URL"):
        load_settings(_Svc)


class _Secrets(BaseServiceSettings, ApiSecretSettings):
    pass


@pytest.mark.parametrize("name", ["INTERNAL_API_SECRET", "BACKEND_API_SECRET"])
def test_short_api_secrets_are_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "x" * 31)
    with pytest.raises(ConfigError, match=f"{name} must be at least 32 bytes"):
        load_settings(_Secrets)
    monkeypatch.setenv(name, "é" * 16)  # bytes, not characters
    assert load_settings(_Secrets)


def test_equal_api_secrets_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERNAL_API_SECRET", "s" * 32)
    monkeypatch.setenv("BACKEND_API_SECRET", "s" * 32)
    with pytest.raises(ConfigError, match="INTERNAL_API_SECRET must differ from BACKEND"):
        load_settings(_Secrets)
    monkeypatch.setenv("BACKEND_API_SECRET", "")  # blank: unset, nothing to compare
    assert load_settings(_Secrets).backend_api_secret is None


def test_a_cohosted_service_reads_its_prefixed_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``paylane serve consumers``: ``NOTIFIER__X`` is the notifier's ``X``, a file for a
    plain value and the reverse included; the others keep the plain one."""
    monkeypatch.setenv("CLIENT_TOKEN_PUBLIC_KEY", PUBLIC)
    monkeypatch.setenv("MYSQL_URL", "mysql://shared:pw@db:3306/paylane")
    monkeypatch.setenv("HTTP_PORT", "8100")
    own = tmp_path / "mysql_url"
    own.write_text("mysql://notifier:pw@db:3306/paylane\n")
    monkeypatch.setenv("NOTIFIER__MYSQL_URL_FILE", str(own))
    monkeypatch.setenv("NOTIFIER__HTTP_PORT", "8183")
    with environment_of("notifier"):
        notifier = load_settings(_Svc)
    with environment_of("order"):
        order = load_settings(_Svc)
    assert (notifier.mysql.user, notifier.http_port) == ("notifier", 8183)
    assert (order.mysql.user, order.http_port) == ("shared", 8100)
    # Restored: what the process's other code reads is the environment as it was.
    assert "MYSQL_URL_FILE" not in os.environ
    assert os.environ["MYSQL_URL"] == "mysql://shared:pw@db:3306/paylane"
