# lvs-ha: the two commands of the README, and a few more for developers.
PY ?= python3
# Inside the User-Mode-Linux VM every exec is slow and pyenv shims cost seconds: use the real interpreter.
REALPY := $(shell $(PY) -c 'import sys; print(sys.executable)')
PYTEST_ARGS ?=

.PHONY: deps test unit host kernel demo lint bench

deps:
	@bash deploy/install-deps.sh

## make test: everything: unit, network-namespace integration, and real-IPVS kernel tests in the VM
test: deps kernel host

host:
	$(PY) -m pytest tests --ignore=tests/kernel $(PYTEST_ARGS)

unit: deps
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

kernel:
	@bash tests/kernel/run-in-vm $(REALPY) $(PYTEST_ARGS)

## make demo: the failover lab in network namespaces
demo: deps
	@bash deploy/demo/run

lint:
	ruff check .
	ruff format --check . || true
	mypy

bench: deps
	@bash bench/run
