"""MySQL: the pool and transactions, migrations and the shared schema, leases."""
