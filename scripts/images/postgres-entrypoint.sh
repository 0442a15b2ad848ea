#!/bin/sh
# /usr/local/bin/docker-entrypoint.sh in taskctl/postgres: a subset of the official
# postgres image's contract. On first start (no "$PGDATA/PG_VERSION") it runs initdb with
# the superuser $POSTGRES_USER (default postgres) and the password from the first line of
# $POSTGRES_PASSWORD_FILE (or $POSTGRES_PASSWORD), scram-sha-256 for local and host logins,
# listen_addresses='*', a "host all all all scram-sha-256" pg_hba line, and creates the
# database $POSTGRES_DB (default $POSTGRES_USER) owned by $POSTGRES_USER through a temporary
# server listening on the unix socket only. Then it execs "$@".
# Must run as the postgres user (uid 999); the socket directory /var/run/postgresql must be
# writable (a tmpfs when the root file system is read-only).
set -eu

log() { printf 'docker-entrypoint: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
export PGDATA

# "docker run IMAGE -c foo=bar" means "postgres -c foo=bar", as in the official image.
case ${1:-} in
  '' | -*) set -- postgres "$@" ;;
esac

tmp_pwfile=
temp_server_up=
cleanup() {
  if [ -n "$temp_server_up" ]; then
    pg_ctl -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  if [ -n "$tmp_pwfile" ]; then
    rm -f "$tmp_pwfile"
  fi
}

init_cluster() {
  [ "$(id -u)" != 0 ] || die "refusing to initialise as root; run the container with --user 999:999"
  pwfile=${POSTGRES_PASSWORD_FILE:-}
  if [ -z "$pwfile" ]; then
    [ -n "${POSTGRES_PASSWORD:-}" ] ||
      die "$PGDATA is not initialised and neither POSTGRES_PASSWORD_FILE nor POSTGRES_PASSWORD is set"
    tmp_pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$tmp_pwfile"
    pwfile=$tmp_pwfile
  fi
  [ -r "$pwfile" ] || die "cannot read the password file $pwfile"
  password=
  IFS= read -r password <"$pwfile" || [ -n "$password" ] || die "the password file $pwfile is empty"
  [ -n "$password" ] || die "the first line of the password file $pwfile is empty"

  log "initialising $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --auth-host=scram-sha-256 --auth-local=scram-sha-256 >&2
  printf "\n# added by docker-entrypoint.sh\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
  printf '\n# added by docker-entrypoint.sh\nhost all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"

  if [ "$POSTGRES_DB" != postgres ]; then
    temp_server_up=1
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w -t 60 start >&2
    PGPASSWORD=$password psql -X -q -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" \
      --dbname=postgres -v db="$POSTGRES_DB" -v owner="$POSTGRES_USER" >&2 <<'EOSQL'
CREATE DATABASE :"db" OWNER :"owner";
EOSQL
    pg_ctl -D "$PGDATA" -m fast -w -t 60 stop >&2
    temp_server_up=
  fi
  cleanup
  tmp_pwfile=
  log "initialisation done"
}

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  init_cluster
  trap - EXIT INT TERM
fi

exec "$@"
