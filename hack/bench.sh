#!/usr/bin/env bash
# `make bench`: every benchmark under bench/, each printing JSON lines and a table.
# Local services and the control plane are started first, as the benchmarks need them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/venv.sh dev
bash hack/services.sh up
eval "$(bash hack/services.sh env)"
benches=("${@:-gateway cache memory operator}")
for name in ${benches[*]}; do
  echo "=== bench/$name.py"
  if [ "$name" = operator ]; then
    bash hack/control-plane.sh up
    eval "$(bash hack/control-plane.sh env)"
  fi
  .venv/bin/python "bench/$name.py"
done
