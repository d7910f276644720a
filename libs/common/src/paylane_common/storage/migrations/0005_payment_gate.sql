-- depends: 0004_refund_remedies
-- The payment gate (paylane_order.gate): the catalog's prices with the time each was in
-- force, so that a payment is compared with what its package cost when the order was
-- made (the cloud function caches prices for five minutes). The order service records its
-- catalog at start; a price that changes closes the previous one's row.
CREATE TABLE IF NOT EXISTS catalog_prices (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    package_type VARCHAR(32) NOT NULL,
    price_fen INT NOT NULL,
    valid_from DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    valid_until DATETIME(6) NULL,
    KEY ix_catalog_prices_package (package_type, valid_until)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- effects_since is set by `paylane cutover` only: until then the orders another writer
-- settled stay the old backend's to grant. A value the first `paylane migrate` wrote (the
-- same moment as installed_at) was never a cutover: removed, unless paylane has already
-- granted orders on its strength (a `paid_elsewhere` log row): that deployment relies on
-- it, and keeps it.
DELETE m FROM paylane_meta m
JOIN paylane_meta i ON i.name = 'installed_at' AND i.value = m.value
WHERE m.name = 'effects_since'
  AND NOT EXISTS (SELECT 1 FROM payment_logs WHERE type = 'paid_elsewhere');
