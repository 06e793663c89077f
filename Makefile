# The two commands of the README: `make demo` and `make test`. Each creates .venv (Python >= 3.11)
# and installs the project with its dev tools on first use; Kafka comes from Maven Central.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit integration bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fxgw demo

bench: $(STAMP)
	$(BIN)/fxgw bench

lint: $(STAMP)
	$(BIN)/ruff check gateway tests
	$(BIN)/ruff format --check gateway tests
	$(BIN)/mypy --strict gateway
	$(BIN)/fxgw schema check --against all
	$(BIN)/fxgw policy check --strict $(filter-out %.test.yaml,$(wildcard policies/*.yaml))
	$(BIN)/yamllint --strict deploy
	@if command -v shellcheck >/dev/null; then \
		shellcheck deploy/kafka/kafka-local .ci/run deploy/compose/init/*.sh; fi

test: lint
	$(BIN)/python -m pytest --cov --cov-report=term

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration tests/cluster

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
