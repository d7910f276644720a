-- depends: 0009_payment_log_kind
-- Webhooks to the backend (paylane_order.webhooks, docs/webhooks.md): paylane's own
-- tables, the shared ones untouched.
--
-- webhook_endpoints: one row per endpoint. source 'config' rows are the WEBHOOK_URLS
-- (their secrets stay in the settings: secret is NULL); source 'api' rows are made by
-- POST /webhooks/endpoints and hold the secret they are signed with. events: the types
-- subscribed to, space-separated. failing_since: the first failure since the last
-- success (WEBHOOK_DISABLE_AFTER_S counts from it). A deleted endpoint keeps its row
-- (deleted_at) for the delivery log.
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id VARCHAR(40) NOT NULL PRIMARY KEY,
    url VARCHAR(2048) NOT NULL,
    source ENUM('config', 'api') NOT NULL,
    events TEXT NOT NULL,
    secret VARCHAR(128) NULL,
    description VARCHAR(255) NOT NULL DEFAULT '',
    status ENUM('enabled', 'disabled') NOT NULL DEFAULT 'enabled',
    disabled_reason VARCHAR(255) NULL,
    disabled_at DATETIME(6) NULL,
    failing_since DATETIME(6) NULL,
    created_at DATETIME(6) NOT NULL,
    deleted_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- One row per (event, endpoint): written in the transaction that takes the event from
-- order.webhooks, so a redelivered event adds nothing. status pending (due at
-- next_attempt_at; a claim moves next_attempt_at a lease ahead), succeeded, failed (its
-- schedule ran out, or its endpoint was disabled or deleted).
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id VARCHAR(128) NOT NULL,
    event_type VARCHAR(64) NOT NULL,
    endpoint_id VARCHAR(40) NOT NULL,
    payload MEDIUMTEXT NOT NULL,
    status ENUM('pending', 'succeeded', 'failed') NOT NULL DEFAULT 'pending',
    attempts INT UNSIGNED NOT NULL DEFAULT 0,
    step INT UNSIGNED NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6) NOT NULL,
    last_status INT NULL,
    last_error VARCHAR(255) NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    UNIQUE KEY webhook_deliveries_event_endpoint (event_id, endpoint_id),
    KEY webhook_deliveries_due (status, next_attempt_at),
    KEY webhook_deliveries_endpoint (endpoint_id, status),
    KEY webhook_deliveries_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The delivery log: every attempt, its HTTP status (NULL: no answer), how long it took
-- and the start of the answer (or the error).
CREATE TABLE IF NOT EXISTS webhook_attempts (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    delivery_id BIGINT UNSIGNED NOT NULL,
    attempted_at DATETIME(6) NOT NULL,
    status INT NULL,
    latency_ms INT UNSIGNED NOT NULL,
    response_excerpt VARCHAR(500) NULL,
    error VARCHAR(255) NULL,
    KEY webhook_attempts_delivery (delivery_id, attempted_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
