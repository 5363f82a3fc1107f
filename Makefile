# The two commands of the README. Each creates .venv and installs what it needs by itself.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test venv chromium clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/pixelpipe up --demo

test: $(STAMP) chromium
	$(VENV)/bin/pytest -n 2

# The browser tests drive Debian's chromium (never a browser download). Installed here when it is
# absent and apt-get can run as root; otherwise those tests are skipped and say why.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's chromium for the browser tests (apt-get)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || echo "apt-get could not install chromium: the browser tests will be skipped"; \
	  else \
	    echo "chromium not found and cannot be installed here (needs apt-get as root): the browser tests will be skipped"; \
	  fi; }

clean:
	rm -rf $(VENV) .pixelpipe
