"""One training loop for every model: recipes, resume, data-parallel (torchrun), progress, samples.

What differs between model families lives in a small *learner* object (how to build the model from
a dataset, its loss on a batch, its validation metrics, its sample pictures); the loop below knows
nothing else about them. All randomness is a function of ``(seed, step)``: the batches of step ``s``,
the scheduled-sampling draws of step ``s``; so a run resumed from a checkpoint continues exactly as
the uninterrupted run would have.

Run folder (``<recipe folder>/runs/<name>/``)::

    recipe.json        the fully resolved recipe (absolute dataset path, model config)
    checkpoint/        model.pt, optimizer.pt (state dicts, loaded with weights_only=True), state.json
    metrics.jsonl      one JSON object per logged step / validation
    samples/           step-XXXXXX.gif: ground truth | prediction | designated-pixel heat map
                       (E2C: step-XXXXXX.png, x_t | reconstruction | x_t+1 | prediction)
    latent_map.png     E2C on the planar system: latent means of every free position, coloured by position
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from foresight import datasets, envs, evaluation, pixels, recipes, viz
from foresight.errors import ForesightError
from foresight.models.e2c import E2C, MODELS as E2C_MODELS, PRESETS as E2C_PRESETS, E2CConfig
from foresight.models.video import VideoPredictionConfig, VideoPredictionModel, scheduled_sampling_prob
from foresight.recipes import spec


@dataclass(frozen=True)
class TrainSettings:
    steps: int = spec(3000, min=1, help="optimizer steps")
    batch_size: int = spec(16, min=1, help="global batch (split across torchrun processes)")
    lr: float = spec(1e-3, min=0.0)
    lr_decay_steps: int = spec(0, min=0, help="the last N steps anneal lr to 0 along a half cosine (constant "
                                              "before, so a run resumed with more steps matches one trained at once); "
                                              "0 = constant")
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


@dataclass(frozen=True)
class TrainRecipe:
    name: str = spec(help="run name; the run lands in <recipe folder>/runs/<name>/")
    data: str = spec(help="dataset folder, relative to the recipe file")
    data_mix: tuple[str, ...] = spec((), help="more dataset folders (relative to the recipe) whose training "
                                              "episodes join data's; validation stays on data's")
    model: dict = spec({}, help="'kind' plus the model's options")
    train: TrainSettings = spec(TrainSettings())


# -----------------------------------------------------------------------------
# learners: the model-specific part of training


class VideoLearner:
    """Trains a CDNA / DNA / SNA model on (context + horizon)-frame windows."""

    kind = "video"
    RECIPE_ONLY = ("kind", "preset", "variant", "use_states", "image_size")  # recipe keys that are not config fields
    FROM_DATA = ("image_size", "channels", "action_dim", "state_dim")

    def __init__(self, config: VideoPredictionConfig, settings: TrainSettings, use_states: bool, resize: bool = False):
        # resize: the recipe set model.image_size, so the dataset's frames are area-resized to it (a model
        # that works on smaller images than the camera's, e.g. for planning); otherwise sizes must match
        self.config, self.settings, self.use_states, self.resize = config, settings, use_states, resize
        self.window = settings.context + settings.horizon

    @classmethod
    def from_recipe(cls, model: dict, settings: TrainSettings, shapes: dict, source: str) -> "VideoLearner":
        fields = {f.name for f in dataclasses.fields(VideoPredictionConfig)}
        allowed = (fields - set(cls.FROM_DATA)) | set(cls.RECIPE_ONLY)
        unknown = sorted(set(model) - allowed)
        if unknown:
            raise ForesightError(f"{source}: unknown key 'model.{unknown[0]}' (expected one of: {', '.join(sorted(allowed))})")
        preset, variant = model.get("preset", "small"), model.get("variant", "sna")
        if preset not in ("small", "paper"):
            raise ForesightError(f"{source}: key 'model.preset': expected 'small' or 'paper', got {preset!r}")
        use_states = model.get("use_states", False)
        if not isinstance(use_states, bool):
            raise ForesightError(f"{source}: key 'model.use_states': expected true or false, got {use_states!r}")
        T1, H, W, C = shapes["frames"]
        if T1 < settings.context + settings.horizon:
            raise ForesightError(f"{source}: key 'train.horizon': context + horizon = "
                                 f"{settings.context + settings.horizon} frames do not fit the dataset's "
                                 f"episodes of {T1} frames")
        data = dict(image_size=model.get("image_size", (H, W)), channels=C, action_dim=shapes["actions"][-1],
                    state_dim=shapes["states"][-1] if use_states else 0)
        options = {k: v for k, v in model.items() if k in fields and k not in data}
        try:
            config = getattr(VideoPredictionConfig, preset)(variant, **data, **options)
        except ForesightError as e:  # "VideoPredictionConfig.widths: expected ..." -> "key 'model.widths': ..."
            raise ForesightError(f"{source}: " + re.sub(r"^VideoPredictionConfig\.(\w+):", r"key 'model.\1':",
                                                        re.sub(r"^variant:", "key 'model.variant':", str(e)))) from None
        return cls(config, settings, use_states, resize="image_size" in model)

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


class FrameWindows:
    """``WindowDataset``'s items from episodes held in memory (uint8), for the small E2C datasets.

    Reading a window from HDF5 costs about 1.5 ms; an E2C step on a planar batch of 128 takes ~35 ms, so
    per-item reads would more than double training time. The store is read once, episode by episode.
    """

    def __init__(self, root: str | Path, length: int, split: str = "train", val_fraction: float = 0.1,
                 seed: int = 0, stride: int = 1):
        store = datasets.EpisodeStore(root)
        frames_per_episode = store.shapes["frames"][0]
        if not 2 <= length <= frames_per_episode:
            raise ForesightError(f"length: windows of {length} frames do not fit episodes of {frames_per_episode} "
                                 f"frames in {root}")
        train, val = datasets.split_episodes(len(store), val_fraction, seed)
        episodes = {"train": train, "val": val, "all": np.arange(len(store))}[split]
        try:
            self.data = {key: np.stack([store.read(int(e), key) for e in episodes]) if len(episodes) else None
                         for key in datasets.KEYS}  # (E, T+1, H, W, C) uint8 frames, (E, T, A) actions, ...
        finally:
            store.close()
        self.episodes = episodes
        starts = np.arange(0, frames_per_episode - length + 1, stride)
        self.items = [(i, int(s)) for i in range(len(episodes)) for s in starts]
        self.length = length

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, n: int) -> dict[str, np.ndarray]:
        i, s = self.items[n]
        L, d = self.length, self.data
        return {
            "frames": np.ascontiguousarray(d["frames"][i, s:s + L].transpose(0, 3, 1, 2), dtype=np.float32) / 255.0,
            "actions": d["actions"][i, s:s + L - 1],
            "states": d["states"][i, s:s + L],
            "points": d["points"][i, s:s + L],
            "episode": int(self.episodes[i]),
            "start": s,
        }


class E2CLearner:
    """Trains Embed to Control (or its VAE baseline) on (x_t, u_t, x_{t+1}) triples cut from episodes.

    An observation is ``stack`` consecutive frames stacked along the channels (the pendulum's two frames,
    which show its velocity): a window of ``stack + 1`` frames gives x_t = frames[0:stack],
    u_t = actions[stack - 1] and x_{t+1} = frames[1:stack + 1].
    """

    kind = "e2c"
    RECIPE_ONLY = ("kind", "preset", "variant", "stack")
    STACK = {"planar": 1, "pendulum": 2, "point_push": 1}  # frames per observation of each preset

    def __init__(self, config: E2CConfig, settings: TrainSettings, stack: int):
        if config.image_shape[0] % stack:
            raise ForesightError(f"model.stack: {stack} frames do not divide the model's {config.image_shape[0]} "
                                 f"image channels")
        self.config, self.settings, self.stack = config, settings, stack
        self.window = stack + 1

    @classmethod
    def from_recipe(cls, model: dict, settings: TrainSettings, shapes: dict, source: str) -> "E2CLearner":
        fields = {f.name for f in dataclasses.fields(E2CConfig)} - {"model"}  # the config's "model" is our variant
        allowed = fields | set(cls.RECIPE_ONLY)
        unknown = sorted(set(model) - allowed)
        if unknown:
            raise ForesightError(f"{source}: unknown key 'model.{unknown[0]}' (expected one of: {', '.join(sorted(allowed))})")
        preset, variant = model.get("preset"), model.get("variant", "e2c")
        if preset not in E2C_PRESETS:
            raise ForesightError(f"{source}: key 'model.preset': expected one of {', '.join(map(repr, E2C_PRESETS))}, "
                                 f"got {preset!r}")
        if variant not in E2C_MODELS:
            raise ForesightError(f"{source}: key 'model.variant': expected one of {', '.join(map(repr, E2C_MODELS))}, "
                                 f"got {variant!r}")
        stack = model.get("stack", cls.STACK[preset])
        if isinstance(stack, bool) or not isinstance(stack, int) or stack < 1:
            raise ForesightError(f"{source}: key 'model.stack': expected an integer >= 1, got {stack!r}")
        if shapes["frames"][0] < stack + 1:
            raise ForesightError(f"{source}: key 'model.stack': {stack} stacked frames and the next need "
                                 f"{stack + 1} frames, the dataset's episodes have {shapes['frames'][0]}")
        options = {k: v for k, v in model.items() if k in fields}
        if "image_shape" not in options:  # the preset's frame size, with its channels per frame times `stack`
            c, h, w = E2C_PRESETS[preset]().image_shape
            options["image_shape"] = (c // cls.STACK[preset] * stack, h, w)
        try:
            config = E2C_PRESETS[preset](model=variant, **options)
            return cls(config, settings, stack)
        except ForesightError as e:  # "E2CConfig.latent_dim must ..." -> "key 'model.latent_dim' must ..."
            raise ForesightError(f"{source}: " + re.sub(r"^E2CConfig\.(\w+)", r"key 'model.\1'", str(e))) from None

    @classmethod
    def from_resolved(cls, resolved: dict, settings: TrainSettings) -> "E2CLearner":
        model = resolved["model"]
        return cls(E2CConfig(**resolved["model_config"]), settings, model.get("stack", cls.STACK[model["preset"]]))

    def build(self) -> E2C:
        return E2C(self.config)

    def dataset(self, root, split: str, stride: int = 1) -> FrameWindows:
        s = self.settings
        return FrameWindows(root, self.window, split, s.val_fraction, s.seed, stride)

    def check_data(self, shapes: dict, where: str) -> None:
        """A dataset whose images or actions differ from the model's is an error, not a crash."""
        T1, H, W, C = shapes["frames"]
        c, h, w = self.config.image_shape
        per_frame = c // self.stack
        if (H, W, C) != (h, w, per_frame):
            raise ForesightError(f"{where}: images are {H}x{W}x{C}, the model expects {h}x{w}x{per_frame}"
                                 f"{f' ({self.stack} stacked frames)' if self.stack > 1 else ''}")
        if shapes["actions"][-1] != self.config.action_dim:
            raise ForesightError(f"{where}: actions have {shapes['actions'][-1]} dimensions, the model expects "
                                 f"{self.config.action_dim}")
        if T1 < self.window:
            raise ForesightError(f"{where}: episodes of {T1} frames are shorter than the {self.window} frames of "
                                 f"a transition with {self.stack} stacked frame(s)")

    def triples(self, batch, device):
        """x_t (B, stack*C, H, W), u_t (B, A), x_{t+1} (B, stack*C, H, W) from a batch of windows."""
        frames = batch["frames"].to(device, non_blocking=True)  # (B, stack + 1, C, H, W)
        k = self.stack
        return frames[:, :k].flatten(1, 2), batch["actions"][:, k - 1].to(device), frames[:, 1:].flatten(1, 2)

    def loss(self, model, batch, step: int, device) -> dict[str, torch.Tensor]:
        x_t, u_t, x_next = self.triples(batch, device)
        torch.manual_seed(self.settings.seed * 1_000_003 + step)  # the reparameterisation noise of step `step`
        return model(x_t, u_t, x_next)

    @torch.inference_mode()
    def validate(self, model, batches, device) -> dict[str, float]:
        """Reconstruction PSNR of x_t from its mean latent, and PSNR of x_{t+1} decoded from the predicted
        mean, beside copying x_t (what a model that predicts no motion would score)."""
        recon, pred, copy, loss = [], [], [], []
        torch.manual_seed(self.settings.seed)
        for batch in batches:
            x_t, u_t, x_next = self.triples(batch, device)
            mu = model.encode(x_t).mean
            recon.append(evaluation.psnr(model.decode(mu)[:, None], x_t[:, None]))
            pred.append(evaluation.psnr(model.decode(model.transition(mu, u_t).mean)[:, None], x_next[:, None]))
            copy.append(evaluation.psnr(x_t[:, None], x_next[:, None]))
            loss.append(float(model.loss(x_t, u_t, x_next)["loss"]) * len(x_t))
        n = sum(len(r) for r in recon)
        return {"val_psnr": float(torch.cat(recon).mean()), "val_psnr_next": float(torch.cat(pred).mean()),
                "val_psnr_copy": float(torch.cat(copy).mean()), "val_loss": sum(loss) / n}

    @torch.inference_mode()
    def sample(self, model, batch, device, n: int = 8) -> np.ndarray:
        """One picture: rows = transitions; columns = x_t | its reconstruction | x_{t+1} | x_{t+1} decoded from
        the predicted next latent (stacked observations show their last frame)."""
        pick = torch.linspace(0, len(batch["frames"]) - 1, min(n, len(batch["frames"]))).long()  # spread over episodes
        x_t, u_t, x_next = self.triples({k: v[pick] for k, v in batch.items()}, device)
        mu = model.encode(x_t).mean
        recon, pred = model.decode(mu), model.decode(model.transition(mu, u_t).mean)
        c = self.config.image_shape[0] // self.stack
        to_u8 = lambda x: (x[:, -c:].clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).cpu().numpy()  # noqa: E731
        cols = [to_u8(x) for x in (x_t, recon, x_next, pred)]
        scale = max(1, 160 // self.config.image_shape[1])
        return viz.grid([[viz.enlarge(col[b], scale) for col in cols] for b in range(len(x_t))])

    def evaluate(self, model, data_dir, out_dir: Path, max_windows: int | None = None, device="cpu") -> dict:
        """What `foresight eval` would report for an E2C run: `validate`'s PSNRs over the whole validation
        split, written to <out_dir>/eval.json (and the latent map, when the data is the planar system's)."""
        windows = self.dataset(data_dir, "val", self.window)
        if len(windows) == 0:
            windows = self.dataset(data_dir, "all", self.window)
        if max_windows is not None:
            windows.items = windows.items[:max_windows]
        batches = torch.utils.data.DataLoader(windows, batch_size=256)
        result = {**self.validate(model, batches, device), "windows": len(windows), "data": str(data_dir)}
        if datasets.read_manifest(data_dir)["env"]["id"] == "foresight/Planar-v0" and self.stack == 1:
            result["map_rank_correlation"] = write_planar_latent_map(model, Path(out_dir) / "latent_map.png",
                                                                     device=device)
        evaluation.write_json(Path(out_dir) / "eval.json", result)
        return result

    def finish(self, model, run: Path, resolved: dict, device) -> None:
        """After training on the planar system: the E2C paper's latent map, written to <run>/latent_map.png, and
        its rank correlation to <run>/latent_map.json."""
        if resolved.get("dataset", {}).get("env", {}).get("id") == "foresight/Planar-v0" and self.stack == 1:
            model.eval()
            rho = write_planar_latent_map(model, run / "latent_map.png", device=device)
            evaluation.write_json(run / "latent_map.json", {"map_rank_correlation": rho})


@torch.inference_mode()
def planar_latent_means(model, step: float = 1.0, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """The encoder's means at every free position of the planar map on a grid of ``step`` map units:
    positions (N, 2) (a, b) and latent means (N, Z)."""
    from foresight.envs import planar

    grid = np.arange(planar.AGENT_HALF, planar.SIZE - planar.AGENT_HALF + 1e-9, step)
    positions = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    positions = positions[~planar.collides(positions)]
    images = np.stack([planar.render_state(p) for p in positions])  # (N, 40, 40, 1)
    x = torch.as_tensor(images, dtype=torch.float32, device=device).permute(0, 3, 1, 2) / 255
    means = torch.cat([model.encode(chunk).mean for chunk in x.split(512)])
    return positions, means.cpu().numpy()


def map_rank_correlation(positions: np.ndarray, means: np.ndarray, pairs: int = 20000) -> float:
    """How faithfully a latent map keeps the room's geometry: Spearman's rank correlation between the true and
    the latent distances of random pairs of positions (1: the same order). A flat map with the obstacles as
    holes, the E2C paper's picture, scores about 0.98-0.99; maps folded onto themselves 0.65-0.88, and the
    planners lose pairs on them (the planar recipe's 10 seeds: BENCHMARKS.md, 2026-12-02)."""
    i, j = np.random.default_rng(0).integers(0, len(positions), (2, pairs))
    true = np.linalg.norm(positions[i] - positions[j], axis=1)
    latent = np.linalg.norm(means[i] - means[j], axis=1)
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731  (ties, as on a grid, broken arbitrarily: ~1e-5)
    return float(np.corrcoef(ranks(true), ranks(latent))[0, 1])


def write_planar_latent_map(model, path: Path, step: float = 1.0, device="cpu") -> float:
    """The E2C paper's picture: the free positions of the planar map (left) and their latent means (right),
    each position in the same colour in both (the first two principal axes when the latent has more than 2).
    Returns the map's rank correlation (`map_rank_correlation`), which the picture's title shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from foresight.envs import planar

    positions, means = planar_latent_means(model, step, device)
    rho = map_rank_correlation(positions, means)
    if means.shape[1] > 2:  # the plane the means spread in most
        centred = means - means.mean(0)
        means = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
    elif means.shape[1] == 1:
        means = np.column_stack([means[:, 0], np.zeros(len(means))])
    colours = np.column_stack([positions / planar.SIZE, 0.5 * np.ones(len(positions))])  # red: row, green: column
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 4))
    left.scatter(positions[:, 1], positions[:, 0], c=colours, s=12)
    for a, b in planar.OBSTACLES:
        left.add_patch(plt.Circle((b, a), planar.OBSTACLE_RADIUS, color="0.5"))
    left.set(xlim=(0, planar.SIZE), ylim=(planar.SIZE, 0), aspect="equal", title="agent positions (row down)")
    right.scatter(means[:, 0], means[:, 1], c=colours, s=12)
    right.set(aspect="equal", title=f"latent means (z of {model.config.latent_dim}), rank corr. {rho:.2f}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return rho


LEARNERS = {"video": VideoLearner, "e2c": E2CLearner}


class LossModule(torch.nn.Module):
    """Its forward is the model's ``loss``: DistributedDataParallel synchronises the gradients of
    what a wrapped module's forward computes, so the loss must run through one."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return self.model.loss(*args, **kwargs)


def make_learner(model: dict, settings: TrainSettings, shapes: dict, source: str):
    kind = model.get("kind", "video")
    if kind not in LEARNERS:
        raise ForesightError(f"{source}: key 'model.kind': expected one of {sorted(LEARNERS)}, got {kind!r}")
    return LEARNERS[kind].from_recipe(model, settings, shapes, source)


# -----------------------------------------------------------------------------
# data: a deterministic stream of batches, split across processes


class StepBatches(torch.utils.data.Sampler):
    """Index batches for steps ``start, start + 1, ...``: epoch ``e`` is the permutation drawn from
    ``(seed, e)``, so the batch of any step is known without replaying the ones before it. With
    ``world`` processes each takes every ``world``-th index of the global batch."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, rank: int = 0, world: int = 1):
        if n < batch_size:
            raise ForesightError(f"train.batch_size: {batch_size} is more than the {n} training windows")
        self.n, self.b, self.seed, self.start, self.rank, self.world = n, batch_size, seed, start, rank, world

    def __iter__(self):
        per_epoch = self.n // self.b
        step = self.start
        while True:
            epoch, pos = divmod(step, per_epoch)
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            yield perm[pos * self.b:(pos + 1) * self.b][self.rank::self.world].tolist()
            step += 1


# -----------------------------------------------------------------------------
# checkpoints


def save_checkpoint(run: Path, model, optimizer, state: dict) -> None:
    """Write checkpoint.tmp/, then swap it in: a kill never leaves a half-written checkpoint."""
    tmp, final, old = run / "checkpoint.tmp", run / "checkpoint", run / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(model.state_dict(), tmp / "model.pt")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_dir(run: Path) -> Path | None:
    """The newest complete checkpoint (a kill between the two renames leaves it as checkpoint.old)."""
    for name in ("checkpoint", "checkpoint.old"):
        if (run / name / "state.json").exists():
            return run / name
    return None


def load_state_dict(module: torch.nn.Module, path: Path) -> None:
    """Load weights saved by ``save_checkpoint``; shapes that differ are named in the error."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ForesightError(f"{path}: missing") from None
    except Exception as e:  # a damaged or foreign file: say which, never unpickle code
        raise ForesightError(f"{path}: cannot be read as a weights file ({type(e).__name__}: {e})") from None
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    differ = [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in saved and saved[k].shape != own[k].shape]
    if missing or extra or differ:
        parts = ([f"shapes differ ({'; '.join(differ[:4])}{'; ...' if len(differ) > 4 else ''})"] if differ else []) \
            + ([f"missing {missing[:4]}"] if missing else []) + ([f"unexpected {extra[:4]}"] if extra else [])
        raise ForesightError(f"{path}: does not match the model: {', '.join(parts)}")
    module.load_state_dict(saved)


def load_run(run: str | Path, device: str = "cpu"):
    """(model, learner, recipe dict, state dict) of a finished or running training run."""
    run = Path(run)
    if not (run / "recipe.json").exists():
        raise ForesightError(f"{run}: not a training run (no recipe.json); train one with `foresight train`")
    resolved = json.loads((run / "recipe.json").read_text())
    ckpt = checkpoint_dir(run)
    if ckpt is None:
        raise ForesightError(f"{run}: has no checkpoint yet")
    recipe = recipes.from_dict(TrainRecipe, {k: v for k, v in resolved.items()
                                             if k in ("name", "data", "data_mix", "model", "train")},
                               source=str(run / "recipe.json"))
    learner = learner_from_resolved(resolved, recipe)
    model = learner.build()
    load_state_dict(model, ckpt / "model.pt")
    model.to(device).eval()
    return model, learner, resolved, json.loads((ckpt / "state.json").read_text())


def export_run(run: str | Path, dest: str | Path) -> Path:
    """A run's model without its optimizer: recipe.json, checkpoint/{model.pt, state.json} and eval.json,
    for shipping (``pretrained/``); ``load_run(dest)`` loads it like the run itself."""
    import shutil

    run, dest = Path(run), Path(dest)
    ckpt = checkpoint_dir(run)
    if ckpt is None:
        raise ForesightError(f"{run}: has no checkpoint to export")
    resolved = json.loads((run / "recipe.json").read_text())
    resolved["data"] = Path(resolved["data"]).name  # no paths of the machine that trained it
    resolved["data_mix"] = [Path(d).name for d in resolved.get("data_mix", [])]
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "checkpoint").mkdir(parents=True)
    (tmp / "recipe.json").write_text(json.dumps(resolved, indent=1) + "\n")
    for name in ("model.pt", "state.json"):
        shutil.copy2(ckpt / name, tmp / "checkpoint" / name)
    if (run / "eval.json").exists():
        shutil.copy2(run / "eval.json", tmp / "eval.json")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def learner_from_resolved(resolved: dict, recipe: TrainRecipe):
    kind = resolved["model"].get("kind", "video")
    cls = LEARNERS[kind]
    if kind == "video":
        config = VideoPredictionConfig(**resolved["model_config"])
        return cls(config, recipe.train, bool(resolved["model"].get("use_states", False)),
                   resize="image_size" in resolved["model"])
    if kind == "e2c":
        return cls.from_resolved(resolved, recipe.train)
    raise ForesightError(f"unknown model kind {kind!r}")


# -----------------------------------------------------------------------------
# the loop


def distributed() -> tuple[int, int]:
    """(rank, world size); sets up torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def pick_device(name: str, rank: int) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ForesightError(f"train.device: expected 'auto', 'cpu' or 'cuda[:N]', got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ForesightError(f"train.device: {name!r} asked for, but this machine has no CUDA GPU")
    return device


def resolve_paths(recipe: TrainRecipe, recipe_path: Path) -> tuple[Path, Path]:
    """(dataset folder, run folder): relative paths are relative to the recipe file, not the shell."""
    return relative_to(recipe_path, recipe.data), recipe_path.parent.resolve() / "runs" / recipe.name


def relative_to(recipe_path: Path, path: str) -> Path:
    """A path a recipe names: relative to the recipe file, not the shell."""
    path = Path(path)
    return path if path.is_absolute() else (Path(recipe_path).parent / path).resolve()


def learning_rate(s: TrainSettings, step: int) -> float:
    """lr at ``step`` (0-based): constant, then a half cosine to 0 over the last ``lr_decay_steps``."""
    start = s.steps - s.lr_decay_steps
    if s.lr_decay_steps == 0 or step < start:
        return s.lr
    return 0.5 * s.lr * (1 + math.cos(math.pi * (step - start) / s.lr_decay_steps))


def train(recipe: TrainRecipe, recipe_path: str | Path, resume: bool = False, run: Path | None = None,
          progress: bool = True) -> Path:
    """Train (or resume) the run of ``recipe``; return the run folder."""
    recipe_path = Path(recipe_path)
    rank, world = distributed()
    data_dir, default_run = resolve_paths(recipe, recipe_path)
    run = Path(run) if run else default_run
    s = recipe.train
    source = str(recipe_path)
    if s.lr_decay_steps > s.steps:
        raise ForesightError(f"{source}: key 'train.lr_decay_steps': expected at most train.steps = {s.steps}, "
                             f"got {s.lr_decay_steps}")

    store = datasets.EpisodeStore(data_dir)
    shapes = store.manifest["shapes"]
    ckpt = checkpoint_dir(run)
    if ckpt is not None and not resume:
        raise ForesightError(f"{run}: already holds a checkpoint; pass --resume to continue it, or "
                             f"--set name=<other> for a new run")
    if resume and ckpt is None:
        raise ForesightError(f"{run}: has no checkpoint to resume from")
    learner = make_learner(recipe.model, s, shapes, source)
    if resume:  # the stored config wins; a changed dataset is an error, not a crash
        resolved = json.loads((run / "recipe.json").read_text())
        learner = learner_from_resolved(resolved, recipe)
    learner.check_data(shapes, str(data_dir))
    mix_dirs = [relative_to(recipe_path, d) for d in recipe.data_mix]
    for d in mix_dirs:
        try:
            mix_shapes = datasets.read_manifest(d)["shapes"]
        except ForesightError as e:
            raise ForesightError(f"{source}: key 'data_mix': {e}") from None
        learner.check_data(mix_shapes, f"{source}: key 'data_mix': {d}")
    resolved = {**recipes.to_dict(recipe), "data": str(data_dir), "data_mix": [str(d) for d in mix_dirs],
                "kind": learner.kind,
                "model_config": dataclasses.asdict(learner.config), "dataset": {"shapes": shapes,
                "env": store.manifest["env"], "point_names": store.manifest.get("point_names")}}

    device = pick_device(s.device, rank)
    # Weights that seldom get a gradient (E2C's pixels the agent rarely visits) have Adam moments decaying
    # geometrically (0.9 per step) into the subnormal range within ~1000 steps, and subnormal arithmetic on
    # CPUs is slow: a planar E2C run slowed from 26 to 66 s per 1000 steps. Flushing them to zero changes no
    # result that matters (values below 1e-38) and keeps the step time flat, for every model.
    torch.set_flush_denormal(True)
    torch.manual_seed(s.seed)
    model = learner.build().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    step = 0
    if resume:
        load_state_dict(model, ckpt / "model.pt")
        try:
            optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True))
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise ForesightError(f"{ckpt / 'optimizer.pt'}: cannot restore the optimizer ({e})") from None
        step = json.loads((ckpt / "state.json").read_text())["step"]
    elif s.init:
        init = relative_to(recipe_path, s.init)
        start = checkpoint_dir(init)
        if start is None:
            raise ForesightError(f"{source}: key 'train.init': {init} is not a training run with a checkpoint")
        load_state_dict(model, start / "model.pt")
    net = LossModule(model)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    if hasattr(learner, "dataset"):  # a learner may hold its (small) dataset in memory
        train_sets = [learner.dataset(d, "train") for d in (data_dir, *mix_dirs)]
        val_set = learner.dataset(data_dir, "val", learner.window)
    else:
        size = learner.config.image_size
        agent = None
        if s.track_agent:
            if s.track_weight <= 0:
                raise ForesightError(f"{source}: key 'train.track_agent' needs 'train.track_weight' > 0")
            agent = envs.agent_pixels(store.manifest["env"]["id"], *shapes["frames"][1:3],
                                      where=f"{source}: key 'train.track_agent'")
        train_sets = [datasets.WindowDataset(d, learner.window, "train", s.val_fraction, s.seed, image_size=size,
                                             agent_points=agent) for d in (data_dir, *mix_dirs)]
        val_set = datasets.WindowDataset(data_dir, learner.window, "val", s.val_fraction, s.seed,
                                         stride=learner.window, image_size=size)
    train_set = train_sets[0] if len(train_sets) == 1 else torch.utils.data.ConcatDataset(train_sets)
    if len(val_set) == 0:
        val_set = train_set
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=StepBatches(len(train_set), s.batch_size, s.seed, step, rank, world),
        num_workers=s.loader_workers, persistent_workers=s.loader_workers > 0, pin_memory=device.type == "cuda")
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=max(1, s.batch_size // world), shuffle=False,
                                             num_workers=0)

    writer = rank == 0
    if writer:
        run.mkdir(parents=True, exist_ok=True)
        evaluation.write_json(run / "recipe.json", resolved)
    log = open(run / "metrics.jsonl", "a") if writer else None
    tb = _tensorboard(run) if writer else None
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.amp == "bf16")

    def state():
        return {"step": step, "world_size": world, "time": time.time()}

    def validate():
        model.eval()
        batches = [b for _, b in zip(range(s.val_batches), val_loader)]
        with amp:
            metrics = learner.validate(model, batches, device)
        model.train()
        return metrics

    bar = tqdm(total=s.steps, initial=step, disable=not (progress and writer), desc=f"train {recipe.name}",
               dynamic_ncols=True, unit="step")
    postfix: dict[str, str] = {}
    started, last_good = time.time(), step
    model.train()
    try:
        for batch in loader:
            if step >= s.steps:
                break
            with amp:
                terms = learner.loss(net, batch, step, device)
            loss = terms["loss"]
            if not torch.isfinite(loss):
                raise ForesightError(f"training diverged at step {step}: loss is {loss.item()}; the last good "
                                     f"checkpoint (step {last_good}) is kept in {run / 'checkpoint'}; lower "
                                     f"train.lr or set train.grad_clip and resume")
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(s, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            optimizer.step()
            step += 1
            bar.update(1)
            if not writer:
                continue
            if step % s.log_every == 0 or step == s.steps:
                row = {"step": step, **{k: round(float(v.detach()), 6) for k, v in terms.items()},
                       "seconds": round(time.time() - started, 2)}
                log.write(json.dumps(row) + "\n")
                log.flush()
                _tb_log(tb, row, step)
                postfix["loss"] = f"{row['loss']:.4g}"
            if step % s.val_every == 0 or step == s.steps:
                metrics = validate()
                log.write(json.dumps({"step": step, **{k: round(v, 4) for k, v in metrics.items()}}) + "\n")
                log.flush()
                _tb_log(tb, metrics, step)
                postfix["val_psnr"] = f"{metrics['val_psnr']:.2f}"
            if step % s.sample_every == 0 or step == s.steps:
                model.eval()
                picture = learner.sample(model, next(iter(val_loader)), device)  # GIF frames, or one image
                if isinstance(picture, np.ndarray) and picture.ndim == 3:
                    viz.write_png(run / "samples" / f"step-{step:06d}.png", picture)
                else:
                    viz.write_gif(run / "samples" / f"step-{step:06d}.gif", picture)
                model.train()
            if step % s.checkpoint_every == 0 or step == s.steps:
                save_checkpoint(run, model, optimizer, state())
                last_good = step
            bar.set_postfix(postfix, refresh=False)
    finally:
        bar.close()
        if log:
            log.close()
        if tb:
            tb.close()
    if writer and hasattr(learner, "finish"):  # pictures of the trained model (E2C: the latent map)
        learner.finish(model, run, resolved, device)
    if world > 1:
        dist.barrier()
    return run


def _tensorboard(run: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is welcome, never required
        return None
    return SummaryWriter(str(run / "tensorboard"))


def _tb_log(tb, row: dict, step: int) -> None:
    if tb is None:
        return
    for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
            tb.add_scalar(k, v, step)
