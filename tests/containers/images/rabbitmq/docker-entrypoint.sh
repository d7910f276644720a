#!/bin/bash
# The official rabbitmq image's contract, on Debian's rabbitmq-server (test-only stand-in):
#   - conf.d/10-defaults.conf as the official image has it (guest may connect from
#     anywhere, AMQP on 5672, management on 15672), with RABBITMQ_DEFAULT_USER /
#     RABBITMQ_DEFAULT_PASS / RABBITMQ_DEFAULT_VHOST when set; files mounted into
#     /etc/rabbitmq/conf.d are read after it, in name order;
#   - node rabbit@<hostname>, data in /var/lib/rabbitmq, logs on the console;
#   - the Erlang cookie made before the server starts, owned by rabbitmq, at
#     $HOME/.erlang.cookie: the CLI tools run through `exec` (as root) use the same one;
#   - the server in the foreground as the rabbitmq user, PID 1 (clean stop on SIGTERM).
set -euo pipefail

cookie="$HOME/.erlang.cookie"
conf_dir=/etc/rabbitmq/conf.d

write_defaults() {
    {
        echo "# Written by the stand-in's entrypoint at each start (the official image's defaults)."
        echo "loopback_users.guest = false"
        echo "listeners.tcp.default = 5672"
        echo "management.tcp.port = 15672"
        echo "default_user = ${RABBITMQ_DEFAULT_USER:-guest}"
        echo "default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}"
        if [ -n "${RABBITMQ_DEFAULT_VHOST:-}" ]; then
            echo "default_vhost = ${RABBITMQ_DEFAULT_VHOST}"
        fi
    } >"$conf_dir/10-defaults.conf.tmp"
    mv "$conf_dir/10-defaults.conf.tmp" "$conf_dir/10-defaults.conf"
}

if [ "${1:0:1}" = '-' ]; then
    set -- rabbitmq-server "$@"
fi

if [ "$1" = 'rabbitmq-server' ]; then
    if [ "$(id -u)" = '0' ]; then
        mkdir -p /var/lib/rabbitmq
        chown rabbitmq:rabbitmq /var/lib/rabbitmq "$conf_dir"
        find /var/lib/rabbitmq \! -user rabbitmq -exec chown rabbitmq:rabbitmq '{}' +
        exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "${BASH_SOURCE[0]}" "$@"
    fi
    if [ -w "$conf_dir" ]; then
        write_defaults
    else
        echo "$conf_dir is not writable: keeping the image's 10-defaults.conf" >&2
    fi
    if [ ! -s "$cookie" ]; then
        (umask 077 && head -c 15 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$cookie")
    fi
    chmod 400 "$cookie"
fi

exec "$@"
