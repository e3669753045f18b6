"""Learners: what training knows of a model family, one module per family behind one protocol (``Learner``).

A learner builds its model from the recipe's ``[model]`` table and the dataset's shapes, picks the windows it
trains and validates on, computes the loss of a batch, its validation figures, its sample picture, what
``foresight eval`` reports, and what a finished run adds to its folder. ``foresight.training`` runs the loop;
``load_run`` brings a trained run back as its model and learner (for evaluation, planning, collection).

    video             CDNA / DNA / SNA video prediction (``learners.video.VideoLearner``)
    stochastic_video  SV2P: the video model with a latent, a posterior and a KL term
                      (``learners.stochastic.StochasticVideoLearner``)
    e2c               Embed to Control and its VAE baseline (``learners.e2c.E2CLearner``)
"""
from __future__ import annotations

import json
from pathlib import Path

from foresight import recipes
from foresight.checkpoints import check, checkpoint_dir, load_state_dict
from foresight.errors import ForesightError
from foresight.learners.base import Learner, Picture, TrainSettings
from foresight.learners.e2c import E2CLearner
from foresight.learners.stochastic import StochasticVideoLearner
from foresight.learners.video import VideoLearner

LEARNERS: dict[str, type[Learner]] = {"video": VideoLearner, "stochastic_video": StochasticVideoLearner,
                                      "e2c": E2CLearner}

__all__ = ["LEARNERS", "E2CLearner", "Learner", "Picture", "StochasticVideoLearner", "TrainSettings", "VideoLearner",
           "learner_from_resolved", "load_run", "make_learner"]


def make_learner(table: dict, settings: TrainSettings, shapes: dict, source: str) -> Learner:
    """The learner of a recipe's [model] table (``kind`` picks the family; video when absent)."""
    kind = table.get("kind", "video")
    if kind not in LEARNERS:
        raise ForesightError(f"{source}: key 'model.kind': expected one of {sorted(LEARNERS)}, got {kind!r}")
    return LEARNERS[kind].from_recipe(table, settings, shapes, source)


def learner_from_resolved(resolved: dict, settings: TrainSettings, source: str = "recipe.json") -> Learner:
    """The learner of a run's recipe.json, with ``settings`` (the stored ones, or a resumed recipe's)."""
    kind = resolved["model"].get("kind", "video")
    if kind not in LEARNERS:
        raise ForesightError(f"{source}: key 'model.kind': unknown model kind {kind!r}")
    return LEARNERS[kind].from_resolved(resolved, settings, source)


def load_run(run: str | Path, device: str = "cpu"):
    """(model, learner, recipe dict, state dict) of a finished or running training run, or of an exported
    one (``checkpoints.export_run``). The model is in eval mode on ``device``; the recipe dict is the run's
    recipe.json (its ``dataset`` holds the training data's shapes and ``env``); the state dict holds ``step``."""
    run = Path(run)
    if not (run / "recipe.json").exists():
        raise ForesightError(f"{run}: not a training run (no recipe.json); train one with `foresight train`")
    resolved = json.loads((run / "recipe.json").read_text())
    ckpt = checkpoint_dir(run)
    if ckpt is None:
        raise ForesightError(f"{run}: has no checkpoint yet")
    source = str(run / "recipe.json")
    settings = recipes.from_dict(TrainSettings, resolved.get("train", {}), source, prefix="train.")
    learner = learner_from_resolved(resolved, settings, source)
    model = learner.build()
    check(ckpt)
    load_state_dict(model, ckpt / "model.pt")
    model.to(device).eval()
    return model, learner, resolved, json.loads((ckpt / "state.json").read_text())
