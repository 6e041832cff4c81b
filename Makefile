# nomyo-router: every target creates or reuses the virtualenv it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= etc/nomyo/config.yaml
PYTEST_ARGS ?=

.PHONY: setup run demo test lint bench bench-tools bench-cache bench-fleet clean browser node-clients

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# The real llama.cpp integration test (tests/test_llama_cpp.py) needs llama-cpp-python, which
# pip builds from source (about 7 minutes on 2 cores; the wheel is cached afterwards). Portable
# build: no -march=native, so the wheel runs on any x86-64. NOMYO_SKIP_LLAMA=1 skips both.
LLAMA_STAMP := $(VENV)/.installed-llama
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q -e '.[test,llama]'
	touch $(LLAMA_STAMP)

run: setup
	$(PY) -m nomyo --config $(CONFIG)

demo: setup
	$(PY) -m tests.fakes.demo

# The dashboard's browser test needs Debian's chromium (no browser download of its own): installed
# here when missing and we may (root); NOMYO_SKIP_BROWSER_TESTS=1 skips that test instead.
browser:
	@command -v chromium >/dev/null || [ "$(NOMYO_SKIP_BROWSER_TESTS)" = 1 ] || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
		echo "chromium is missing: install Debian's chromium, or set NOMYO_SKIP_BROWSER_TESTS=1"

# Clients nobody here wrote (ollama-js, openai-node), pinned in tests/js/package-lock.json, run on
# Debian's Node (nodejs, npm); NOMYO_SKIP_NODE=1 skips those tests.
JS_STAMP := tests/js/node_modules/.package-lock.json
$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error

node-clients:
	@[ "$(NOMYO_SKIP_NODE)" = 1 ] || { command -v npm >/dev/null && $(MAKE) -s $(JS_STAMP); } || \
		echo "node/npm are missing: apt-get install nodejs npm, or set NOMYO_SKIP_NODE=1"

test: setup browser node-clients $(if $(filter 1,$(NOMYO_SKIP_LLAMA)),,$(LLAMA_STAMP))
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check nomyo tests

# make bench drives the router with wrk (Debian's package): installed here when missing and we may (root).
bench-tools:
	@command -v wrk >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk; } || \
		echo "wrk is missing: install Debian's wrk"

bench: setup bench-tools
	$(PY) -m tests.bench
	$(PY) -m tests.bench.cache

# The response cache alone (in-process): the 100k-vector lookup, key cost, miss and hit costs.
bench-cache: setup
	$(PY) -m tests.bench.cache

bench-fleet: setup
	$(PY) -m tests.bench.fleet

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache bench-results tests/artifacts tests/js/node_modules

# ---------------------------------------------------------------------------------------------
# make install [DESTDIR=/staging] [PREFIX=/usr/local] [VENVDIR=/opt/nomyo-router] [INSTALL_PYTHON=/usr/bin/python3]
# The package goes into its own virtualenv; the venv's launcher finds its interpreter relative to
# itself, so a tree staged under DESTDIR runs where it is and after it is moved into place.
# The venv links to INSTALL_PYTHON, so that interpreter must be reachable by the service's
# DynamicUser under ProtectHome=yes: the system Python by default, never one under /root or /home
# (a pyenv, a user's venv). The package is built from a copy of the checkout in a temporary
# directory, so no root-owned build/ or *.egg-info is left behind here.
PREFIX ?= /usr/local
VENVDIR ?= /opt/nomyo-router
INSTALL_PYTHON ?= /usr/bin/python3
UNITDIR ?= /lib/systemd/system
SYSCONFDIR ?= /etc
ROOT_VENV := $(DESTDIR)$(VENVDIR)
# The installed unit and man page name the paths this install really uses.
INSTALL_PATHS := -e 's|/opt/nomyo-router|$(VENVDIR)|g' -e 's|/etc/nomyo|$(SYSCONFDIR)/nomyo|g' \
	-e 's|/usr/local/share|$(PREFIX)/share|g' -e 's|/lib/systemd/system|$(UNITDIR)|g'

.PHONY: install check-install-python
check-install-python:
	@py=$$(command -v "$(INSTALL_PYTHON)" || echo "$(INSTALL_PYTHON)"); real=$$(readlink -m "$$py"); \
	case "$$py:$$real" in /root/*|/home/*|*:/root/*|*:/home/*) \
		echo "make install: INSTALL_PYTHON=$$py ($$real) is under /root or /home, which the service cannot reach" \
			"(DynamicUser=yes, ProtectHome=yes). Use the system Python (the default, INSTALL_PYTHON=/usr/bin/python3)" \
			"or another one installed outside /root and /home." >&2; exit 1;; esac; \
	"$$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "make install: INSTALL_PYTHON=$$py must be a Python 3.11 or newer with the venv module" \
			"(Debian: apt-get install python3 python3-venv)" >&2; exit 1; }

install: check-install-python
	$(INSTALL_PYTHON) -m venv --clear $(ROOT_VENV)
	$(ROOT_VENV)/bin/python -m pip install -q --upgrade pip
	src=$$(mktemp -d) && trap 'rm -rf "$$src"' EXIT && \
		cp -R nomyo share setup.cfg pyproject.toml README.md "$$src"/ && \
		$(ROOT_VENV)/bin/python -m pip install -q --no-cache-dir "$$src"
	install -m 0755 systemd/venv-launcher $(ROOT_VENV)/bin/nomyo-router
	install -d $(DESTDIR)$(PREFIX)/bin
	printf '#!/bin/sh\nexec %s/bin/python -m nomyo "$$@"\n' '$(VENVDIR)' > $(DESTDIR)$(PREFIX)/bin/nomyo-router
	chmod 0755 $(DESTDIR)$(PREFIX)/bin/nomyo-router
	install -d $(DESTDIR)$(SYSCONFDIR)/nomyo
	test -e $(DESTDIR)$(SYSCONFDIR)/nomyo/config.yaml || \
		install -m 0644 etc/nomyo/config.yaml $(DESTDIR)$(SYSCONFDIR)/nomyo/config.yaml
	install -d $(DESTDIR)$(UNITDIR)
	sed $(INSTALL_PATHS) systemd/nomyo-router.service > $(DESTDIR)$(UNITDIR)/nomyo-router.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/nomyo-router.service
	install -d $(DESTDIR)$(PREFIX)/share/man/man8
	sed $(INSTALL_PATHS) share/man/nomyo-router.8 > $(DESTDIR)$(PREFIX)/share/man/man8/nomyo-router.8
	chmod 0644 $(DESTDIR)$(PREFIX)/share/man/man8/nomyo-router.8
	install -d $(DESTDIR)$(PREFIX)/share/doc/nomyo-router
	install -m 0644 README.md share/doc/*.md $(DESTDIR)$(PREFIX)/share/doc/nomyo-router/
