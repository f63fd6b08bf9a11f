# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The stamp files re-install only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e .
	touch $@

# Debian's chromium (for the browser test) installs beside pip, not after it: the two wait on the network.
$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	{ bash scripts/ensure_chromium.sh >/dev/null 2>&1 & }; $(PIP) install -q -e '.[test]'; status=$$?; wait; exit $$status
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(VENV)/bin/trainlab train

test: $(VENV)/.installed-test
	bash scripts/ensure_chromium.sh || echo "chromium unavailable: the browser test will be skipped"
	$(VENV)/bin/ruff check src tests bench
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs build *.egg-info
