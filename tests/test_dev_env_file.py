"""``paylane dev``'s env file: `make run` hands it to honcho (``honcho start -e .dev/env``)
and ``paylane dev order`` / ``notify`` read it back, so both must read the same values."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from honcho.environ import parse as honcho_parse

from paylane import dev
from paylane_common.contract.tokens import TokenSigner, TokenVerifier
from paylane_common.runtime.settings import BaseServiceSettings, load_settings
from paylane_ingress.settings import IngressSettings
from paylane_notifier.settings import NotifierSettings
from paylane_order.settings import OrderSettings

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"


def test_init_writes_what_honcho_and_paylane_dev_read_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / ".dev"
    dev.init(argparse.Namespace(dir=directory))
    env_file = directory / "env"
    first = env_file.read_text()
    read = dev._dev_env(directory)
    assert read == honcho_parse(first)
    assert Path(read["WECHATPAY_PUBLIC_KEY_FILE"]).is_file()
    # The client tokens' key pair: the order service signs, the notifier checks.
    signer = TokenSigner.from_pem(Path(read["CLIENT_TOKEN_PRIVATE_KEY_FILE"]).read_text())
    verifier = TokenVerifier.from_pem(Path(read["CLIENT_TOKEN_PUBLIC_KEY_FILE"]).read_text())
    assert verifier.key_ids == {signer.kid}
    assert "CLIENT_TOKEN_SECRET" not in read

    # A second init keeps every value and adds nothing.
    dev.init(argparse.Namespace(dir=directory))
    assert env_file.read_text() == first
    assert capsys.readouterr().out.splitlines()[-1].endswith("up to date")

    # What a developer may add by hand reads alike too: comments, quotes, a literal $.
    env_file.write_text(
        first + "# local overrides\nLOG_LEVEL='debug'\nGREETING=\"a b\"\nPRICE=$5\n"
    )
    read = dev._dev_env(directory)
    assert read == honcho_parse(env_file.read_text())
    assert (read["LOG_LEVEL"], read["GREETING"], read["PRICE"]) == ("debug", "a b", "$5")


@pytest.mark.parametrize(
    "settings_class",
    [OrderSettings, IngressSettings, NotifierSettings],
    ids=lambda cls: cls.__name__,
)
def test_init_writes_settings_every_service_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings_class: type[BaseServiceSettings]
) -> None:
    """`make run` hands the one env file to every service: each takes it as it is (the
    secrets long enough and distinct, the login API base the local sandbox)."""
    directory = tmp_path / ".dev"
    dev.init(argparse.Namespace(dir=directory))
    env = dev._dev_env(directory)
    if settings_class is NotifierSettings:
        # The Procfile's notifier line unsets the token-signing key: it refuses one.
        assert "env -u CLIENT_TOKEN_PRIVATE_KEY_FILE" in PROCFILE.read_text()
        env = {k: v for k, v in env.items() if not k.startswith("CLIENT_TOKEN_PRIVATE_KEY")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(settings_class)
    secrets = [
        getattr(settings, name, None) for name in ("internal_api_secret", "backend_api_secret")
    ]
    assert all(secret is None or len(secret.get_secret_value()) >= 32 for secret in secrets)
