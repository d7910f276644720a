-- The services' database identities and their grants (docs/operations.md, "Identities
-- and permissions"). {database}, {order_user}, {entitlement_user} and {notifier_user} are
-- filled in by deploy/mysql/apply-grants.sh (compose), by the tests (tests/integration/
-- test_least_privilege.py, which run the services under exactly these grants) or by hand.
--
-- One user per service, each with the tables (and, where MySQL allows it, the columns)
-- its statements touch, nothing else: no DDL for any of them (no service migrates at
-- start), no table it does not use. The leases that keep a job to one replica (leases.py)
-- are rows of paylane_locks: whoever may UPDATE a row may stop its job, so only the order
-- service may take the reconciler's and the bills' (GET_LOCK, used before, is open to all).
-- A new statement on another table fails with error 1142 until it is granted here (the
-- integration tests run each service under these grants).
--
-- Table and column grants need the tables: apply these after `paylane migrate` (compose's
-- "grants" service does, on every start), again after a migration that adds a table. The
-- migrator ('paylane_migrate': CREATE, ALTER, DROP, INDEX, REFERENCES and rows on the
-- database) is made before, by deploy/mysql/init-users.sh.

-- The shared tables (users, payment_orders, refunds, payment_logs) are also written by
-- the cloud function and the Node backend (docs/database.md): each service gets the columns
-- its statements touch. Generated columns (payment_orders.amount_total, refunds.amount_refund
-- and amount_total: fen computed from the yuan columns) can be read, never written.

-- order (the API, the payment/refund consumer, `paylane reconcile`, `paylane refund
-- abnormal`): the orders, refunds and the audit trail, which it only appends to.
-- Orders: it places them (a new row names its price, owner and identity), then moves them
-- (status, payment, refunds, timestamps) but never reprices or reassigns one: no UPDATE of
-- id, user_id, out_trade_no, amount, package_type, trade_type, currency, mchid, appid,
-- idempotency_key, expires_at. generation_id: filled in when a payment names the generation
-- of an order written without one. remark: the backend's note (PATCH /orders/{no});
-- refund_reason: the reason of its latest refund request. A business order's terms
-- (description, external_id, attach) are fixed like its price; its fulfilment moves.
GRANT SELECT, INSERT (`id`, `out_trade_no`, `user_id`, `generation_id`, `transaction_id`,
    `amount`, `package_type`, `payment_method`, `trade_type`, `status`, `paid_at`, `remark`,
    `_openid`, `currency`, `mchid`, `appid`, `idempotency_key`, `expires_at`, `description`,
    `external_id`, `attach`, `fulfilment_status`),
  UPDATE (`status`, `transaction_id`, `paid_at`, `_openid`, `generation_id`, `prepay_id`,
    `code_url`, `h5_url`, `amount_refunded`, `review_reason`, `closed_at`, `refunded_at`,
    `reconciled_at`, `queried_at`, `paid_event_at`, `refund_event_at`, `remark`,
    `refund_reason`, `fulfilment_status`, `fulfilment_detail`, `fulfilled_at`, `pay_params`)
  ON `{database}`.`payment_orders` TO '{order_user}'@'%';
-- Refunds: requested and settled; an ABNORMAL one's remedy (`paylane refund abnormal`)
-- recorded on its row.
GRANT SELECT, INSERT (`id`, `out_refund_no`, `refund_id`, `out_trade_no`, `transaction_id`,
    `refund_amount`, `total_amount`, `status`, `reason`, `refunded_at`, `abnormal_at`),
  UPDATE (`status`, `refund_id`, `refunded_at`, `reconciled_at`, `abnormal_at`, `remedy`,
    `remedy_at`, `remedy_result`)
  ON `{database}`.`refunds` TO '{order_user}'@'%';
