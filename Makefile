# Strata: the two commands are `make run` and `make test`; see README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
RUN_CONFIG ?= manifests/samples/runtime-local.yaml
RUN_PORT ?= 8080

.PHONY: help venv run test test-unit e2e lint crds bench services control-plane down clean

help:
	@echo "make run    - set up and run the runtime on embedded defaults with the sample agent"
	@echo "make test   - set up venv, Redis, Postgres, the local control plane; run lint + all tests"
	@echo "make e2e    - a real kind cluster (hack/kind-e2e.sh up: images, operator via Helm) + tests/kind"
	@echo "make lint   - ruff, mypy, import-linter, shellcheck"
	@echo "make crds   - regenerate crds/ (and docs/crd-reference.md) from the pydantic models"
	@echo "make bench  - run the benchmarks in bench/ (BENCH_ARGS=--smoke: a quick pass of each)"
	@echo "make down   - stop local services and the control plane"

venv:
	@bash hack/venv.sh dev

run: venv
	@bash hack/run.sh "$(RUN_CONFIG)" "$(RUN_PORT)"

test: venv
	@bash hack/test.sh

test-unit: venv
	@$(VENV)/bin/pytest -m unit -q

e2e: venv
	@bash hack/kind-e2e.sh up
	@STRATA_KIND_REQUIRED=1 $(VENV)/bin/pytest -q -p no:cacheprovider -m kind tests/kind

lint: venv
	@bash hack/lint.sh

crds: venv
	@$(PY) hack/gen_crds.py
	@$(PY) hack/gen_crd_docs.py

bench: venv
	@bash hack/bench.sh

services:
	@bash hack/services.sh up

control-plane:
	@bash hack/control-plane.sh up

down:
	-@bash hack/control-plane.sh down
	-@bash hack/services.sh down

clean: down
	rm -rf $(VENV) .cache .strata
