# `make run` and `make test` do all the set-up: .venv, requirements, embedded servers.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.requirements-installed
ARGS ?=

.PHONY: run test venv lint clean-var

run: $(STAMP)
	$(VENV)/bin/python -m exchange.launcher run

test: $(STAMP)
	$(VENV)/bin/python -m exchange.launcher test $(ARGS)

venv: $(STAMP)

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

clean-var:
	rm -rf var
