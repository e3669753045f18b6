# `make demo` and `make test` work on a fresh machine with only Python 3.11+: both create .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench pretrained pretrained-clutter clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# an older .venv has opencv-python-headless, which would share cv2/ with gym-pusht's opencv-python
	$(BIN)/python -m pip uninstall --quiet -y opencv-python-headless
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

# the planning model shipped in pretrained/ for `make demo` (about 3 hours on 2 cores):
#   data     the planning dataset, 12000 episodes at the planner's time scale
#   stage 1  train at horizon 6 (train/plan_point_push_stage1.toml)
#   stage 2  fine-tune at the planner's horizon of 8 actions (train/plan_point_push_stage2.toml)
#   stage 3  fine-tune again with a warm restart of the learning rate: the shipped model (train/plan_point_push.toml)
#   ship     evaluate it and copy it to pretrained/plan_point_push
pretrained: $(STAMP)
	$(BIN)/foresight collect data/point_push_plan.toml --workers 2
	$(BIN)/foresight train train/plan_point_push_stage1.toml
	$(BIN)/foresight train train/plan_point_push_stage2.toml
	$(BIN)/foresight train train/plan_point_push.toml
	$(BIN)/foresight eval train/runs/plan_point_push
	$(BIN)/foresight export train/runs/plan_point_push pretrained/plan_point_push

# the models for scenes of 1 to 3 blocks, in pretrained/ (about 3 hours on 2 cores; benchmarks/models.py uses them):
#   plan_point_push_clutter         pretrained/plan_point_push fine-tuned on the clutter data (the deterministic model)
#   plan_point_push_clutter_seed1,2 the same with other data orders: with it, an ensemble of three
#   sv2p_point_push_clutter         the stochastic (SV2P-style) model, from plan_point_push_clutter
pretrained-clutter: $(STAMP)
	$(BIN)/foresight collect data/point_push_clutter.toml --workers 2
	$(BIN)/foresight train train/plan_point_push_clutter.toml
	$(BIN)/foresight eval train/runs/plan_point_push_clutter
	$(BIN)/foresight export train/runs/plan_point_push_clutter pretrained/plan_point_push_clutter
	for k in 1 2; do \
	  $(BIN)/foresight train train/plan_point_push_clutter.toml --set "name='plan_point_push_clutter_seed$$k'" --set train.seed=$$k && \
	  $(BIN)/foresight eval train/runs/plan_point_push_clutter_seed$$k && \
	  $(BIN)/foresight export train/runs/plan_point_push_clutter_seed$$k pretrained/plan_point_push_clutter_seed$$k || exit 1; \
	done
	$(BIN)/foresight train train/sv2p_point_push_clutter.toml
	$(BIN)/foresight eval train/runs/sv2p_point_push_clutter
	$(BIN)/foresight export train/runs/sv2p_point_push_clutter pretrained/sv2p_point_push_clutter

clean:
	rm -rf out .pytest_cache
