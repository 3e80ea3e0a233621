#!/usr/bin/env bash
# `make test`: venv, local services, the local control plane, lint, then the whole suite.
# Idempotent and cached (~/.cache/strata), so a second run only pays for the tests.
#
# Clean-up: a run that fails (set-up, lint or tests, or is interrupted) stops the services and
# the control plane it started itself, so it leaves the machine as it found it; what was
# already running before it is left alone. A passing run leaves them up for the next run,
# except in CI (CI=true), which leaves nothing running behind it.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
stamp() { printf '[make test] %-28s %4ss\n' "$1" "$((SECONDS - started))"; }

# "ours" = not fully up before this run (hack/*.sh status exits non-zero).
ours=()
bash hack/services.sh status >/dev/null 2>&1 || ours+=(services)
bash hack/control-plane.sh status >/dev/null 2>&1 || ours+=(control-plane)
# The kind cluster (real pods, tests/kind): STRATA_KIND_E2E=0 leaves it out (its tests then skip).
kind_e2e="${STRATA_KIND_E2E:-1}"
if [ "$kind_e2e" = 1 ]; then bash hack/kind-e2e.sh status >/dev/null 2>&1 || ours+=(kind-e2e); fi

# shellcheck disable=SC2329  # the EXIT trap
stop_ours() {
  local rc=$? name
  if [ "$rc" -ne 0 ] || [ "${CI:-}" = "true" ]; then
    for name in "${ours[@]}"; do
      echo "[make test] stopping the $name this run started" >&2
      bash "hack/$name.sh" down || true
    done
  fi
  return "$rc"
}
trap stop_ours EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash hack/venv.sh dev;           stamp "venv"
bash hack/services.sh up;        stamp "redis + cluster + postgres"
bash hack/control-plane.sh up;   stamp "kubernetes control plane"
if [ "$kind_e2e" = 1 ]; then
  # A cluster that does not come up fails the tests in tests/kind (STRATA_KIND_REQUIRED), not the rest.
  bash hack/kind-e2e.sh up || echo "[make test] hack/kind-e2e.sh up failed: tests/kind will fail" >&2
  stamp "kind cluster + images + operator"
  export STRATA_KIND_REQUIRED=1
fi
eval "$(bash hack/services.sh env)"
eval "$(bash hack/control-plane.sh env)"

bash hack/lint.sh
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
