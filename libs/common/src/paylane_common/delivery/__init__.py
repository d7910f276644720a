"""At-least-once in, exactly-once effect, transactional outbox out: consumers, batches,
inbox, outbox, retention."""
