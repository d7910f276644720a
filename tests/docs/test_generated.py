"""The generated references: docs/configuration.md and docs/metrics.md are what
``make docs`` (``python -m paylane.docs``) writes from the settings classes and the
Prometheus registry, and every setting is described."""

from __future__ import annotations

from pathlib import Path

import pytest

from paylane.docs import DOCUMENTS, SERVICES, collect_metrics, collect_variables, write_all

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_the_committed_reference_is_the_generated_one(name: str) -> None:
    committed = (ROOT / "docs" / name).read_text()
    assert committed == DOCUMENTS[name](), f"run `make docs`: docs/{name} is out of date"


def test_every_setting_of_every_service_is_described() -> None:
    """A new setting needs a ``#:`` comment above it: that is its documentation."""
    undescribed = [
        f"{v.name} ({service})"
        for v in collect_variables()
        for service, text in v.descriptions.items()
        if not text
    ]
    assert not undescribed, f"settings without a `#:` comment: {undescribed}"


def test_every_service_setting_is_listed() -> None:
    listed = {v.name for v in collect_variables()}
    for cls in SERVICES.values():
        assert {name.upper() for name in cls.model_fields} <= listed


def test_the_settings_the_readme_once_missed_are_there() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for name in ("SNAPSHOT_WINDOW_S", "SNAPSHOT_LIMIT", "PUBLISH_TIMEOUT_S"):
        assert f"`{name}`" in text


def test_every_paylane_metric_is_listed_with_its_help() -> None:
    metrics = collect_metrics()
    names = {m.name for m in metrics}
    for name in (
        "paylane_notifier_dropped_clients_total",
        "paylane_notifier_refused_connections_total",
        "paylane_notifier_expired_streams_total",
    ):
        assert name in names
    assert all(m.help and m.module != "?" for m in metrics)


def test_make_docs_writes_every_reference(tmp_path: Path) -> None:
    written = write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(DOCUMENTS)
    assert all(p.read_text().startswith("# ") for p in written)
