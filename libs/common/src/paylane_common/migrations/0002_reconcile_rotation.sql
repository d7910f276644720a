-- When the reconciler last asked WeChat Pay about a pending order or refund (NULL: never),
-- so that each pass looks first at what it has never asked about, then at what it asked
-- about longest ago: abandoned orders cannot hold every slot of a pass.
ALTER TABLE payment_orders
    ADD COLUMN reconciled_at DATETIME(6) NULL,
    ADD KEY ix_orders_reconcile (status, reconciled_at, created_at);

ALTER TABLE refunds
    ADD COLUMN reconciled_at DATETIME(6) NULL,
    ADD KEY ix_refunds_reconcile (status, reconciled_at, created_at);
