#!/usr/bin/env bash
# Makes sure the tools local sandboxes use are installed: bubblewrap (`bwrap`, the isolation of
# the local sandbox provider) and ripgrep (`rg`, which OpenCode's grep and glob tools run; without
# it OpenCode tries to download it). Installs what is missing with apt-get. Source it or run it.
set -u

tools_log() { printf 'ensure-sandbox-tools: %s\n' "$*" >&2; }

missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v rg >/dev/null 2>&1 || missing+=(ripgrep)
if [ "${#missing[@]}" -gt 0 ]; then
  tools_log "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo_cmd=(sudo)
  if ! "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
    "${sudo_cmd[@]}" apt-get update -qq >/dev/null 2>&1
    "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
      || tools_log "could not install ${missing[*]}: local sandboxes will say they are NOT isolated"
  fi
fi
if command -v bwrap >/dev/null 2>&1; then
  if bwrap --ro-bind / / --dev /dev --proc /proc --unshare-pid true >/dev/null 2>&1; then
    tools_log "bubblewrap works: local sandboxes are isolated"
  else
    tools_log "bubblewrap is installed but cannot start a sandbox here: local sandboxes are NOT isolated"
  fi
fi
