-- depends: 0017_notifier_pushes
-- The lease under which the order service changes its optional RabbitMQ bindings
-- (paylane_order.bindings): order.webhooks bound to the event types some webhook endpoint
-- subscribes to, order.payments to the grants and fulfilments while shipping is declared.
-- One replica at a time reads what is wanted and binds it, so the last change wins.
INSERT IGNORE INTO paylane_locks (name) VALUES ('paylane.bindings');
