# Sourced (so: not executable) by the MySQL image's entrypoint from
# docker-entrypoint-initdb.d, once, on an empty data volume: the migrator (migrator.sql),
# with its password from a compose secret. The services' users and their table grants
# come after the migrations (the tables must exist): compose's "grants" service,
# apply-grants.sh. On a volume made before this script existed, run the same statements
# by hand (docs/operations.md, "Identities and permissions").
migrate_password=$(cat /run/secrets/mysql_migrate_password)

# docker_process_sql: the entrypoint's own function, connected as root.
sed -e "s/{database}/${MYSQL_DATABASE:-paylane}/g" -e "s/{password}/${migrate_password}/g" \
    /etc/paylane/migrator.sql | docker_process_sql
