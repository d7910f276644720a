"""Deliveries as ``paylane_common.batching.BatchConsumer`` hands them to an applier."""

from __future__ import annotations

from paylane_common import tracing
from paylane_common.batching import BatchItem
from paylane_common.events import Envelope


def batch_item(envelope: Envelope, data: object) -> BatchItem:
    """One delivery of a batch, its trace begun as the consumer begins it."""
    return BatchItem(envelope, data, lambda: tracing.begin(f"trace-{envelope.event_id}", "cause"))
