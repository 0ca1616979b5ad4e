PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

REGISTRY ?= ghcr.io/psi-functions
TAG ?= 0.1.0
LOCK := $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-trusted-host --no-emit-find-links

.PHONY: install run test test-unit bench bench-quick lint format clean lock image

# exactly the locked versions (hashes checked), then the project itself, editable
install: $(BIN)/psi

$(BIN)/psi: pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

# both lock files again from pyproject.toml (after a change to its dependencies)
lock: install
	$(LOCK) --output-file requirements.lock pyproject.toml
	$(LOCK) --extra local --extra dev --output-file requirements-dev.lock pyproject.toml

# the one image of every function (the function is chosen at start: FUNCTION_DIR)
image:
	docker build -t $(REGISTRY)/psi:$(TAG) .

run: install
	$(BIN)/psi dev

test: install
	$(BIN)/pytest -q

test-unit: install
	$(BIN)/pytest -q tests/unit

bench: install
	$(BIN)/python -m bench

bench-quick: install
	$(BIN)/python -m bench --quick

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .psi-data .pytest_cache .ruff_cache
