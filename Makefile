# Two commands on a fresh machine with Python 3.11+ and pip:
#   make demo   installs into .venv and runs the main job (image_patches, RGB, 4x4 -> 32x32)
#   make test   installs into .venv (with test extras) and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/progae train --workdir runs/main

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(VENV)/bin/progae bench

clean:
	rm -rf $(VENV) runs .pytest_cache
