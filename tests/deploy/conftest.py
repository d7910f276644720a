from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.manifests import make_compose_secrets


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compose stack's secrets, made by the script `make up` runs."""
    return make_compose_secrets(tmp_path_factory.mktemp("compose-secrets"))
