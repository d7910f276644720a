#!/bin/bash
# The official mysql image's entrypoint contract, on MariaDB (test-only stand-in):
#   - MYSQL_ROOT_PASSWORD[_FILE] (or MYSQL_ALLOW_EMPTY_PASSWORD / MYSQL_RANDOM_ROOT_PASSWORD),
#     MYSQL_ROOT_HOST (default %), MYSQL_DATABASE, MYSQL_USER / MYSQL_PASSWORD (each also _FILE);
#   - on an empty data dir only: initialise it with a temporary server on the socket only
#     (a TCP healthcheck fails until the real server listens), then run
#     /docker-entrypoint-initdb.d/*.sh (sourced unless executable: they get docker_process_sql),
#     *.sql, *.sql.gz, *.sql.xz, *.sql.zst; "ready for connections" is logged by both servers;
#   - the server runs as the mysql user, in the foreground, as PID 1 (clean stop on SIGTERM).
set -eo pipefail
shopt -s nullglob

mysql_log() {
    local type="$1"; shift
    printf '%s [%s] [Entrypoint]: %s\n' "$(date --rfc-3339=seconds)" "$type" "$*"
}
mysql_note() { mysql_log Note "$@"; }
mysql_warn() { mysql_log Warn "$@" >&2; }
mysql_error() {
    mysql_log ERROR "$@" >&2
    exit 1
}

# file_env VAR [DEFAULT]: VAR from itself or from the file named by VAR_FILE (not both).
file_env() {
    local var="$1" fileVar="${1}_FILE" def="${2:-}"
    if [ "${!var:-}" ] && [ "${!fileVar:-}" ]; then
        mysql_error "both $var and $fileVar are set (but are exclusive)"
    fi
    local val="$def"
    if [ "${!var:-}" ]; then
        val="${!var}"
    elif [ "${!fileVar:-}" ]; then
        val="$(<"${!fileVar}")"
    fi
    export "$var"="$val"
    unset "$fileVar"
}

_is_sourced() {
    [ "${#FUNCNAME[@]}" -ge 2 ] && [ "${FUNCNAME[0]}" = '_is_sourced' ] \
        && [ "${FUNCNAME[1]}" = 'source' ]
}

mysql_get_config() {
    local conf="$1"; shift
    "$@" --verbose --help 2>/dev/null | awk -v conf="$conf" '$1 == conf && /^[^ \t]/ { sub(/^[^ \t]+[ \t]+/, ""); print; exit }'
}

docker_setup_env() {
    DATADIR="$(mysql_get_config 'datadir' "$@")"
    DATADIR="${DATADIR%/}"
    SOCKET="$(mysql_get_config 'socket' "$@")"
    file_env 'MYSQL_ROOT_HOST' '%'
    file_env 'MYSQL_DATABASE'
    file_env 'MYSQL_USER'
    file_env 'MYSQL_PASSWORD'
    file_env 'MYSQL_ROOT_PASSWORD'
    DATABASE_ALREADY_EXISTS=
    if [ -d "$DATADIR/mysql" ]; then
        DATABASE_ALREADY_EXISTS='true'
    fi
}

docker_verify_minimum_env() {
    if [ -z "$MYSQL_ROOT_PASSWORD" ] && [ -z "${MYSQL_ALLOW_EMPTY_PASSWORD:-}" ] \
        && [ -z "${MYSQL_RANDOM_ROOT_PASSWORD:-}" ]; then
        mysql_error $'Database is uninitialized and password option is not specified\n\tYou need to specify one of the following as an environment variable:\n\t- MYSQL_ROOT_PASSWORD\n\t- MYSQL_ALLOW_EMPTY_PASSWORD\n\t- MYSQL_RANDOM_ROOT_PASSWORD'
    fi
    if [ "$MYSQL_USER" = 'root' ]; then
        mysql_error 'MYSQL_USER="root", MYSQL_USER and MYSQL_PASSWORD are for configuring a regular user and cannot be used for the root user'
    fi
    if [ -n "$MYSQL_USER" ] && [ -z "$MYSQL_PASSWORD" ]; then
        mysql_warn 'MYSQL_USER specified, but missing MYSQL_PASSWORD; MYSQL_USER will not be created'
    fi
}

