# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := .tools
# debootstrap, systemd-container (systemd-nspawn), dpkg-dev (dpkg-scanpackages) and insserv: the real-init
# instances (devstack/realinit.py) -- a Debian 12 booted under systemd and cloud-init -- and their checks.
# chromium (headless): the release summary's layout at 200 roles (tests/unit/test_release_summary.py).
APT_PACKAGES := goiardi shellcheck packer groovy default-jre-headless debootstrap systemd-container dpkg-dev insserv \
	chromium
# Four workers on two cores: a bake test spends much of its time waiting on polls, subprocesses and
# instances, so a fourth worker fills the cores the other three leave idle (8% faster than three).
# One file per worker (--dist loadfile) keeps each file's shared servers and fixtures together.
# One order, chosen by pytest-randomly's seed, so a CI run can be replayed; docs/development.md says how
# to run other seeds and --dist load.
PYTEST_ARGS ?= -n 4 --dist loadfile -p randomly --randomly-seed=20261202

.PHONY: all deps system-deps venv node-deps realinit-base test checks lint typecheck test-bytecode demo bench \
	clean

all: test

# System packages (Debian): only when one is missing, with one `apt-get update` first.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

$(TOOLS)/node_modules/.bin/npm-groovy-lint:
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) npm-groovy-lint@15

node-deps: $(TOOLS)/node_modules/.bin/npm-groovy-lint

# The real-init instances' Debian 12 bases (debootstrap, then cached in .tools/realinit/): root only.
# The build uses the standard library alone, so it runs beside the venv's pip install.
realinit-base: system-deps
	@if [ "$$(id -u)" = 0 ]; then $(PYTHON) -m devstack.realinit_base; \
	else echo "not root: the real-init bases are not built (tests/e2e/test_realinit_boot.py needs root)"; fi

deps: system-deps venv node-deps realinit-base

lint: venv
	$(VENV)/bin/ruff check bakery_lib tests bench devstack docs

typecheck: venv
	$(VENV)/bin/mypy bakery_lib

# pytest's assertion-rewritten test modules, written once (also where PYTHONDONTWRITEBYTECODE is set:
# pytest then reads them but never writes them), so that no xdist worker rewrites every test module
# itself: 9 CPU-s a worker without them, 4 with. A collection error shows in the pytest run itself.
test-bytecode: system-deps venv
	-@PYTHONDONTWRITEBYTECODE= $(PY) -m pytest --collect-only -q -p no:randomly >/dev/null 2>&1

# What the suite needs, side by side: apt, pip and npm mostly wait on the network, the real-init bases
# are built beside the venv, the checks run once it is there. Each step's output shows whole at its end.
checks: deps lint typecheck test-bytecode

# pytest exit code 5 ("no tests collected") must fail the build, as must any other non-zero code.
test:
	@$(MAKE) --no-print-directory -j4 --output-sync=target checks
	@set +e; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

demo: system-deps venv
	$(PY) -m devstack.demo --catalog examples/bakery.yaml --workspace demo-workspace

bench: deps
	$(PY) -m pip install -q jenkins-job-builder
	$(PY) bench/bench_jobs.py
	$(PY) bench/bench_bake.py
	$(PY) bench/bench_notice.py

clean:
	rm -rf $(VENV) $(TOOLS) demo-workspace build *.egg-info
