# `make demo` and `make test` work on a fresh machine with only Python 3.11+: both create .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench pretrained clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/foresight demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

bench: $(STAMP)
	$(BIN)/python benchmarks/collect.py

# the planning model shipped in pretrained/ for `make demo`: collect, train, fine-tune twice at the planner's
# horizon, copy (about 3 hours on 2 cores)
pretrained: $(STAMP)
	$(BIN)/foresight collect data/point_push_plan.toml --workers 2
	$(BIN)/foresight train train/plan_point_push.toml
	$(BIN)/foresight train train/plan_point_push_h8.toml
	$(BIN)/foresight train train/plan_point_push_h8b.toml
	$(BIN)/foresight eval train/runs/plan_point_push_h8b
	$(BIN)/foresight export train/runs/plan_point_push_h8b pretrained/plan_point_push

clean:
	rm -rf out .pytest_cache
