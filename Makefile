# lvs-ha: the two commands of the README, and a few more for developers.
# Everything runs from the project virtualenv (.venv, made by `make deps` on Debian's /usr/bin/python3), through the
# installed `lvs-ha` console script, as an operator's install runs it.
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
PYTEST_ARGS ?=

.PHONY: deps test unit host kernel demo lint bench deb

deps:
	@VENV=$(VENV) bash deploy/install-deps.sh

## make test: everything: lint, unit, network-namespace integration, and real-IPVS kernel tests in the VM
test: deps lint kernel host

host:
	$(PY) -m pytest tests --ignore=tests/kernel $(PYTEST_ARGS)

unit: deps
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

kernel:
	@bash tests/kernel/run-in-vm $(PY) $(PYTEST_ARGS)

## make demo: the failover lab in network namespaces
demo: deps
	@PY=$(PY) bash deploy/demo/run

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

## make bench: every benchmark and its report, with plots (matplotlib: the optional extra "bench")
bench: deps
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run

## make deb: dist/lvs-ha_VERSION_ARCH.deb (a virtualenv in /usr/lib/lvs-ha, units, man pages; deploy/debian/build)
deb:
	@PY=$(PY) bash deploy/debian/build
