#!/usr/bin/env bash
# `make test`: venv, local services, the local control plane, lint, then the whole suite.
# Idempotent and cached (~/.cache/strata), so a second run only pays for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
stamp() { printf '[make test] %-28s %4ss\n' "$1" "$((SECONDS - started))"; }

bash hack/venv.sh dev;           stamp "venv"
bash hack/services.sh up;        stamp "redis + cluster + postgres"
bash hack/control-plane.sh up;   stamp "kubernetes control plane"
eval "$(bash hack/services.sh env)"
eval "$(bash hack/control-plane.sh env)"

if [ "${CI:-}" = "true" ]; then
  # CI leaves nothing running behind it.
  trap 'bash hack/control-plane.sh down || true; bash hack/services.sh down || true' EXIT
fi

.venv/bin/ruff check runtime operator tests bench hack
.venv/bin/mypy
.venv/bin/lint-imports
stamp "lint"

set +e
.venv/bin/pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
stamp "tests"
if [ "$rc" -eq 5 ]; then
  echo "[make test] pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"
