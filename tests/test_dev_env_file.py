"""``paylane dev``'s env file: `make run` hands it to honcho (``honcho start -e .dev/env``)
and ``paylane dev order`` / ``notify`` read it back, so both must read the same values."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from honcho.environ import parse as honcho_parse

from paylane import dev
from paylane_common.tokens import TokenSigner, TokenVerifier


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
