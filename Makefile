# `make demo` and `make test` work from a fresh clone: both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A second environment with Ultralytics installed beside optkit, as a user's would be: its
# ultralytics-thop (AGPL) overwrites the thop/ folder of optkit's Lyken17 thop, so it never goes
# into .venv. `make test` runs the tests marked ultralytics (and the thop-independent MAC counts) there.
UVENV := .venv-ultralytics
UBIN := $(UVENV)/bin
USTAMP := $(UVENV)/.installed

.PHONY: demo test lint test-main test-ultralytics test-fast install install-ultralytics docs clean
# Debian's chromium: tests/test_docs_site.py opens every page of the built site in it, headless.
CHROMIUM := /usr/bin/chromium

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]" -c constraints.txt
	touch $(STAMP)

$(USTAMP): pyproject.toml constraints.txt
	test -x $(UBIN)/python || $(PYTHON) -m venv $(UVENV)
	$(UBIN)/python -m pip install --upgrade pip
	$(UBIN)/python -m pip install -e ".[dev]" -c constraints.txt
	# Ultralytics last, as a user adds it to an environment that has optkit: its thop then owns thop/.
	$(UBIN)/python -m pip install ultralytics -c constraints.txt
	touch $(USTAMP)

install: $(STAMP)

$(CHROMIUM):
	apt-get update && apt-get install -y chromium

install-ultralytics: $(USTAMP)

# The digits pipelines first (a trained model, accuracy at every stage; pruned, then fine-tuned), then ResNet-18 (random weights).
demo: $(STAMP)
	$(BIN)/python -m optkit.data examples/data/digits
	$(BIN)/optkit run examples/digits.yaml --output runs/demo-digits --overwrite
	$(BIN)/optkit run examples/digits_finetune.yaml --output runs/demo-digits-finetune --overwrite
	$(BIN)/optkit run examples/resnet18.yaml --output runs/demo --overwrite

# The docs site, strict: a broken link or a reference that cannot be generated fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

# Both environments (and Chromium) are installed first, so the time printed at the end is the checks' alone.
test: $(STAMP) $(USTAMP) $(CHROMIUM)
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory lint test-main test-ultralytics || exit $$?; \
	echo "make test: lint and the test jobs took $$(( $$(date +%s) - start )) s of wall time (installs excluded)"

# Lint, format and types of optkit/ and plugins/ (configured in pyproject.toml). mypy cannot map the
# package-dir plugins/ -> optkit_plugins, so it reads the plugins through a link named for the package.
lint: $(STAMP)
	$(BIN)/ruff check optkit plugins
	$(BIN)/ruff format --check optkit plugins
	mkdir -p build/mypy && ln -sfn ../../plugins build/mypy/optkit_plugins
	$(BIN)/mypy

# --durations: the 15 slowest tests, so what makes the suite slow stays in sight.
# tests/test_docs_*.py build the site, run every how-to recipe and open every page in Chromium;
# loadgroup: one worker builds the site for all of the site's tests.
test-main: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q --durations=15

# Fails when Ultralytics is missing or no test marked ultralytics passed (see tests/conftest.py).
test-ultralytics: $(USTAMP)
	YOLO_OFFLINE=1 $(UBIN)/python -m pytest -n 2 -q -m "ultralytics or thop" --ultralytics-job --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

clean:
	rm -rf $(VENV) $(UVENV) runs build site *.egg-info
