#!/bin/sh
# Compose's one-shot "grants" service (mysql image, as the database's administrator),
# after every `paylane migrate`: one database user per service (paylane_order,
# paylane_entitlement, paylane_notifier), each with its password from a compose secret and
# exactly the grants of grants.sql. Whatever a user held before is revoked first, so a
# grant removed from grants.sql is gone after the next `make up`. "paylane", the one user
# all services shared before, is dropped (docs/operations.md, "Identities and permissions").
#
#   apply-grants.sh              the services' users (after the migrations)
#   apply-grants.sh migrator     the migrator (before them), on your own MySQL: the bundled
#                                one makes it on first start (init-users.sh)
#
# Where: MYSQL_HOST (mysql), MYSQL_PORT (3306), PAYLANE_DATABASE (paylane), as
# MYSQL_ADMIN_USER (root) with the password in MYSQL_ADMIN_PASSWORD_FILE
# (/run/secrets/mysql_root_password); deploy/compose.external-mysql.yml sets them.
set -eu
host=${MYSQL_HOST:-mysql}
port=${MYSQL_PORT:-3306}
database=${PAYLANE_DATABASE:-paylane}
admin=${MYSQL_ADMIN_USER:-root}
password_file=${MYSQL_ADMIN_PASSWORD_FILE:-/run/secrets/mysql_root_password}
[ -r "$password_file" ] || { echo "apply-grants: MYSQL_ADMIN_PASSWORD_FILE: cannot read $password_file" >&2; exit 2; }
MYSQL_PWD=$(cat "$password_file")
export MYSQL_PWD
admin_sql() { mysql --host="$host" --port="$port" --user="$admin" --batch; }

if [ "${1:-}" = migrator ]; then
    migrate_password=$(cat /run/secrets/mysql_migrate_password)
    sed -e "s/{database}/${database}/g" -e "s/{password}/${migrate_password}/g" \
        /etc/paylane/migrator.sql | admin_sql
    echo "migrator ready: paylane_migrate on ${host}:${port}/${database}"
    exit 0
fi

{
    for service in order entitlement notifier; do
        # Hex passwords (compose_secrets.py): nothing to escape.
        password=$(cat "/run/secrets/mysql_${service}_password")
        echo "CREATE USER IF NOT EXISTS 'paylane_${service}'@'%' IDENTIFIED BY '${password}';"
        echo "ALTER USER 'paylane_${service}'@'%' IDENTIFIED BY '${password}';"
        echo "REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'paylane_${service}'@'%';"
    done
    # The old shared user existed only on the bundled server; on yours (a host other than
    # the bundled "mysql") an account of that name may be someone else's: left alone.
    if [ "$host" = mysql ]; then
        echo "DROP USER IF EXISTS 'paylane'@'%';"
    fi
    sed -e "s/{database}/${database}/g" -e "s/{order_user}/paylane_order/g" \
        -e "s/{entitlement_user}/paylane_entitlement/g" \
        -e "s/{notifier_user}/paylane_notifier/g" /etc/paylane/grants.sql
} | admin_sql
echo "grants applied on ${host}:${port}/${database}: paylane_order, paylane_entitlement, paylane_notifier"
