#!/bin/sh
# The stand-in postgres image's entrypoint (engine.py builds it when no registry answers):
# as the official image's, a first start creates the cluster with POSTGRES_USER as its
# superuser (password POSTGRES_PASSWORD, scram over TCP) and the database POSTGRES_DB
# (default: the user's name); every start then runs the server listening on all
# interfaces, as the postgres user.
# An `ENTRYPOINT` of the image made with `docker import`: PID 1, hence the trap below.
set -eu
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
: "${POSTGRES_PASSWORD:?the stand-in postgres image needs POSTGRES_PASSWORD}"

mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    chown postgres "$pwfile"
    as_postgres initdb --username="$user" --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 --pgdata="$PGDATA" >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$db" != postgres ]; then
        echo "CREATE DATABASE \"$db\" OWNER \"$user\";" \
            | as_postgres postgres --single -D "$PGDATA" postgres >/dev/null
    fi
    echo "stand-in postgres: created the cluster, user $user, database $db"
fi
# As the official image's STOPSIGNAL: a stop is a fast shutdown (SIGINT), not a smart
# one that waits for every client to leave (an imported image has no STOPSIGNAL).
setpriv --reuid=postgres --regid=postgres --init-groups \
    postgres -D "$PGDATA" -c listen_addresses='*' "$@" &
server=$!
trap 'kill -INT "$server"' TERM INT
while kill -0 "$server" 2>/dev/null; do wait "$server" || true; done