docker_create_db_directories() {
    mkdir -p "$DATADIR" "$(dirname "$SOCKET")"
    if [ "$(id -u)" = '0' ]; then
        chown mysql:mysql "$DATADIR" "$(dirname "$SOCKET")"
    fi
}

docker_init_database_dir() {
    mysql_note 'Initializing database files'
    mariadb-install-db --datadir="$DATADIR" --auth-root-authentication-method=normal \
        --skip-test-db --skip-name-resolve --default-time-zone=SYSTEM >/dev/null
    mysql_note 'Database files initialized'
}

docker_temp_server_start() {
    "$@" --skip-networking --default-time-zone=SYSTEM --socket="$SOCKET" &
    MYSQL_TEMP_PID=$!
    mysql_note "Waiting for server startup"
    local i
    for i in {30..0}; do
        if docker_process_sql --dont-use-mysql-root-password --database=mysql \
            <<<'SELECT 1' &>/dev/null; then
            break
        fi
        if ! kill -0 "$MYSQL_TEMP_PID" 2>/dev/null; then
            mysql_error "Unable to start server."
        fi
        sleep 1
    done
    if [ "$i" = 0 ]; then
        mysql_error "Unable to start server."
    fi
}

docker_temp_server_stop() {
    mysqladmin --defaults-extra-file=<(_mysql_passfile) shutdown -uroot --socket="$SOCKET"
    wait "$MYSQL_TEMP_PID" || true
}

# _mysql_passfile [--dont-use-mysql-root-password]: a [client] section with root's password.
_mysql_passfile() {
    if [ '--dont-use-mysql-root-password' != "${1:-}" ] && [ -n "$MYSQL_ROOT_PASSWORD" ]; then
        printf '[client]\npassword="%s"\n' "$MYSQL_ROOT_PASSWORD"
    fi
}

# docker_process_sql [--dont-use-mysql-root-password] [mysql-client-args...] < SQL:
# as root over the socket, in MYSQL_DATABASE when set (args may name another).
docker_process_sql() {
    local passfileArgs=()
    if [ '--dont-use-mysql-root-password' = "${1:-}" ]; then
        passfileArgs+=("$1")
        shift
    fi
    if [ -n "$MYSQL_DATABASE" ]; then
        set -- --database="$MYSQL_DATABASE" "$@"
    fi
    mysql --defaults-extra-file=<(_mysql_passfile "${passfileArgs[@]}") --protocol=socket \
        -uroot -hlocalhost --socket="$SOCKET" --comments "$@"
}

