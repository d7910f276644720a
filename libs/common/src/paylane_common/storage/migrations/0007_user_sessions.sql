-- depends: 0006_paylane_locks
-- A user's session version (paylane_order.sessions): every client token the order
-- service issues carries it (`ver`), and the order API refuses a token whose version is
-- not the row's. Revoking a user's sessions bumps it. No row: version 0. A table of
-- paylane's own, so the shared `users` table gains no column.

CREATE TABLE IF NOT EXISTS paylane_user_sessions (
    user_id VARCHAR(36) NOT NULL PRIMARY KEY,
    version INT UNSIGNED NOT NULL DEFAULT 0,
    revoked_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
