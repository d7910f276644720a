# Sourced (so: not executable) by the MySQL image's entrypoint from
# docker-entrypoint-initdb.d, once, on an empty data volume: the services' user and the
# migrator, each with its password from a compose secret and the grants of grants.sql.
# On a volume made before this script existed, run the same statements by hand
# (docs/operations.md, "Identities and permissions").
database=paylane
service_password=$(cat /run/secrets/mysql_password)
migrate_password=$(cat /run/secrets/mysql_migrate_password)

# docker_process_sql: the entrypoint's own function, connected as root. Passwords are
# hex (compose_secrets.py): nothing to escape.
docker_process_sql <<SQL
CREATE USER IF NOT EXISTS 'paylane'@'%' IDENTIFIED BY '${service_password}';
CREATE USER IF NOT EXISTS 'paylane_migrate'@'%' IDENTIFIED BY '${migrate_password}';
$(sed -e "s/{database}/${database}/g" -e "s/{service_user}/paylane/g" \
      -e "s/{migrate_user}/paylane_migrate/g" /etc/paylane/grants.sql)
SQL
