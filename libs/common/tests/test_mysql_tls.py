"""``MYSQL_URL``'s ``ssl-mode`` and ``ssl-ca`` (mysql_tls.py): what each mode makes of the
drivers' TLS, and every mistake refused at start naming the variable. Connecting over TLS
is tests/integration/test_mysql_tls.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.settings import BaseServiceSettings, MySQLParams, load_settings
from paylane_common.storage.mysql_tls import SslMode
from paylane_common.wechatpay.testing import (
    certificate_pem,
    new_private_key,
    self_signed_certificate,
)

URL = "mysql://paylane:pw@db.example.com:3306/paylane"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_text(certificate_pem(self_signed_certificate(new_private_key())))
    return path


def test_no_ssl_mode_is_plain_as_before() -> None:
    tls = MySQLParams.from_url(URL).tls
    assert tls.mode == SslMode.DISABLED and tls.context() is None
    assert tls.aiomysql_args() == {}
    assert tls.pymysql_args() == {"ssl_disabled": True}  # not pymysql's own PREFERRED


@pytest.mark.parametrize("mode", ["REQUIRED", "required", "PREFERRED"])
def test_required_and_preferred_encrypt_without_verifying(mode: str) -> None:
    tls = MySQLParams.from_url(f"{URL}?ssl-mode={mode}").tls
    context = tls.context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert tls.required == (mode.upper() == "REQUIRED")
    assert ("ssl" in tls.pymysql_args()) == tls.required


@pytest.mark.parametrize(("mode", "hostname"), [("VERIFY_CA", False), ("VERIFY_IDENTITY", True)])
def test_verify_modes_verify_the_chain_against_ssl_ca(ca: Path, mode: str, hostname: bool) -> None:
    tls = MySQLParams.from_url(f"{URL}?ssl-mode={mode}&ssl-ca={ca}").tls
    context = tls.context()
    assert context is not None and tls.required and tls.ca == ca
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is hostname
    assert context.cert_store_stats()["x509"] == 1  # that CA only, not the system's


def test_verify_ca_without_ssl_ca_trusts_the_system_cas() -> None:
    context = MySQLParams.from_url(f"{URL}?ssl-mode=VERIFY_CA").tls.context()
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("ssl-mode=VERIFY", "ssl-mode must be one of DISABLED, PREFERRED, REQUIRED"),
        ("sslmode=VERIFY_CA", "unknown parameter 'sslmode' (it takes ssl-mode and ssl-ca only)"),
        ("charset=utf8mb4", "unknown parameter 'charset'"),
        ("ssl-mode=REQUIRED&ssl_mode=DISABLED", "gives ssl-mode twice"),
        ("ssl-ca={ca}", "ssl-ca is used only with ssl-mode=VERIFY_CA or VERIFY_IDENTITY"),
        ("ssl-mode=REQUIRED&ssl-ca={ca}", "(ssl-mode is REQUIRED)"),
        ("ssl-mode=VERIFY_CA&ssl-ca={missing}", "ssl-ca '{missing}' does not exist"),
        ("ssl-mode=VERIFY_CA&ssl-ca={not_pem}", "ssl-ca '{not_pem}' holds no PEM certificate"),
    ],
)
def test_mistakes_are_refused_at_start_naming_mysql_url(
    monkeypatch: pytest.MonkeyPatch, ca: Path, tmp_path: Path, query: str, problem: str
) -> None:
    not_pem = tmp_path / "key.pem"
    not_pem.write_text("not a certificate\n")
    paths = {"ca": ca, "missing": tmp_path / "nope.pem", "not_pem": not_pem}
    monkeypatch.setenv("MYSQL_URL", f"{URL}?{query.format(**paths)}")
    with pytest.raises(ConfigError) as refused:
        load_settings(BaseServiceSettings)
    message = str(refused.value)
    assert "MYSQL_URL " in message and problem.format(**paths) in message
    assert ":pw@" not in message
