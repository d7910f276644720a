"""What every ``paylane`` command starts with: the settings, or one clear line and exit 2;
and what the commands share: an argument type, their tables."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from paylane_common.runtime import existing_env
from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.logs import configure_logging
from paylane_common.runtime.settings import BaseServiceSettings, exit_on_config_error, load_settings

S = TypeVar("S", bound=BaseServiceSettings)


def command_settings(cls: type[S]) -> S:
    """``cls`` from the environment, with logging set up as it says."""
    try:
        settings = load_settings(cls)
    except ConfigError as exc:
        exit_on_config_error(exc)  # raises SystemExit(2)
        raise
    configure_logging(settings.log_format)
    existing_env.warn_once()
    return settings


def positive(text: str) -> int:
    """An argparse type: an integer of 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


#: Identifiers and times: never folded (copied into other commands, grepped for).
NO_WRAP = frozenset({"message_id", "out_trade_no", "time (UTC)", "failed at (UTC)"})


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """``rows`` as a table on stdout: numbers right-aligned, identifiers never folded."""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        numeric = bool(cells) and all(row[i].isdigit() for row in cells)
        table.add_column(
            name,
            justify="right" if numeric else "left",
            overflow="fold",
            no_wrap=name in NO_WRAP,
        )
    for row in cells:
        table.add_row(*row)
    Console().print(table)
