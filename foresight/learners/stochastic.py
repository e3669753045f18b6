"""The stochastic video learner (SV2P, ``models.stochastic``): the video learner's windows, validation, samples and
evaluation, with the stochastic model's loss (the video terms with z from the posterior, plus beta KL(q || p)).

Validation PSNR, the sample GIFs and ``foresight eval`` use z = 0, the prior's mean, for every sequence: one
typical future, repeatable from step to step and comparable with a deterministic run's figures (a draw from
the prior would make them noisy). Validation also reports the posterior's KL on the validation windows
(``val_kl``): near 0, the model has learnt to ignore z.

``train.init`` may name a deterministic video run (the first of SV2P's training stages, e.g. the shipped
pretrained/plan_point_push): its weights are copied with zero weights for z (``init_from_video``), so the run
starts out predicting what that model does.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from foresight import evaluation, recipes
from foresight.checkpoints import checkpoint_dir, load_state_dict, read_weights
from foresight.errors import ForesightError
from foresight.learners.base import TrainSettings, model_table
from foresight.learners.video import FROM_DATA, VideoKeys, VideoLearner, action_bounds
from foresight.models.stochastic import StochasticVideoConfig, StochasticVideoModel, init_from_video, kl_divergence
from foresight.models.video import PRESETS, VideoPredictionConfig, variant_fields
from foresight.recipes import spec


@dataclass(frozen=True)
class StochasticKeys(VideoKeys):
    """The video learner's keys and the KL term's (``latent_dim`` and ``posterior_widths`` are config fields)."""

    kind: str = "stochastic_video"
    kl_weight: float = spec(1e-3, min=0.0, help="beta: the weight of KL(q(z | frames) || N(0, I)) in the loss")
    kl_warmup_steps: int = spec(0, min=0, help="beta ramps linearly from 0 to kl_weight over the first N steps "
                                               "(SV2P's annealing); 0 = kl_weight from the start")


class PriorMean:
    """The stochastic model called with z = 0, the prior's mean, for every sequence: what validation, samples
    and evaluation predict with (``evaluation.evaluate_video`` sees a model with a ``config``)."""

    def __init__(self, model: StochasticVideoModel):
        self.model, self.config = model, model.config

    def __call__(self, frames, actions, states=None, pixels=None, num_context: int = 2, **kwargs):
        latent = actions.new_zeros(actions.shape[0], self.model.latent_dim, dtype=torch.float32)
        return self.model(frames, actions, states, pixels, num_context=num_context, latent=latent, **kwargs)


class StochasticVideoLearner(VideoLearner):
    """Trains an SV2P model on (context + horizon)-frame windows; the posterior reads the whole window."""

    kind = "stochastic_video"

    def __init__(self, config: StochasticVideoConfig, settings: TrainSettings, use_states: bool, resize: bool = False,
                 kl_weight: float = 1e-3, kl_warmup_steps: int = 0):
        super().__init__(config, settings, use_states, resize)
        self.kl_weight, self.kl_warmup_steps = kl_weight, kl_warmup_steps

    @classmethod
    def from_recipe(cls, table: dict, settings: TrainSettings, shapes: dict, source: str) -> StochasticVideoLearner:
        keys, options = model_table(table, StochasticKeys, StochasticVideoConfig, source,
                                    reserved=(*FROM_DATA, "window"))
        T1, H, W, C = shapes["frames"]
        window = settings.context + settings.horizon
        if T1 < window:
            raise ForesightError(f"{source}: key 'train.horizon': context + horizon = {window} frames do not fit "
                                 f"the dataset's episodes of {T1} frames")
        data = dict(image_size=(H, W), channels=C, action_dim=shapes["actions"][-1],
                    state_dim=shapes["states"][-1] if keys.use_states else 0, window=window,
                    **action_bounds(shapes))
        fields = {**PRESETS[keys.preset], **variant_fields(keys.variant), **data, **options}
        config = recipes.from_dict(StochasticVideoConfig, fields, source, prefix="model.")
        return cls(config, settings, keys.use_states, "image_size" in table, keys.kl_weight, keys.kl_warmup_steps)

    @classmethod
    def from_resolved(cls, resolved: dict, settings: TrainSettings, source: str = "recipe.json") -> StochasticVideoLearner:
        config = recipes.from_dict(StochasticVideoConfig, resolved["model_config"], source, prefix="model_config.")
        own = {f.name for f in dataclasses.fields(StochasticKeys)}
        keys = recipes.from_dict(StochasticKeys, {k: v for k, v in resolved["model"].items() if k in own}, source,
                                 prefix="model.")
        if settings.context + settings.horizon != config.window:
            raise ForesightError(f"{source}: key 'train.horizon': the posterior reads {config.window}-frame windows "
                                 f"(context + horizon when it was trained), got {settings.context} + "
                                 f"{settings.horizon}")
        return cls(config, settings, keys.use_states, "image_size" in resolved["model"], keys.kl_weight,
                   keys.kl_warmup_steps)

    def build(self) -> StochasticVideoModel:
        return StochasticVideoModel(self.config)

    def kl_weight_at(self, step: int) -> float:
        """beta at ``step`` (0-based): a linear ramp from 0 over kl_warmup_steps, then kl_weight."""
        if self.kl_warmup_steps == 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, step / self.kl_warmup_steps)

    def loss(self, model, batch, step: int, device) -> dict[str, torch.Tensor]:
        """The video learner's loss call with this step's beta: its terms, "kl" and "kl_weight"."""
        beta = self.kl_weight_at(step)
        terms = super().loss(functools.partial(model, kl_weight=beta), batch, step, device)
        return {**terms, "kl_weight": torch.tensor(beta)}

    @torch.inference_mode()
    def validate(self, model, batches, device) -> dict[str, float]:
        """The video learner's PSNR figures at z = 0, and the posterior's KL on the validation windows."""
        metrics = super().validate(PriorMean(model), batches, device)
        kl = [kl_divergence(*model.posterior(b["frames"].to(device).float())) for b in batches]
        return {**metrics, "val_kl": float(torch.cat(kl).mean())}

    def sample(self, model, batch, device, n: int = 4):
        return super().sample(PriorMean(model), batch, device, n)

    def evaluate(self, model, data_dir, out_dir: Path, max_windows: int | None = None, run=None,
                 step: int | None = None) -> dict:
        """The video learner's evaluation (``evaluation.evaluate_video``) at z = 0, the prior mean, recorded as
        ``latent`` in eval.json."""
        s = self.settings
        result = evaluation.evaluate_video(PriorMean(model), data_dir, s.context, s.horizon, s.val_fraction, s.seed,
                                           self.use_states, max_windows=max_windows)
        result.update({"run": str(run), "data": str(data_dir), "step": step, "latent": "prior mean (z = 0)"})
        evaluation.write_video_report(result, Path(out_dir), f"{Path(str(run)).name} (step {step}, z = 0) on "
                                                             f"{Path(data_dir).name}")
        return result

    def describe(self, result: dict, out_dir: Path) -> str:
        return "at z = 0 (the prior mean): " + super().describe(result, out_dir)

    def init_weights(self, model: StochasticVideoModel, run: Path, where: str) -> None:
        """``train.init`` (``where`` names it): a stochastic run's weights as they are; a deterministic video
        run's through ``init_from_video`` (z's weights zero), after checking that its network is this one's."""
        try:
            resolved = json.loads((Path(run) / "recipe.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ForesightError(f"{where}: {run}: no readable recipe.json ({type(e).__name__})") from None
        kind = resolved.get("kind", resolved.get("model", {}).get("kind", "video"))
        weights = checkpoint_dir(run) / "model.pt"
        try:
            if kind == self.kind:
                load_state_dict(model, weights)
            elif kind == "video":
                theirs = recipes.from_dict(VideoPredictionConfig, resolved["model_config"], str(run / "recipe.json"),
                                           prefix="model_config.")
                for f in dataclasses.fields(VideoPredictionConfig):
                    if getattr(theirs, f.name) != getattr(self.config, f.name):
                        raise ForesightError(f"{run}: its video model has {f.name} = {getattr(theirs, f.name)!r}, "
                                             f"this recipe's {getattr(self.config, f.name)!r}")
                init_from_video(model, read_weights(weights))
            else:
                raise ForesightError(f"{run}: a {kind!r} run; expected a 'video' or '{self.kind}' run")
        except ForesightError as e:
            raise ForesightError(f"{where}: {e}") from None
