-- The migrator, "paylane_migrate": the only identity with DDL. {database} and {password}
-- are filled in by init-users.sh (the bundled MySQL's first start) or by apply-grants.sh
-- migrator (your own MySQL, deploy/compose.external-mysql.yml). Hex passwords
-- (compose_secrets.py): nothing to escape.
CREATE USER IF NOT EXISTS 'paylane_migrate'@'%' IDENTIFIED BY '{password}';
ALTER USER 'paylane_migrate'@'%' IDENTIFIED BY '{password}';
-- The schema, yoyo's bookkeeping tables and the rows a migration moves. CREATE also lets
-- it create the database when it does not exist yet.
GRANT CREATE, ALTER, DROP, INDEX, REFERENCES, SELECT, INSERT, UPDATE, DELETE
  ON `{database}`.* TO 'paylane_migrate'@'%';
