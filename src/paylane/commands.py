"""What every ``paylane`` command starts with: the settings, or one clear line and exit 2."""

from __future__ import annotations

from typing import TypeVar

from paylane_common.exceptions import ConfigError
from paylane_common.logs import configure_logging
from paylane_common.settings import BaseServiceSettings, exit_on_config_error, load_settings

S = TypeVar("S", bound=BaseServiceSettings)


def command_settings(cls: type[S]) -> S:
    """``cls`` from the environment, with logging set up as it says."""
    try:
        settings = load_settings(cls)
    except ConfigError as exc:
        exit_on_config_error(exc)  # raises SystemExit(2)
        raise
    configure_logging(settings.log_format)
    return settings
