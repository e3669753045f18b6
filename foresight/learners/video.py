"""The video prediction learner: CDNA / DNA / SNA trained on (context + horizon)-frame windows."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from foresight import datasets, envs, evaluation, pixels, recipes, viz
from foresight.errors import ForesightError
from foresight.learners.base import TrainSettings, model_table
from foresight.models.video import (
    PRESETS,
    VARIANTS,
    VideoPredictionConfig,
    VideoPredictionModel,
    scheduled_sampling_prob,
    variant_fields,
)
from foresight.recipes import spec

# config fields the dataset sets (image_size too, unless given)
FROM_DATA = ("channels", "action_dim", "state_dim", "action_low", "action_high")


def action_bounds(facts: dict) -> dict:
    """The dataset's action bounds as config fields: none when the manifest has no finite ones, or when they are
    -1..1 already (no scaling; such models read as those trained before bounds were recorded)."""
    space = facts.get("action_space") or {}
    low, high = space.get("low"), space.get("high")
    if not low or not high or not np.isfinite(low + high).all() or (set(low), set(high)) == ({-1.0}, {1.0}):
        return {}
    return dict(action_low=tuple(map(float, low)), action_high=tuple(map(float, high)))


@dataclass(frozen=True)
class VideoKeys:
    """The [model] table's keys that are not config fields (``image_size`` is both: given, it resizes)."""

    kind: str = "video"
    preset: str = spec("small", choices=tuple(PRESETS), help="'small' or 'paper' (Finn et al.'s widths)")
    variant: str = spec("sna", choices=VARIANTS)
    use_states: bool = spec(False, help="feed and predict the low-dimensional state")


