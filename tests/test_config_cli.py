"""``paylane config import ENVFILE`` and ``paylane config check --offline``: the existing
system's env file turned into paylane's, and what each service would start with."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dotenv import dotenv_values

from paylane import cli
from paylane_common.contract.tokens import private_pem
from paylane_common.runtime import existing_env
from paylane_common.runtime.existing_env import DB_PARTS, RENAMES
from paylane_common.runtime.settings import FILE_VARIABLES, load_settings
from paylane_common.wechatpay.testing import FakeWechatPay
from paylane_order.settings import OrderSettings

KIT = FakeWechatPay()
TOKEN_KEY = private_pem(Ed25519PrivateKey.generate())
DB_PASSWORD = "p@ss:w/rd-of-the-existing-db"


def one_line(pem: str) -> str:
    return pem.strip().replace("\n", "\\n")


#: The existing backend's env file: its merchant (PEMs on one line, double- and
#: single-quoted), its database in parts, variables paylane has no setting for, and the
#: settings paylane adds (its own names).
EXISTING = f"""\
# the Node backend's .env
WECHAT_APPID={KIT.appid}
WECHAT_MCHID={KIT.mchid}
WECHAT_SERIAL_NO={KIT.merchant_serial_no}
WECHAT_PRIVATE_KEY="{one_line(KIT.merchant_private_key_pem)}"
WECHAT_APIV3_KEY={KIT.apiv3_key}
WECHAT_PUBLIC_KEY='{one_line(KIT.platform_public_key_pem)}'
WECHAT_PUBLIC_KEY_ID={KIT.public_key_id}
WECHAT_NOTIFY_URL=https://pay.example.com/notify/wechatpay
DB_HOST=db.example.com
DB_PORT=26462
DB_USER=app
DB_PASSWORD={DB_PASSWORD}
DB_NAME=prod
API_BASE_URL=https://api.example.com
JWT_SECRET=not-paylanes
CLIENT_TOKEN_PRIVATE_KEY="{one_line(TOKEN_KEY)}"
ORDER_TTL_S=900
"""


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [*RENAMES, *DB_PARTS, *RENAMES.values(), "AMQP_URL", "ORDER_TTL_S"]:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    for name in ("CLIENT_TOKEN_PRIVATE_KEY", "CLIENT_TOKEN_PRIVATE_KEY_FILE", "LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(existing_env, "_USED", {})
    monkeypatch.setattr(existing_env, "_SHADOWED", {})
    monkeypatch.setattr(existing_env, "_warned", True)  # no warning in these tests' output
    yield


def set_env(monkeypatch: pytest.MonkeyPatch, env_file: Path) -> None:
    for name, value in dotenv_values(env_file).items():
        assert value is not None
        monkeypatch.setenv(name, value)


@pytest.fixture
def existing_file(tmp_path: Path) -> Path:
    path = tmp_path / "existing.env"
    path.write_text(EXISTING)
    return path


def test_import_writes_paylanes_names_with_the_secrets_in_files(
    existing_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "paylane"
    assert cli.main(["config", "import", str(existing_file), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "WECHAT_MCHID → WECHATPAY_MCHID" in report
    assert "DB_HOST, DB_PORT, DB_USER, DB_PASSWORD, DB_NAME → MYSQL_URL_FILE" in report
    assert "WECHAT_PRIVATE_KEY → WECHATPAY_MERCHANT_PRIVATE_KEY_FILE" in report
    assert "CLIENT_TOKEN_PRIVATE_KEY → CLIENT_TOKEN_PRIVATE_KEY_FILE" in report
    assert "not mapped (no paylane setting): API_BASE_URL, JWT_SECRET" in report
    assert DB_PASSWORD not in report and KIT.apiv3_key not in report

    written = dotenv_values(out / "paylane.env")
    assert written["WECHATPAY_MCHID"] == KIT.mchid
    assert written["ORDER_TTL_S"] == "900"
    assert "API_BASE_URL" not in written and "WECHAT_MCHID" not in written
    secrets = {name for name in written if name.endswith("_FILE")}
    assert secrets == {
        "MYSQL_URL_FILE",
        "WECHATPAY_MERCHANT_PRIVATE_KEY_FILE",
        "WECHATPAY_APIV3_KEY_FILE",
        "WECHATPAY_PUBLIC_KEY_FILE",
        "CLIENT_TOKEN_PRIVATE_KEY_FILE",
    }
    assert all(name.removesuffix("_FILE") in FILE_VARIABLES for name in secrets)
    for name in secrets:
        path = Path(str(written[name]))
        assert path.parent == out / "secrets"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "paylane.env").stat().st_mode) == 0o600
    key = Path(str(written["WECHATPAY_MERCHANT_PRIVATE_KEY_FILE"])).read_text()
    assert key.strip() == KIT.merchant_private_key_pem.strip()  # real newlines
    assert DB_PASSWORD not in (out / "paylane.env").read_text()


def test_imported_settings_are_the_ones_the_old_names_give(
    existing_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "paylane"
    assert cli.main(["config", "import", str(existing_file), "--out", str(out)]) == 0
    with monkeypatch.context() as patch:
        set_env(patch, existing_file)
        from_old_names = load_settings(OrderSettings)
    set_env(monkeypatch, out / "paylane.env")
    imported = load_settings(OrderSettings)
    assert imported.model_dump() == from_old_names.model_dump()
    assert imported.mysql.password == DB_PASSWORD
    assert imported.order_ttl_s == 900


def test_import_refuses_to_overwrite_without_force(
    existing_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "paylane"
    argv = ["config", "import", str(existing_file), "--out", str(out)]
    assert cli.main(argv) == 0
    (out / "secrets" / "wechatpay_apiv3_key").write_text("edited by hand")
    assert cli.main(argv) == 1
    assert "exist already; --force" in capsys.readouterr().err
    assert (out / "secrets" / "wechatpay_apiv3_key").read_text() == "edited by hand"
    assert cli.main([*argv, "--force"]) == 0
    assert (out / "secrets" / "wechatpay_apiv3_key").read_text().strip() == KIT.apiv3_key


def test_import_of_disagreeing_old_names_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "existing.env"
    source.write_text("WECHAT_MCHID=1900000109\nWX_MCHID=1900000999\n")
    out = tmp_path / "paylane"
    assert cli.main(["config", "import", str(source), "--out", str(out)]) == 1
    assert "WECHATPAY_MCHID: WECHAT_MCHID and WX_MCHID differ" in capsys.readouterr().err
    assert not out.exists()


def test_check_shows_the_effective_configuration_with_secrets_masked(
    existing_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_env(monkeypatch, existing_file)
    # Every service by default: the notifier refuses the order service's signing key.
    assert cli.main(["config", "check", "--offline"]) == 1
    shown = capsys.readouterr().out
    for service in ("ingress:", "order:", "entitlement:", "notifier:"):
        assert f"\n{service}\n" in f"\n{shown}"
    assert "problem: CLIENT_TOKEN_PRIVATE_KEY must not be given to the notifier" in shown
    services = ["--service", "ingress", "--service", "order", "--service", "entitlement"]
    assert cli.main(["config", "check", "--offline", *services]) == 0
    shown = capsys.readouterr().out
    assert "notifier:" not in shown
    assert f"{KIT.mchid}  [WECHAT_MCHID]" in shown
    assert "mysql://app:****@db.example.com:26462/prod  [DB_HOST, DB_PORT" in shown
    assert "**** (32 bytes)  [WECHAT_APIV3_KEY]" in shown
    assert "PEM PUBLIC KEY  [WECHAT_PUBLIC_KEY]" in shown
    assert "900  [env]" in shown
    for secret in (KIT.apiv3_key, DB_PASSWORD, "p%40ss", "BEGIN PRIVATE KEY"):
        assert secret not in shown
    assert shown.rstrip().endswith("no problems")


def test_check_names_every_problem_and_fails(
    existing_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_env(monkeypatch, existing_file)
    monkeypatch.setenv("WECHAT_APIV3_KEY", "too-short")
    monkeypatch.setenv("ORDER_TTL_S", "9000")
    monkeypatch.delenv("WECHAT_NOTIFY_URL")
    assert cli.main(["config", "check", "--offline", "--service", "order"]) == 1
    shown = capsys.readouterr().out
    problems = [line.strip() for line in shown.splitlines() if "problem:" in line]
    assert problems == [
        "problem: WECHATPAY_APIV3_KEY (given as WECHAT_APIV3_KEY) must be exactly 32 bytes",
        "problem: WECHATPAY_NOTIFY_URL is required",
        problems[2],
    ]
    assert problems[2].startswith("problem: ORDER_TTL_S must be at most 7200")
    assert "WECHATPAY_NOTIFY_URL" in shown and "unset  [required]" in shown
    assert "ingress:" not in shown
    assert shown.rstrip().endswith("3 problem(s)")
