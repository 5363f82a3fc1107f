# The two commands of the README. Each creates .venv and installs what it needs by itself.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/pixelpipe up --demo

test: $(STAMP)
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) .pixelpipe
