# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRA  ?= cpu
STAMP  := $(VENV)/.installed-$(EXTRA)

export OMP_NUM_THREADS ?= 2

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRA),test]"
	touch $(STAMP)

demo: venv
	$(VENV)/bin/openmm-cgnn demo --out demo-output

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) benchmarks/run.py --quick

clean:
	rm -rf $(VENV) demo-output .pytest_cache