class VideoLearner:
    """Trains a CDNA / DNA / SNA model on (context + horizon)-frame windows."""

    kind = "video"

    def __init__(self, config: VideoPredictionConfig, settings: TrainSettings, use_states: bool, resize: bool = False):
        # resize: the recipe set model.image_size, so the dataset's frames are area-resized to it (a model
        # that works on smaller images than the camera's, e.g. for planning); otherwise sizes must match
        self.config, self.settings, self.use_states, self.resize = config, settings, use_states, resize
        self.window = settings.context + settings.horizon

    @classmethod
    def from_recipe(cls, table: dict, settings: TrainSettings, shapes: dict, source: str) -> VideoLearner:
        keys, options = model_table(table, VideoKeys, VideoPredictionConfig, source, reserved=FROM_DATA)
        T1, H, W, C = shapes["frames"]
        if T1 < settings.context + settings.horizon:
            raise ForesightError(f"{source}: key 'train.horizon': context + horizon = "
                                 f"{settings.context + settings.horizon} frames do not fit the dataset's "
                                 f"episodes of {T1} frames")
        data = dict(image_size=(H, W), channels=C, action_dim=shapes["actions"][-1],
                    state_dim=shapes["states"][-1] if keys.use_states else 0, **action_bounds(shapes))
        fields = {**PRESETS[keys.preset], **variant_fields(keys.variant), **data, **options}
        config = recipes.from_dict(VideoPredictionConfig, fields, source, prefix="model.")
        return cls(config, settings, keys.use_states, resize="image_size" in table)

    @classmethod
    def from_resolved(cls, resolved: dict, settings: TrainSettings, source: str = "recipe.json") -> VideoLearner:
        config = recipes.from_dict(VideoPredictionConfig, resolved["model_config"], source, prefix="model_config.")
        return cls(config, settings, bool(resolved["model"].get("use_states", False)),
                   resize="image_size" in resolved["model"])

    def build(self) -> VideoPredictionModel:
        return VideoPredictionModel(self.config)

    def check_data(self, shapes: dict, where: str) -> None:
        """A dataset whose image or action size differs from the model's is an error, not a crash."""
        T1, H, W, C = shapes["frames"]
        cfg = self.config
        if (H, W, C) != (*cfg.image_size, cfg.channels) and not (self.resize and C == cfg.channels):
            raise ForesightError(f"{where}: images are {H}x{W}x{C}, the model expects "
                                 f"{cfg.image_size[0]}x{cfg.image_size[1]}x{cfg.channels}")
        if shapes["actions"][-1] != cfg.action_dim:
            raise ForesightError(f"{where}: actions have {shapes['actions'][-1]} dimensions, the model expects "
                                 f"{cfg.action_dim}")
        if cfg.state_dim and shapes["states"][-1] != cfg.state_dim:
            raise ForesightError(f"{where}: states have {shapes['states'][-1]} dimensions, the model expects "
                                 f"{cfg.state_dim}")
        if T1 < self.window:
            raise ForesightError(f"{where}: episodes of {T1} frames are shorter than a {self.window}-frame window")
        space = shapes.get("action_space")
        model = dict(action_low=tuple(cfg.action_low), action_high=tuple(cfg.action_high)) if cfg.action_low else {}
        if space and action_bounds(shapes) != model:  # a manifest without bounds (older datasets) is taken on trust
            reads = f"{list(cfg.action_low)}..{list(cfg.action_high)}" if cfg.action_low else "-1..1"
            raise ForesightError(f"{where}: actions span {space['low']}..{space['high']}, the model reads {reads}")

    def windows(self, root, split: str, stride: int = 1, agent_points=None) -> datasets.WindowDataset:
        """The split's windows of a dataset folder, read from its store item by item, at the model's size."""
        s = self.settings
        return datasets.WindowDataset(root, self.window, split, s.val_fraction, s.seed, stride=stride,
                                      image_size=self.config.image_size, agent_points=agent_points)

    def data(self, data_dir: Path, mix_dirs: list[Path], source: str):
        """With train.track_agent, each training window's points end with the agent's pixel."""
        agent = None
        if self.settings.track_agent:
            manifest = datasets.read_manifest(data_dir)
            agent = envs.agent_pixels(manifest["env"]["id"], *manifest["shapes"]["frames"][1:3],
                                      where=f"{source}: key 'train.track_agent'")
        train = [self.windows(d, "train", agent_points=agent) for d in (data_dir, *mix_dirs)]
        return train, self.windows(data_dir, "val", stride=self.window)

    def _inputs(self, batch, device):
        frames = batch["frames"].to(device, non_blocking=True)
        actions = batch["actions"].to(device, non_blocking=True)
        states = batch["states"].to(device, non_blocking=True) if self.use_states else None
        return frames, actions, states

    def loss(self, model, batch, step: int, device) -> dict[str, torch.Tensor]:
        """``model`` is the ``LossModule`` (or its DDP wrapper): calling it returns the loss terms."""
        frames, actions, states = self._inputs(batch, device)
        s = self.settings
        prob = scheduled_sampling_prob(step, s.schedule_k) if s.schedule_k > 0 else 0.0
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
        points = batch["points"].to(device, non_blocking=True) if s.track_weight > 0 else None
        return model(frames, actions, states, num_context=s.context, sample_prob=prob, generator=g,
                     points=points, track_weight=s.track_weight, image_loss=s.image_loss)

    @torch.inference_mode()
    def validate(self, model, batches, device) -> dict[str, float]:
        s = self.settings
        model_psnr, copy_psnr = [], []
        for batch in batches:
            frames, actions, states = self._inputs(batch, device)
            pred = model(frames[:, :s.context], actions, states, num_context=s.context).frames[:, s.context - 1:]
            truth = frames[:, s.context:]
            model_psnr.append(evaluation.psnr(pred, truth))
            copy_psnr.append(evaluation.psnr(evaluation.copy_last_frame(frames[:, :s.context], s.horizon), truth))
        m, c = torch.cat(model_psnr).mean(0), torch.cat(copy_psnr).mean(0)  # (horizon,)
        return {"val_psnr": float(m.mean()), "val_psnr_copy_last": float(c.mean()),
                "val_psnr_gain": float((m - c).mean()), "val_psnr_last_step": float(m[-1])}

    @torch.inference_mode()
    def sample(self, model, batch, device, n: int = 4) -> list[np.ndarray]:
        """GIF frames: rows = sequences; columns = ground truth | prediction | designated-pixel heat map."""
        s = self.settings
        frames, actions, states = self._inputs({k: v[:n] for k, v in batch.items()}, device)
        H, W = frames.shape[-2:]
        start = batch["points"][:n, s.context - 1].to(device)  # (n, K, 2) true object pixels
        out = model(frames[:, :s.context], actions, states, pixels=pixels.delta_distribution(start, H, W),
                    num_context=s.context)
        truth = frames[:, s.context:]
        pred = out.frames[:, s.context - 1:]
        heat = out.pixels.sum(2)  # (n, horizon, H, W): all designated pixels in one map
        to_u8 = lambda x: (x.clamp(0, 1) * 255).byte().permute(0, 1, 3, 4, 2).cpu().numpy()  # noqa: E731
        truth, pred, heat = to_u8(truth), to_u8(pred), heat.float().cpu().numpy()
        points = batch["points"][:n, s.context:].numpy()
        gif = []
        for t in range(s.horizon):
            rows = [[viz.draw_points(truth[b, t], points[b, t], scale=3), viz.enlarge(pred[b, t], 3),
                     viz.heatmap(pred[b, t], heat[b, t], scale=3)] for b in range(len(truth))]
            gif.append(viz.grid(rows))
        return gif

    def evaluate(self, model, data_dir, out_dir: Path, max_windows: int | None = None, run=None,
                 step: int | None = None) -> dict:
        """Per-step PSNR / SSIM against copy-last-frame and the designated-pixel tracking error
        (``evaluation.evaluate_video``), written with the run and step to <out_dir>/eval.json and eval.png."""
        s = self.settings
        result = evaluation.evaluate_video(model, data_dir, s.context, s.horizon, s.val_fraction, s.seed,
                                           self.use_states, max_windows=max_windows)
        result.update({"run": str(run), "data": str(data_dir), "step": step})
        evaluation.write_video_report(result, Path(out_dir), f"{Path(str(run)).name} (step {step}) on "
                                                             f"{Path(data_dir).name}")
        return result

    def describe(self, result: dict, out_dir: Path) -> str:
        line = f"PSNR gain over copy-last {result['psnr_gain_db']:+.2f} dB"
        if "tracking_ratio" in result:
            line += f"; tracking error at the last step {result['tracking_ratio']:.2f}x the static baseline's"
            per = result.get("tracking_ratio_per_object") or []
            if len(per) > 1:
                line += " (per object: " + ", ".join("-" if r is None else f"{r:.2f}" for r in per) + ")"
        return f"{line}\nwrote {Path(out_dir) / 'eval.json'} and {Path(out_dir) / 'eval.png'}"

    def finish(self, model, run: Path, resolved: dict, device) -> None:
        """Nothing: the samples and checkpoints are all a video run holds."""
