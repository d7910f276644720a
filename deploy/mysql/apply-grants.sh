#!/bin/sh
# Compose's one-shot "grants" service (mysql image, as root), after every `paylane
# migrate`: one database user per service (paylane_order, paylane_entitlement,
# paylane_notifier), each with its password from a compose secret and exactly the grants
# of grants.sql. Whatever a user held before is revoked first, so a grant removed from
# grants.sql is gone after the next `make up`. "paylane", the one user all services
# shared before, is dropped (docs/operations.md, "Identities and permissions").
set -eu
database=paylane
MYSQL_PWD=$(cat /run/secrets/mysql_root_password)
export MYSQL_PWD

{
    for service in order entitlement notifier; do
        # Hex passwords (compose_secrets.py): nothing to escape.
        password=$(cat "/run/secrets/mysql_${service}_password")
        echo "CREATE USER IF NOT EXISTS 'paylane_${service}'@'%' IDENTIFIED BY '${password}';"
        echo "ALTER USER 'paylane_${service}'@'%' IDENTIFIED BY '${password}';"
        echo "REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'paylane_${service}'@'%';"
    done
    echo "DROP USER IF EXISTS 'paylane'@'%';"
    sed -e "s/{database}/${database}/g" -e "s/{order_user}/paylane_order/g" \
        -e "s/{entitlement_user}/paylane_entitlement/g" \
        -e "s/{notifier_user}/paylane_notifier/g" /etc/paylane/grants.sql
} | mysql --host=mysql --user=root --batch
echo "grants applied: paylane_order, paylane_entitlement, paylane_notifier"
