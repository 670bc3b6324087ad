# Two commands on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test install clean bench

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned here (a CPU wheel of 2.13.0 is on these machines); the
# library itself declares a loose torch>=2.5.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,gavel]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/weft demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=30

bench: $(STAMP)
	$(BIN)/python benchmarks/dp_scaling.py --quick

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
