-- The services' database identities and their grants (docs/operations.md, "Identities
-- and permissions"). {database}, {order_user}, {entitlement_user} and {notifier_user} are
-- filled in by deploy/mysql/apply-grants.sh (compose), by the tests (tests/integration/
-- test_least_privilege.py, which run the services under exactly these grants) or by hand.
--
-- One user per service, each with the tables (and, where MySQL allows it, the columns)
-- its statements touch, nothing else: no DDL for any of them (no service migrates at
-- start), no table it does not use. GET_LOCK (reconciler, retention) needs no grant.
-- A new statement on another table fails with error 1142 until it is granted here (the
-- integration tests run each service under these grants).
--
-- Table and column grants need the tables: apply these after `paylane migrate` (compose's
-- "grants" service does, on every start), again after a migration that adds a table. The
-- migrator ('paylane_migrate': CREATE, ALTER, DROP, INDEX, REFERENCES and rows on the
-- database) is made before, by deploy/mysql/init-users.sh.

-- order (the API, the payment/refund consumer, `paylane reconcile`): the orders, refunds
-- and the audit trail, which it only appends to. Users: it creates them by openid
-- (INSERT … ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)), so it may insert an openid
-- and "update" id and openid (MariaDB asks UPDATE of the inserted columns too; order
-- already signs any user's client token, so openid adds nothing), and never writes a
-- user's plan or regenerations.
GRANT SELECT, INSERT, UPDATE ON `{database}`.`payment_orders` TO '{order_user}'@'%';
GRANT SELECT, INSERT, UPDATE ON `{database}`.`refunds` TO '{order_user}'@'%';
GRANT INSERT ON `{database}`.`payment_logs` TO '{order_user}'@'%';
GRANT SELECT, INSERT (`openid`), UPDATE (`id`, `openid`)
  ON `{database}`.`users` TO '{order_user}'@'%';
-- Its inbox claims and outbox rows; DELETE for retention pruning (retention.py).
GRANT SELECT, INSERT, DELETE ON `{database}`.`inbox` TO '{order_user}'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.`outbox` TO '{order_user}'@'%';

-- entitlement (the order.paid / order.refunded consumer): a user's plan and regenerations
-- (those two columns only) and its ledger, where it marks revocations. No orders, refunds
-- or audit trail. LOCK TABLES: MySQL 8 lets SELECT … FOR UPDATE (its locks on users and
-- on the ledger) through only with SELECT and one of UPDATE, DELETE or LOCK TABLES on the
-- table; with UPDATE on columns only, LOCK TABLES is the one that certainly counts. It
-- adds nothing a locking read cannot already do (hold rows of tables it may read).
GRANT SELECT, UPDATE (`payment_status`, `regenerate_count`)
  ON `{database}`.`users` TO '{entitlement_user}'@'%';
GRANT SELECT, INSERT, UPDATE (`revoked_at`)
  ON `{database}`.`entitlement_grants` TO '{entitlement_user}'@'%';
GRANT SELECT, INSERT, DELETE ON `{database}`.`inbox` TO '{entitlement_user}'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.`outbox` TO '{entitlement_user}'@'%';
GRANT LOCK TABLES ON `{database}`.* TO '{entitlement_user}'@'%';

-- notifier (internet-facing WebSocket/SSE): reads the state snapshot sent on connect,
-- writes nothing. Compromised, it cannot change a plan, an order or a refund.
GRANT SELECT ON `{database}`.`payment_orders` TO '{notifier_user}'@'%';
GRANT SELECT ON `{database}`.`users` TO '{notifier_user}'@'%';
