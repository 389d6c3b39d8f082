VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint bench demo schema clean chromium constraints fault-table

# Installs through constraints.txt: a clean clone (CI) gets the versions that were tested.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# After testing an upgrade: record the environment's versions as the new constraints.
constraints: $(STAMP)
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep '=='; } \
		> constraints.txt.new && mv constraints.txt.new constraints.txt

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

# Re-run the fault suite and regenerate its results table in tests/faults/README_TABLE.md
# and the README (the only target that writes tracked files).
fault-table: $(STAMP)
	PREDQ_WRITE_FAULT_TABLE=1 CI=true $(PY) -m pytest -q -p no:cacheprovider tests/faults
