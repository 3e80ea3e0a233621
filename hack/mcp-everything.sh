#!/usr/bin/env bash
# The MCP reference server "everything" (npm @modelcontextprotocol/server-everything, built on the
# TypeScript SDK), for the interop tests of the runtime's MCP client and server (tests/integration/
# test_mcp_interop.py). Installed once under ~/.cache/strata with `npm ci` from the lockfile in
# hack/npm/server-everything (node >= 18); prints the path of the install, whose node_modules also
# hold the TypeScript SDK's client.
# Idempotent: once installed, a run needs no network and installs nothing.
set -euo pipefail
LOCKED="$(cd "$(dirname "$0")" && pwd)/npm/server-everything"  # package.json + package-lock.json
CACHE="${STRATA_CACHE:-$HOME/.cache/strata}"
STAMP="$(cat "$LOCKED/package.json" "$LOCKED/package-lock.json" | sha256sum | cut -c1-12)"
DIR="$CACHE/npm/server-everything-$STAMP"  # a changed lockfile is a new install
BIN="$DIR/node_modules/.bin/mcp-server-everything"
if [ ! -x "$BIN" ]; then
  command -v npm >/dev/null || { echo "hack/mcp-everything.sh: npm (node >= 18) is needed" >&2; exit 1; }
  mkdir -p "$CACHE/npm"
  exec 9>"$CACHE/npm/.lock"
  flock 9  # one install at a time; the others find it done
  if [ ! -x "$BIN" ]; then
    tmp="$(mktemp -d "$CACHE/npm/.install.XXXXXX")"
    cp "$LOCKED/package.json" "$LOCKED/package-lock.json" "$tmp/"
    # exactly the locked tree (versions and integrity hashes), from the registry or npm's own cache
    (cd "$tmp" && npm ci --no-audit --no-fund --no-update-notifier --prefer-offline --loglevel=error >&2)
    rm -rf "$DIR"
    mv "$tmp" "$DIR"  # complete or absent: a half install is never used
  fi
fi
echo "$DIR"
