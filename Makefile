# Two commands from a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and (re)installs only when pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Tests run on all cores with one torch thread per worker (see tests/conftest.py).
PYTEST_ARGS ?= -n auto --dist loadgroup

.PHONY: demo test install clean bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgevision demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-output
