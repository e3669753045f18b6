"""What every learner shares: the training settings it reads, the protocol it follows, and how it reads the
recipe's ``[model]`` table."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from foresight import recipes
from foresight.errors import ForesightError
from foresight.recipes import spec


@dataclass(frozen=True)
class TrainSettings:
    steps: int = spec(3000, min=1, help="optimizer steps")
    batch_size: int = spec(16, min=1, help="global batch (split across torchrun processes)")
    lr: float = spec(1e-3, min=0.0)
    lr_decay_steps: int = spec(0, min=0, help="the last N steps anneal lr to 0 along a half cosine (constant "
                                              "before, so a run resumed with more steps matches one trained at once); "
                                              "0 = constant")
    weight_decay: float = spec(0.0, min=0.0, help="Adam's L2 penalty on the weights (PCC's and PC3's code: 1e-3)")
    grad_clip: float = spec(1.0, min=0.0, help="max gradient norm; 0 = off")
    context: int = spec(2, min=1, help="ground-truth frames the model sees before predicting")
    horizon: int = spec(10, min=1, help="frames predicted after the context")
    schedule_k: float = spec(900.0, min=0.0, help="scheduled sampling k (Finn et al.); 0 = always own predictions")
    track_weight: float = spec(0.0, min=0.0, help="video: weight of the designated-pixel tracking loss on the "
                                                   "dataset's object pixels (expected distance in pixels); 0 = off")
    track_agent: bool = spec(False, help="video, with track_weight: track the agent's pixel (PointPush's pusher) "
                                         "beside the objects', so the loss also supervises the motion that causes "
                                         "contact")
    image_loss: str = spec("mse", choices=("mse", "l1"), help="video: the image error, 'mse' (Finn et al.) or "
                                                              "'l1' (penalises a smeared object more)")
    val_fraction: float = spec(0.1, min=0.0, max=0.9)
    val_every: int = spec(250, min=1)
    val_batches: int = spec(8, min=1)
    sample_every: int = spec(500, min=1)
    checkpoint_every: int = spec(250, min=1)
    log_every: int = spec(10, min=1)
    loader_workers: int = spec(1, min=0, help="DataLoader worker processes")
    device: str = spec("auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    amp: str = spec("off", choices=("off", "bf16"), help="bf16 autocast for the forward pass")
    seed: int = spec(0, min=0)
    init: str = spec("", help="a training run (relative to the recipe) whose weights start this one (fine-tuning; "
                              "a fresh optimizer); its model must have this recipe's shapes")

    def checks(self):
        if self.lr_decay_steps > self.steps:
            yield "lr_decay_steps", f"at most train.steps = {self.steps}"
        if self.track_agent and self.track_weight <= 0:
            yield "track_agent", "train.track_weight > 0 beside it (the agent's pixel is tracked by that loss)"


Picture = np.ndarray | list[np.ndarray]  # one image (H, W, 3), or the frames of a GIF


class Learner(Protocol):
    """The model-specific part of training; ``foresight.training.train`` knows nothing else of a model.

    An optional hook, not part of the protocol: ``init_weights(model, run, where)``, when a learner has it, loads
    ``train.init``'s run into the model in place of a plain state-dict load (the stochastic video learner starts
    from a deterministic video run); its errors name ``where``."""

    kind: str  # the recipe's model.kind
    config: Any  # the model's config dataclass, stored as recipe.json's "model_config"
    settings: TrainSettings
    window: int  # frames per training window

    @classmethod
    def from_recipe(cls, table: dict, settings: TrainSettings, shapes: dict, source: str) -> Learner:
        """From the recipe's [model] table and the dataset's shapes (and its manifest's ``action_space``); a mistake
        names the key."""

    @classmethod
    def from_resolved(cls, resolved: dict, settings: TrainSettings, source: str) -> Learner:
        """From a run's recipe.json (its stored model_config wins over the recipe's table)."""

    def build(self) -> torch.nn.Module: ...

    def check_data(self, shapes: dict, where: str) -> None:
        """A dataset whose images or actions differ from the model's is an error naming ``where``."""

    def data(self, data_dir: Path, mix_dirs: list[Path], source: str) -> tuple[list, Any]:
        """(training windows of each folder, data_dir's first, validation windows of data_dir)."""

    def loss(self, model, batch: dict, step: int, device) -> dict[str, torch.Tensor]:
        """The loss terms of step ``step`` ("loss" is minimised); ``model`` is the ``LossModule``."""

    def validate(self, model, batches, device) -> dict[str, float]:
        """Validation figures over a few batches ("val_psnr" among them where the model makes images, else
        "val_loss")."""

    def sample(self, model, batch: dict, device) -> Picture:
        """A picture of the model's predictions on a validation batch."""

    def evaluate(self, model, data_dir, out_dir: Path, max_windows: int | None = None, run=None,
                 step: int | None = None) -> dict:
        """What ``foresight eval`` reports on data_dir's validation split, written to <out_dir>/eval.json."""

    def describe(self, result: dict, out_dir: Path) -> str:
        """The lines ``foresight eval`` prints about ``evaluate``'s result."""

    def finish(self, model, run: Path, resolved: dict, device) -> None:
        """After training: what the trained model adds to its run folder (nothing, for most)."""


def model_table(table: dict, keys: type, config: type, source: str, reserved: tuple[str, ...] = ()):
    """Split a recipe's [model] table into the learner's own keys (the dataclass ``keys``, read and checked)
    and the options of the model's ``config`` (checked by the caller's ``recipes.from_dict``, once the preset
    and the data's sizes join them). ``reserved``: config fields the recipe may not set (the learner does)."""
    own = {f.name for f in dataclasses.fields(keys)}
    options = {f.name for f in dataclasses.fields(config)} - set(reserved)
    allowed = own | options
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ForesightError(f"{source}: unknown key 'model.{unknown[0]}' (expected one of: {', '.join(sorted(allowed))})")
    return (recipes.from_dict(keys, {k: v for k, v in table.items() if k in own}, source, prefix="model."),
            {k: v for k, v in table.items() if k in options and k not in own})
