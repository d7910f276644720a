"""One payment, followed across services: a trace id carried in AMQP headers.

The first event of a chain (a WeChat notification, an internal notify, a reconciler
finding) starts a trace whose id is that event's id. Every consumer binds the trace of
the message it handles (structlog ``trace_id``), and every event it emits (outbox,
publisher) carries the same trace onward, so ``trace_id`` and ``out_trade_no`` join the
log lines of ingress, order, entitlement and notifier for one payment.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

TRACE_HEADER = "x-paylane-trace"
CAUSE_HEADER = "x-paylane-cause"

_current: ContextVar[tuple[str, str] | None] = ContextVar("paylane_trace", default=None)


def begin(trace_id: str, cause_event_id: str) -> None:
    """Set the trace (and the event being handled) for the current task."""
    _current.set((trace_id, cause_event_id))


def end() -> None:
    _current.set(None)


def from_headers(headers: Mapping[str, Any] | None, event_id: str) -> str:
    value = (headers or {}).get(TRACE_HEADER)
    return value if isinstance(value, str) and value else event_id


def outgoing_headers(event_id: str) -> dict[str, str]:
    """Headers of an event emitted now: the current trace, or a new one rooted here."""
    current = _current.get()
    if current is None:
        return {TRACE_HEADER: event_id}
    trace_id, cause = current
    return {TRACE_HEADER: trace_id, CAUSE_HEADER: cause}
