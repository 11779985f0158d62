# `make demo` and `make test` work from a fresh clone: both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]" -c constraints.txt
	touch $(STAMP)

install: $(STAMP)

# The digits pipeline first (a trained model, accuracy at every stage), then ResNet-18 (random weights).
demo: $(STAMP)
	$(BIN)/python -m optkit.data examples/data/digits
	$(BIN)/optkit run examples/digits.yaml --output runs/demo-digits --overwrite
	$(BIN)/optkit run examples/resnet18.yaml --output runs/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

clean:
	rm -rf $(VENV) runs build *.egg-info
