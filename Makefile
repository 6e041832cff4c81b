# nomyo-router: every target creates or reuses the virtualenv it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= etc/nomyo/config.yaml
PYTEST_ARGS ?=

.PHONY: setup run demo test lint bench bench-cache bench-fleet clean browser

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

test: setup browser $(if $(filter 1,$(NOMYO_SKIP_LLAMA)),,$(LLAMA_STAMP))
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check nomyo tests

bench: setup
	$(PY) -m tests.bench
	$(PY) -m tests.bench.cache

# The response cache alone (in-process): the 100k-vector lookup, key cost, miss and hit costs.
bench-cache: setup
	$(PY) -m tests.bench.cache

bench-fleet: setup
	$(PY) -m tests.bench.fleet

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache bench-results tests/artifacts

# ---------------------------------------------------------------------------------------------
# make install [DESTDIR=/staging] [PREFIX=/usr/local] [VENVDIR=/opt/nomyo-router] [INSTALL_PYTHON=python3]
# The package goes into its own virtualenv; the venv's launcher finds its interpreter relative to
# itself, so a tree staged under DESTDIR runs where it is and after it is moved into place.
PREFIX ?= /usr/local
VENVDIR ?= /opt/nomyo-router
INSTALL_PYTHON ?= $(PYTHON)
UNITDIR ?= /lib/systemd/system
SYSCONFDIR ?= /etc
ROOT_VENV := $(DESTDIR)$(VENVDIR)

.PHONY: install
install:
	$(INSTALL_PYTHON) -m venv --clear $(ROOT_VENV)
	$(ROOT_VENV)/bin/python -m pip install -q --upgrade pip
	$(ROOT_VENV)/bin/python -m pip install -q --no-cache-dir .
	install -m 0755 systemd/venv-launcher $(ROOT_VENV)/bin/nomyo-router
	install -d $(DESTDIR)$(PREFIX)/bin
	printf '#!/bin/sh\nexec %s/bin/python -m nomyo "$$@"\n' '$(VENVDIR)' > $(DESTDIR)$(PREFIX)/bin/nomyo-router
	chmod 0755 $(DESTDIR)$(PREFIX)/bin/nomyo-router
	install -d $(DESTDIR)$(SYSCONFDIR)/nomyo
	test -e $(DESTDIR)$(SYSCONFDIR)/nomyo/config.yaml || \
		install -m 0644 etc/nomyo/config.yaml $(DESTDIR)$(SYSCONFDIR)/nomyo/config.yaml
	install -d $(DESTDIR)$(UNITDIR)
	sed -e 's|/opt/nomyo-router|$(VENVDIR)|g' -e 's|/etc/nomyo|$(SYSCONFDIR)/nomyo|g' \
		-e 's|/usr/local/share|$(PREFIX)/share|g' \
		systemd/nomyo-router.service > $(DESTDIR)$(UNITDIR)/nomyo-router.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/nomyo-router.service
	install -D -m 0644 share/man/nomyo-router.8 $(DESTDIR)$(PREFIX)/share/man/man8/nomyo-router.8
	install -d $(DESTDIR)$(PREFIX)/share/doc/nomyo-router
	install -m 0644 README.md share/doc/*.md $(DESTDIR)$(PREFIX)/share/doc/nomyo-router/