-- The audit trail: appended to, never rewritten or backdated (no created_at); read back
-- where the daily bill reconciliation looks for a difference it already recorded (by order
-- and refund), and by the operators' console (an order's timeline, today's differences):
-- never the request and response bodies.
GRANT INSERT (`id`, `type`, `kind`, `out_trade_no`, `out_refund_no`, `event_type`,
    `amount_total`, `request_data`, `response_data`, `event_id`, `transaction_id`, `source`,
    `detail`),
  SELECT (`id`, `out_trade_no`, `out_refund_no`, `type`, `kind`, `event_type`, `source`,
    `event_id`, `transaction_id`, `amount_total`, `detail`, `created_at`)
  ON `{database}`.`payment_logs` TO '{order_user}'@'%';
-- Users: found or created by openid (a new `user-…` id; a mini-program login records
-- last_login_at; on WeChat Cloud Hosting the unionid the platform names is filled in).
-- Never a user's plan or regenerations, nor their personal details.
GRANT SELECT (`id`, `openid`, `unionid`, `payment_status`, `regenerate_count`),
  INSERT (`id`, `openid`, `last_login_at`), UPDATE (`last_login_at`, `unionid`)
  ON `{database}`.`users` TO '{order_user}'@'%';
-- When paylane was installed (the effects sweep looks only at orders created since); the
-- days the daily bill reconciliation finished, added (INSERT IGNORE: never an existing
-- row changed, so not effects_since).
GRANT SELECT, INSERT (`name`, `value`) ON `{database}`.`paylane_meta` TO '{order_user}'@'%';
-- The catalog's prices over time (the payment gate): recorded at start, read per payment.
GRANT SELECT, INSERT, UPDATE (`valid_until`) ON `{database}`.`catalog_prices` TO '{order_user}'@'%';
-- Users' session versions (sessions.py, migration 0007): read on every user call, bumped
-- by a revocation (INSERT … ON DUPLICATE KEY UPDATE wants UPDATE on the inserted columns
-- too: the table's three, so the whole table).
GRANT SELECT, INSERT, UPDATE ON `{database}`.`paylane_user_sessions` TO '{order_user}'@'%';
-- Webhooks to the backend (paylane_order.webhooks, migration 0011): endpoints made,
-- disabled and deleted (a row is kept, marked), one delivery row per event and endpoint
-- (claimed and settled), and the attempts log, only appended to. Nothing is deleted.
GRANT SELECT, INSERT, UPDATE ON `{database}`.`webhook_endpoints` TO '{order_user}'@'%';
GRANT SELECT, INSERT, UPDATE ON `{database}`.`webhook_deliveries` TO '{order_user}'@'%';
GRANT SELECT, INSERT ON `{database}`.`webhook_attempts` TO '{order_user}'@'%';
-- The operators' console (console.py, migration 0014), served on the admin port: its
-- operators (`paylane operators add` runs as order too; a sign-in counts failures and
-- locks), their sessions (made and ended), and its audit log, appended to and read,
-- never rewritten. An order's timeline reads the grant or revocation of the order.
GRANT SELECT, INSERT, UPDATE (`password_hash`, `role`, `failed_attempts`, `locked_until`,
    `last_sign_in_at`)
  ON `{database}`.`paylane_operators` TO '{order_user}'@'%';
GRANT SELECT, INSERT, DELETE ON `{database}`.`paylane_operator_sessions` TO '{order_user}'@'%';
GRANT SELECT, INSERT ON `{database}`.`paylane_operator_audit` TO '{order_user}'@'%';
GRANT SELECT ON `{database}`.`entitlement_grants` TO '{order_user}'@'%';
-- Its inbox claims and outbox rows; DELETE for retention pruning (retention.py).
GRANT SELECT, INSERT, DELETE ON `{database}`.`inbox` TO '{order_user}'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.`outbox` TO '{order_user}'@'%';
-- The leases of the reconciler and the daily bill reconciliation (also `paylane reconcile`,
-- which runs as order), and retention's; taken and released, never added (migration 0006
-- adds the rows).
GRANT SELECT, UPDATE (`holder`, `expires_at`) ON `{database}`.`paylane_locks`
  TO '{order_user}'@'%';
GRANT SELECT, UPDATE (`holder`, `expires_at`) ON `{database}`.`paylane_retention_lock`
  TO '{order_user}'@'%';
