#!/usr/bin/env bash
# Installs the pinned OpenCode (`opencode-ai@1.18.33` from the npm registry) into
# `${SWITCHBOARD_TOOLS:-<repo>/tools}/opencode-1.18.33` and prints the path of its program: the
# platform package's binary (`node_modules/opencode-<os>-<arch>/bin/opencode`), which is what must
# be run (the `.bin/opencode` entry is only a stub until the package's postinstall has run).
# Idempotent: when that binary is there and `--version` prints the pinned version, nothing is
# installed. Progress goes to stderr; stdout is only the path, so that CI can do
#   export SWITCHBOARD_OPENCODE=$(scripts/install-opencode.sh)
# Fails (exit 1, with the reason) when npm is missing or the install does not give a working binary.
set -euo pipefail

version=1.18.33
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${SWITCHBOARD_TOOLS:-$repo/tools}
dir=$tools/opencode-$version

say() { printf 'install-opencode: %s\n' "$*" >&2; }
fail() { say "$*"; exit 1; }

case "$(uname -s)" in
  Linux) os=linux ;;
  Darwin) os=darwin ;;
  *) fail "no OpenCode $version package for $(uname -s)" ;;
esac
case "$(uname -m)" in
  x86_64 | amd64) arch=x64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) fail "no OpenCode $version package for $(uname -m)" ;;
esac
bin=$dir/node_modules/opencode-$os-$arch/bin/opencode

# `opencode --version` writes into HOME and the XDG dirs: give it private ones inside the install.
installed_version() {
  [ -x "$bin" ] || return 1
  local home=$dir/.version-check
  mkdir -p "$home"
  HOME=$home XDG_CONFIG_HOME=$home/config XDG_DATA_HOME=$home/data XDG_CACHE_HOME=$home/cache \
    XDG_STATE_HOME=$home/state OPENCODE_DISABLE_AUTOUPDATE=1 OPENCODE_DISABLE_MODELS_FETCH=1 \
    "$bin" --version 2>/dev/null | tr -d '[:space:]'
}

if [ "$(installed_version || true)" = "$version" ]; then
  say "OpenCode $version is already installed"
  printf '%s\n' "$bin"
  exit 0
fi

command -v npm >/dev/null 2>&1 || fail "npm is not installed: install Node.js and npm (e.g. apt-get install nodejs npm), then run this again"

say "installing opencode-ai@$version into $dir (about 350 MB)"
mkdir -p "$dir"
[ -f "$dir/package.json" ] || printf '{"private": true}\n' >"$dir/package.json"
npm install --prefix "$dir" --no-audit --no-fund --no-progress --loglevel=error \
  "opencode-ai@$version" >&2 || fail "npm install opencode-ai@$version failed"

got=$(installed_version || true)
[ -x "$bin" ] || fail "the install has no $bin (the platform package opencode-$os-$arch is missing)"
[ "$got" = "$version" ] || fail "$bin --version printed '$got', not $version"
say "OpenCode $version installed"
printf '%s\n' "$bin"
