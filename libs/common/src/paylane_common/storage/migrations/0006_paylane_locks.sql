-- depends: 0005_payment_gate
-- Leases that keep a job to one replica at a time (leases.py): one row per job, taken by
-- a conditional UPDATE (free, expired or already the holder's) and renewed while the job
-- runs. Unlike MySQL's GET_LOCK, whose names any account can take, a row is taken only by
-- an account granted UPDATE on its table (deploy/mysql/grants.sql): the reconciler's and
-- the bill reconciliation's by the order service's alone.
CREATE TABLE IF NOT EXISTS paylane_locks (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    holder VARCHAR(128) NULL,
    expires_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

INSERT IGNORE INTO paylane_locks (name) VALUES ('paylane.reconciler'), ('paylane.bills');

-- Retention runs in every consumer service (the order and the entitlement service): its
-- lease is in a table of its own, so that granting them UPDATE on it gives them no other
-- job's lease. (A view of one row would need CREATE VIEW, which the migrator lacks.)
CREATE TABLE IF NOT EXISTS paylane_retention_lock (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    holder VARCHAR(128) NULL,
    expires_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

INSERT IGNORE INTO paylane_retention_lock (name) VALUES ('paylane.retention');
