#!/usr/bin/env bash
# The MCP reference server "everything" (npm @modelcontextprotocol/server-everything, built on the
# TypeScript SDK), for the interop tests of the runtime's MCP client and server (tests/integration/
# test_mcp_interop.py). Installed once under ~/.cache/strata with npm (node >= 18); prints the path
# of the install, whose node_modules also hold the TypeScript SDK's client.
# Idempotent: once installed, a run needs no network and installs nothing.
set -euo pipefail
VERSION="2026.8.31"
CACHE="${STRATA_CACHE:-$HOME/.cache/strata}"
DIR="$CACHE/npm/server-everything-$VERSION"
BIN="$DIR/node_modules/.bin/mcp-server-everything"
if [ ! -x "$BIN" ]; then
  command -v npm >/dev/null || { echo "hack/mcp-everything.sh: npm (node >= 18) is needed" >&2; exit 1; }
  mkdir -p "$CACHE/npm"
  exec 9>"$CACHE/npm/.lock"
  flock 9  # one install at a time; the others find it done
  if [ ! -x "$BIN" ]; then
    tmp="$(mktemp -d "$CACHE/npm/.install.XXXXXX")"
    npm install --prefix "$tmp" --no-audit --no-fund --no-save --prefer-offline --loglevel=error \
      "@modelcontextprotocol/server-everything@$VERSION" >&2
    rm -rf "$DIR"
    mv "$tmp" "$DIR"  # complete or absent: a half install is never used
  fi
fi
echo "$DIR"
