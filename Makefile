# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs, runs the CPU demo
#   make test   creates .venv, installs, runs the test suite (with the local SLURM cluster up when
#               this machine allows it: see .ci/with_local_slurm)
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SYSTEM_PYTHON ?= python3

.PHONY: install demo test lint bench

$(VENV)/.installed: requirements.txt requirements-seg.txt setup.py
	test -x $(PYTHON) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade "pip<26"
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q -e ".[seg,crf]" ruff
	touch $@

install: $(VENV)/.installed

demo: install
	$(PYTHON) tools/demo.py

test: install
	bash .ci/with_local_slurm $(PYTHON) -m pytest -q -rs tests

lint: install
	$(VENV)/bin/ruff check dinov2 simdinov2 eval tools tests benchmarks
