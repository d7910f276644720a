-- depends: 0001_initial
-- Retention (retention.py) deletes inbox rows and published outbox rows older than
-- RETENTION_DAYS, oldest first, a bounded batch at a time: these indexes keep each
-- batch a range read. payment_logs are audit and are kept.
CREATE INDEX ix_inbox_processed ON inbox (processed_at);
CREATE INDEX ix_outbox_published ON outbox (published_at);
