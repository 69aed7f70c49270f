# The two commands of the README:
#   make reports   the whole study (cpu profile) on the embedded data -> reports/cpu/index.html
#   make test      unit tests, the smoke study through papermill, nbval over the notebooks
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= cpu

.PHONY: reports test lab notebooks clean

reports: $(STAMP)
	$(PY) -m helpers run --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m pytest

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

# maintainers: re-execute the committed notebooks (smoke profile) to refresh their stored outputs
notebooks: $(STAMP)
	$(PY) -m helpers refresh-notebooks

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

clean:
	rm -rf reports/smoke reports/cpu reports/interactive data/cache