docker_sql_escape_string_literal() {
    local newline=$'\n'
    local escaped=${1//\\/\\\\}
    escaped="${escaped//$newline/\\n}"
    echo "${escaped//\'/\\\'}"
}

docker_setup_db() {
    if [ -z "${MYSQL_INITDB_SKIP_TZINFO:-}" ]; then
        # Zone names for CONVERT_TZ(), as the official image loads them.
        mariadb-tzinfo-to-sql --skip-write-binlog /usr/share/zoneinfo 2>/dev/null \
            | docker_process_sql --dont-use-mysql-root-password --database=mysql
    fi
    if [ -n "${MYSQL_RANDOM_ROOT_PASSWORD:-}" ]; then
        MYSQL_ROOT_PASSWORD="$(head -c 24 /dev/urandom | base64)"
        export MYSQL_ROOT_PASSWORD
        mysql_note "GENERATED ROOT PASSWORD: $MYSQL_ROOT_PASSWORD"
    fi
    local password host rootCreate=
    password="$(docker_sql_escape_string_literal "$MYSQL_ROOT_PASSWORD")"
    host="$(docker_sql_escape_string_literal "$MYSQL_ROOT_HOST")"
    if [ -n "$MYSQL_ROOT_HOST" ] && [ "$MYSQL_ROOT_HOST" != 'localhost' ]; then
        rootCreate="CREATE USER 'root'@'${host}' IDENTIFIED BY '${password}';
            GRANT ALL ON *.* TO 'root'@'${host}' WITH GRANT OPTION;
            GRANT PROXY ON ''@'%' TO 'root'@'${host}' WITH GRANT OPTION;"
    fi
    # mariadb-install-db also made root@127.0.0.1, root@::1 and root@<hostname>: the
    # official image has root@localhost and root@MYSQL_ROOT_HOST only.
    docker_process_sql --dont-use-mysql-root-password --database=mysql <<-EOSQL
		SET @@SESSION.SQL_LOG_BIN=0;
		DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1';
		EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@\'', @@hostname, '\'');
		ALTER USER 'root'@'localhost' IDENTIFIED BY '${password}';
		${rootCreate}
		DROP DATABASE IF EXISTS test;
	EOSQL
    if [ -n "$MYSQL_DATABASE" ]; then
        mysql_note "Creating database ${MYSQL_DATABASE}"
        docker_process_sql --database=mysql \
            <<<"CREATE DATABASE IF NOT EXISTS \`$MYSQL_DATABASE\`;"
    fi
    if [ -n "$MYSQL_USER" ] && [ -n "$MYSQL_PASSWORD" ]; then
        mysql_note "Creating user ${MYSQL_USER}"
        local userPassword
        userPassword="$(docker_sql_escape_string_literal "$MYSQL_PASSWORD")"
        docker_process_sql --database=mysql \
            <<<"CREATE USER '$MYSQL_USER'@'%' IDENTIFIED BY '$userPassword';"
        if [ -n "$MYSQL_DATABASE" ]; then
            mysql_note "Giving user ${MYSQL_USER} access to schema ${MYSQL_DATABASE}"
            docker_process_sql --database=mysql \
                <<<"GRANT ALL ON \`${MYSQL_DATABASE//_/\\_}\`.* TO '$MYSQL_USER'@'%';"
        fi
    fi
}

# docker_process_init_files FILE...: as the official image does.
docker_process_init_files() {
    echo
    local f
    for f; do
        case "$f" in
            *.sh)
                if [ -x "$f" ]; then
                    mysql_note "$0: running $f"
                    "$f"
                else
                    mysql_note "$0: sourcing $f"
                    # shellcheck disable=SC1090
                    . "$f"
                fi
                ;;
            *.sql) mysql_note "$0: running $f"; docker_process_sql <"$f"; echo ;;
            *.sql.bz2) mysql_note "$0: running $f"; bunzip2 -c "$f" | docker_process_sql; echo ;;
            *.sql.gz) mysql_note "$0: running $f"; gunzip -c "$f" | docker_process_sql; echo ;;
            *.sql.xz) mysql_note "$0: running $f"; xzcat "$f" | docker_process_sql; echo ;;
            *.sql.zst) mysql_note "$0: running $f"; zstd -dc "$f" | docker_process_sql; echo ;;
            *) mysql_warn "$0: ignoring $f" ;;
        esac
        echo
    done
}

_main() {
    if [ "${1:0:1}" = '-' ]; then
        set -- mariadbd "$@"
    fi
    case "$1" in
        mysqld | mariadbd) ;;
        *) exec "$@" ;;
    esac
    mysql_note "Entrypoint script for the MySQL stand-in (MariaDB) started."
    docker_setup_env "$@"
    docker_create_db_directories
    if [ "$(id -u)" = '0' ]; then
        mysql_note "Switching to dedicated user 'mysql'"
        exec setpriv --reuid=mysql --regid=mysql --init-groups "${BASH_SOURCE[0]}" "$@"
    fi
    if [ -z "$DATABASE_ALREADY_EXISTS" ]; then
        docker_verify_minimum_env
        # Fail early on an unreadable initdb.d.
        ls /docker-entrypoint-initdb.d/ >/dev/null
        docker_init_database_dir "$@"
        mysql_note "Starting temporary server"
        docker_temp_server_start "$@"
        mysql_note "Temporary server started."
        docker_setup_db
        docker_process_init_files /docker-entrypoint-initdb.d/*
        mysql_note "Stopping temporary server"
        docker_temp_server_stop
        mysql_note "Temporary server stopped"
        echo
        mysql_note "MySQL init process done. Ready for start up."
        echo
    else
        mysql_note "Data directory already initialized: skipping initialisation"
    fi
    exec "$@"
}

if ! _is_sourced; then
    _main "$@"
fi
