"""Errors shared by every paylane package (one base class)."""


class PaylaneError(Exception):
    """Base of paylane's own errors."""


class ConfigError(PaylaneError):
    """A missing or invalid setting; the message names the variable."""


class PublishError(PaylaneError):
    """The broker did not durably accept a message (nack, return or timeout)."""


class EventValidationError(PaylaneError):
    """A message is not a valid paylane event."""
