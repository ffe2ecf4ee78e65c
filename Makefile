# `make run` and `make test` do all the set-up: .venv, requirements, front-end packages,
# embedded servers.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.requirements-installed
NODE_STAMP := node_modules/.lockfile-installed
ARGS ?=

.PHONY: run test venv lint clean-var

run: $(STAMP) $(NODE_STAMP)
	$(VENV)/bin/python -m exchange.launcher run

test: $(STAMP) $(NODE_STAMP)
	$(VENV)/bin/python -m exchange.launcher test $(ARGS)

venv: $(STAMP) $(NODE_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when a requirements file changed since the last install.
$(STAMP): requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# The web UI's npm packages (package-lock.json), served as static files from node_modules;
# reinstalled only when the lockfile changed since the last install.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

clean-var:
	rm -rf var
