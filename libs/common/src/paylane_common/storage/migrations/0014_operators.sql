-- depends: 0010_business_orders 0011_webhooks 0012_shipping 0013_order_list_indexes
-- The operators' console (paylane_order.console): who may sign in, their sessions, and
-- the audit log of what they did. Tables of paylane's own; the shared tables gain nothing.
--
-- paylane_operators: one row an operator (`paylane operators add`). The password is kept
-- as a salted scrypt hash (`scrypt$n$r$p$salt$hash`), never the password. Failed sign-ins
-- are counted; past the limit the account is locked until locked_until.
CREATE TABLE IF NOT EXISTS paylane_operators (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    name VARCHAR(64) NOT NULL,
    role ENUM('viewer', 'support', 'admin') NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    failed_attempts INT UNSIGNED NOT NULL DEFAULT 0,
    locked_until DATETIME(6) NULL,
    last_sign_in_at DATETIME(6) NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    UNIQUE KEY uq_operators_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- paylane_operator_sessions: a signed-in browser. The cookie carries a random token; the
-- row keeps only its SHA-256, so a copy of the table signs nobody in. csrf_token is the
-- token every form of that session posts back.
CREATE TABLE IF NOT EXISTS paylane_operator_sessions (
    token_hash CHAR(64) NOT NULL PRIMARY KEY,
    operator_id VARCHAR(36) NOT NULL,
    csrf_token VARCHAR(64) NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    expires_at DATETIME(6) NOT NULL,
    KEY ix_operator_sessions_operator (operator_id),
    KEY ix_operator_sessions_expires (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- paylane_operator_audit: every action an operator took or tried (and sign-in lockouts),
-- appended, never rewritten: who, what, when, why, the order's state before and after,
-- and the outcome (done, refused, failed) with its detail.
CREATE TABLE IF NOT EXISTS paylane_operator_audit (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    operator VARCHAR(64) NOT NULL,
    role VARCHAR(16) NOT NULL,
    action VARCHAR(32) NOT NULL,
    out_trade_no VARCHAR(100) NULL,
    reason VARCHAR(255) NOT NULL,
    state_before VARCHAR(32) NULL,
    state_after VARCHAR(32) NULL,
    outcome VARCHAR(16) NOT NULL,
    detail TEXT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY ix_operator_audit_order (out_trade_no, created_at),
    KEY ix_operator_audit_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
