"""The README is the front page and docs/ holds the rest: the quickstart comes first, the
README stays short, and every reference points at a file in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Where code and docs live (not .venv, node_modules or build output).
SOURCES = (
    "README.md",
    "Makefile",
    "conftest.py",
    "docs",
    "libs",
    "services",
    "tools",
    "src",
    "tests",
    "deploy",
    "bench",
    "clients/js",
)
SUFFIXES = {".py", ".md", ".yml", ".yaml", ".sql", ".toml", ".json", ".sh", ".js", ".ts"}


def test_the_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[:2] for line in block[:2]] == [["make", "run"], ["make", "test"]]
    for target in ("make up", "make demo", "make test-containers"):
        assert target in text


def test_the_readme_is_a_front_page() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024


def _files() -> list[Path]:
    found = []
    for name in SOURCES:
        path = ROOT / name
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += [
                p
                for p in path.rglob("*")
                if p.suffix in SUFFIXES and "node_modules" not in p.parts and p.is_file()
            ]
    return found


def test_references_point_into_the_repository() -> None:
    """The contract is docs/ (events.md, configuration.md, …): nothing cites a design
    document that is not in the repository."""
    outside = re.compile(r"DESIGN(\.md| §)|SEED_SYSTEM")
    this = Path(__file__).resolve()
    cited = {
        p.relative_to(ROOT).as_posix()
        for p in _files()
        if p.resolve() != this and outside.search(p.read_text(errors="ignore"))
    }
    assert not cited, f"cite a file in docs/ instead: {sorted(cited)}"


def test_relative_links_of_the_docs_resolve() -> None:
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#", 1)[0]
            if not path or target.startswith(("http://", "https://", "mailto:")):
                continue
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert not broken, broken


def test_every_route_is_on_a_page() -> None:
    """The pages for people name every route the OpenAPI documents have."""
    from paylane.openapi import DOCUMENTS

    pages = {
        "order": ["order-api.md"],
        "ingress": ["ingress.md", "cloud-function.md"],
        "notifier": ["notifier.md"],
    }
    for name, api in DOCUMENTS.items():
        text = "".join((ROOT / "docs" / page).read_text() for page in pages[name])
        for path, methods in api.document()["paths"].items():
            for method in methods:
                assert f"{method.upper()} {path}" in text, f"{name}: {method} {path}"


def test_every_command_is_on_the_commands_page() -> None:
    import argparse

    from paylane.cli import build_parser

    text = (ROOT / "docs" / "commands.md").read_text()
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for command in actions[0].choices:
        assert f"`paylane {command}" in text, command