-- Shipping declared to WeChat (shipping.py, migration 0012): an order queued once (its
-- row inserted), then its upload's outcome recorded; rows are never deleted. WeChat's
-- access token, shared by the replicas (INSERT … ON DUPLICATE KEY UPDATE: UPDATE on the
-- table's columns too). Its leases ('paylane.shipping', 'paylane.wechat_token') are rows
-- of paylane_locks, granted above.
GRANT SELECT, INSERT (`out_trade_no`, `transaction_id`, `openid`, `item_desc`,
    `logistics_type`),
  UPDATE (`state`, `attempts`, `next_attempt_at`, `uploaded_at`, `last_errcode`,
    `last_errmsg`, `failed_reason`)
  ON `{database}`.`paylane_shipping` TO '{order_user}'@'%';
GRANT SELECT, INSERT, UPDATE ON `{database}`.`paylane_wechat_tokens` TO '{order_user}'@'%';
-- The console's records (migrations 0016, 0017): the rejected notifications ingress
-- publishes (written once, INSERT IGNORE by record id), every query to WeChat Pay, both
-- appended; the notifier's pushes, read. All three read by the timeline and pruned after
-- RETENTION_DAYS under retention's lease 'paylane.records' (granted above), never updated.
GRANT SELECT, INSERT, DELETE ON `{database}`.`notifications_rejected` TO '{order_user}'@'%';
GRANT SELECT, INSERT, DELETE ON `{database}`.`wechatpay_queries` TO '{order_user}'@'%';
GRANT SELECT, DELETE ON `{database}`.`notifier_pushes` TO '{order_user}'@'%';

-- entitlement (the order.paid / order.refunded consumer): a user's plan and regenerations
-- (those two columns only, read by id: nothing of a user's personal details) and its
-- ledger, where it marks revocations. No orders, refunds or audit trail, and no LOCK
-- TABLES: its locking reads (SELECT … FOR UPDATE on users and on the ledger) ask for
-- SELECT and one of UPDATE, DELETE or LOCK TABLES on the table (MySQL 8), which its
-- UPDATE of those columns is. (Tested on MariaDB, which asks for SELECT alone. Should a
-- MySQL server answer a locking read with error 1142, grant LOCK TABLES on the database.)
GRANT SELECT (`id`, `payment_status`, `regenerate_count`),
  UPDATE (`payment_status`, `regenerate_count`)
  ON `{database}`.`users` TO '{entitlement_user}'@'%';
GRANT SELECT, INSERT, UPDATE (`revoked_at`)
  ON `{database}`.`entitlement_grants` TO '{entitlement_user}'@'%';
GRANT SELECT, INSERT, DELETE ON `{database}`.`inbox` TO '{entitlement_user}'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.`outbox` TO '{entitlement_user}'@'%';
-- Retention's lease, a table of its own (not the reconciler's).
GRANT SELECT, UPDATE (`holder`, `expires_at`) ON `{database}`.`paylane_retention_lock`
  TO '{entitlement_user}'@'%';
-- The order service keeps LOCK TABLES for its locking reads (orders, refunds, users) on
-- MySQL 8.
GRANT LOCK TABLES ON `{database}`.* TO '{order_user}'@'%';

-- notifier (internet-facing WebSocket/SSE): reads the state snapshot sent on connect,
-- and appends its pushes to notifier_pushes (INSERT only: it reads back nothing of them).
-- Compromised, it cannot change a plan, an order or a refund, nor read a user's personal
-- details or a payer's openid.
GRANT SELECT (`id`, `out_trade_no`, `user_id`, `generation_id`, `package_type`, `amount`,
    `amount_total`, `amount_refunded`, `status`, `paid_at`, `closed_at`, `refunded_at`,
    `created_at`, `updated_at`)
  ON `{database}`.`payment_orders` TO '{notifier_user}'@'%';
GRANT SELECT (`id`, `payment_status`, `regenerate_count`, `updated_at`)
  ON `{database}`.`users` TO '{notifier_user}'@'%';
GRANT INSERT ON `{database}`.`notifier_pushes` TO '{notifier_user}'@'%';
