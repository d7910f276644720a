-- paylane's database identities and their grants (docs/operations.md, "Identities and
-- permissions"). {database}, {service_user} and {migrate_user} are filled in by
-- deploy/mysql/init-users.sh (compose), by the tests (tests/integration/
-- test_least_privilege.py, which run a service under exactly these grants) or by hand.
-- The users are created first, each with its own password.

-- The services (order, entitlement, notifier; `paylane reconcile` and `replay`): rows
-- only. No CREATE, ALTER, DROP, INDEX or REFERENCES: no service changes the schema
-- (none migrates at start), and a compromised one cannot drop or alter a table.
GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.* TO '{service_user}'@'%';

-- `paylane migrate` (the compose "migrate" service, the Kubernetes Job): the schema,
-- its own bookkeeping tables (yoyo) and the rows a migration moves. CREATE also lets
-- it create the database when it does not exist yet.
GRANT CREATE, ALTER, DROP, INDEX, REFERENCES, SELECT, INSERT, UPDATE, DELETE
  ON `{database}`.* TO '{migrate_user}'@'%';
