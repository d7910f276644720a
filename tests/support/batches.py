"""Deliveries as ``paylane_common.delivery.batching.BatchConsumer`` hands them to an applier."""

from __future__ import annotations

from paylane_common.contract.events import Envelope
from paylane_common.delivery.batching import BatchItem
from paylane_common.runtime import tracing


def batch_item(envelope: Envelope, data: object) -> BatchItem:
    """One delivery of a batch, its trace begun as the consumer begins it."""
    return BatchItem(envelope, data, lambda: tracing.begin(f"trace-{envelope.event_id}", "cause"))
