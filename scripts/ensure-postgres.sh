#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 and exports DATABASE_URL for the tests.
# Source it (`. scripts/ensure-postgres.sh`) so the export reaches your shell. Installs PostgreSQL
# with apt-get when it is missing, starts it when it is stopped, and sets a password for the
# `postgres` role when the server asks for one.
set -u

pg_log() { printf 'ensure-postgres: %s\n' "$*" >&2; }

if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  pg_log "PostgreSQL is not installed: installing it with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null || { pg_log "apt-get install postgresql failed"; return 1 2>/dev/null || exit 1; }
fi

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }

if ! pg_ready; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$version" ]; then
    pg_log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || pg_ctlcluster "$version" main start >/dev/null 2>&1 || true
  fi
  for _ in $(seq 1 60); do pg_ready && break; sleep 0.5; done
fi
if ! pg_ready; then
  pg_log "PostgreSQL does not answer on 127.0.0.1:5432"
  return 1 2>/dev/null || exit 1
fi

if psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1 </dev/null; then
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
else
  pg_log "the server asks for a password: setting one for role postgres"
  su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  export DATABASE_URL="postgres://postgres:postgres@127.0.0.1:5432/postgres"
fi
pg_log "DATABASE_URL=$DATABASE_URL"
