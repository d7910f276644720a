# Sourced (so: not executable) by the MySQL image's entrypoint from
# docker-entrypoint-initdb.d, once, on an empty data volume: the migrator, with its
# password from a compose secret. The services' users and their table grants come after
# the migrations (the tables must exist): compose's "grants" service, apply-grants.sh.
# On a volume made before this script existed, run the same statements by hand
# (docs/operations.md, "Identities and permissions").
database=paylane
migrate_password=$(cat /run/secrets/mysql_migrate_password)

# docker_process_sql: the entrypoint's own function, connected as root. Passwords are
# hex (compose_secrets.py): nothing to escape.
docker_process_sql <<SQL
CREATE USER IF NOT EXISTS 'paylane_migrate'@'%' IDENTIFIED BY '${migrate_password}';
-- The schema, yoyo's bookkeeping tables and the rows a migration moves. CREATE also lets
-- it create the database when it does not exist yet.
GRANT CREATE, ALTER, DROP, INDEX, REFERENCES, SELECT, INSERT, UPDATE, DELETE
  ON \`${database}\`.* TO 'paylane_migrate'@'%';
SQL
