#!/usr/bin/env bash
# Prepares a fresh machine for Switchboard: the wasm32 target (the core must build for it), the
# local sandbox's tools (bubblewrap, ripgrep) and a PostgreSQL server with DATABASE_URL exported.
# Source it so the export reaches your shell:
#   . scripts/setup.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || echo "setup: could not add the wasm32 target; the wasm check will be skipped" >&2
. "$here/ensure-sandbox-tools.sh"
. "$here/ensure-postgres.sh"
