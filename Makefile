VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint bench demo schema clean chromium

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP) chromium
	$(PY) -m pytest -q -p no:cacheprovider

# Headless Chromium for the report's browser test (Debian packages; a no-op when present).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

lint: $(STAMP)
	$(VENV)/bin/ruff check modelstore workers producer tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench

demo: $(STAMP)
	$(VENV)/bin/predq demo

# Regenerate sql/schema.sql from modelstore's table metadata (a test fails when they drift).
schema: $(STAMP)
	$(PY) -m modelstore.schema > sql/schema.sql

clean:
	rm -rf $(VENV) build *.egg-info
