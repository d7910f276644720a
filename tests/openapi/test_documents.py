"""The OpenAPI documents: valid OpenAPI 3.1, and the committed ones (docs/openapi/) are what
the route tables make (``make openapi`` regenerates them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from paylane.openapi import DOCUMENTS, write_all
from paylane_common.web.openapi import render

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_the_committed_document_is_the_generated_one(name: str) -> None:
    committed = (ROOT / "docs" / "openapi" / f"{name}.json").read_text()
    assert committed == render(DOCUMENTS[name]), f"run `make openapi`: docs/openapi/{name}.json"


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_the_document_is_valid_openapi_3_1(name: str) -> None:
    document = DOCUMENTS[name].document()
    assert document["openapi"].startswith("3.1.")
    validate(document)


def test_make_openapi_writes_every_document(tmp_path: Path) -> None:
    written = write_all(tmp_path)
    assert sorted(p.name for p in written) == [f"{name}.json" for name in sorted(DOCUMENTS)]
    assert all(json.loads(p.read_text())["info"]["title"] for p in written)


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_operation_says_who_may_call_it_and_how_it_fails(name: str) -> None:
    """Security is explicit (public is ``[]``), and every answer has a description."""
    for path, methods in DOCUMENTS[name].document()["paths"].items():
        for method, operation in methods.items():
            assert "security" in operation, f"{method} {path}"
            assert all(r["description"] for r in operation["responses"].values())
