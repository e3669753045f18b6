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

from foresight import datasets, evaluation, recipes, viz
from foresight.errors import ForesightError
from foresight.models.video import VideoPredictionConfig, VideoPredictionModel, scheduled_sampling_prob
from foresight.recipes import spec


@dataclass(frozen=True)
class TrainSettings:
    steps: int = spec(3000, min=1, help="optimizer steps")
    batch_size: int = spec(16, min=1, help="global batch (split across torchrun processes)")
    lr: float = spec(1e-3, min=0.0)
    grad_clip: float = spec(1.0, min=0.0, help="max gradient norm; 0 = off")
    context: int = spec(2, min=1, help="ground-truth frames the model sees before predicting")
    horizon: int = spec(10, min=1, help="frames predicted after the context")
    schedule_k: float = spec(900.0, min=0.0, help="scheduled sampling k (Finn et al.); 0 = always own predictions")
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


@dataclass(frozen=True)
class TrainRecipe:
    name: str = spec(help="run name; the run lands in <recipe folder>/runs/<name>/")
    data: str = spec(help="dataset folder, relative to the recipe file")
    model: dict = spec({}, help="'kind' plus the model's options")
    train: TrainSettings = spec(TrainSettings())


# -----------------------------------------------------------------------------
# learners: the model-specific part of training


class VideoLearner:
    """Trains a CDNA / DNA / SNA model on (context + horizon)-frame windows."""

    kind = "video"
    RECIPE_ONLY = ("kind", "preset", "variant", "use_states")  # recipe keys that are not config fields
    FROM_DATA = ("image_size", "channels", "action_dim", "state_dim")

    def __init__(self, config: VideoPredictionConfig, settings: TrainSettings, use_states: bool):
        self.config, self.settings, self.use_states = config, settings, use_states
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
        data = dict(image_size=(H, W), channels=C, action_dim=shapes["actions"][-1],
                    state_dim=shapes["states"][-1] if use_states else 0)
        options = {k: v for k, v in model.items() if k in fields}
        try:
            config = getattr(VideoPredictionConfig, preset)(variant, **data, **options)
        except ForesightError as e:  # "VideoPredictionConfig.widths: expected ..." -> "key 'model.widths': ..."
            raise ForesightError(f"{source}: " + re.sub(r"^VideoPredictionConfig\.(\w+):", r"key 'model.\1':",
                                                        re.sub(r"^variant:", "key 'model.variant':", str(e)))) from None
        return cls(config, settings, use_states)

    def build(self) -> VideoPredictionModel:
        return VideoPredictionModel(self.config)

    def check_data(self, shapes: dict, where: str) -> None:
        """A dataset whose image or action size differs from the model's is an error, not a crash."""
        T1, H, W, C = shapes["frames"]
        cfg = self.config
        if (H, W, C) != (*cfg.image_size, cfg.channels):
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
        return model(frames, actions, states, num_context=s.context, sample_prob=prob, generator=g)

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
        out = model(frames[:, :s.context], actions, states, pixels=evaluation.delta_distribution(start, H, W),
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


LEARNERS = {"video": VideoLearner}


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
    recipe = recipes.from_dict(TrainRecipe, {k: v for k, v in resolved.items() if k in ("name", "data", "model", "train")},
                               source=str(run / "recipe.json"))
    learner = learner_from_resolved(resolved, recipe)
    model = learner.build()
    load_state_dict(model, ckpt / "model.pt")
    model.to(device).eval()
    return model, learner, resolved, json.loads((ckpt / "state.json").read_text())


def learner_from_resolved(resolved: dict, recipe: TrainRecipe):
    kind = resolved["model"].get("kind", "video")
    cls = LEARNERS[kind]
    if kind == "video":
        config = VideoPredictionConfig(**resolved["model_config"])
        return cls(config, recipe.train, bool(resolved["model"].get("use_states", False)))
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
    data = Path(recipe.data)
    if not data.is_absolute():
        data = (recipe_path.parent / data).resolve()
    return data, recipe_path.parent.resolve() / "runs" / recipe.name


def train(recipe: TrainRecipe, recipe_path: str | Path, resume: bool = False, run: Path | None = None,
          progress: bool = True) -> Path:
    """Train (or resume) the run of ``recipe``; return the run folder."""
    recipe_path = Path(recipe_path)
    rank, world = distributed()
    data_dir, default_run = resolve_paths(recipe, recipe_path)
    run = Path(run) if run else default_run
    s = recipe.train
    source = str(recipe_path)

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
    resolved = {**recipes.to_dict(recipe), "data": str(data_dir), "kind": learner.kind,
                "model_config": dataclasses.asdict(learner.config), "dataset": {"shapes": shapes,
                "env": store.manifest["env"], "point_names": store.manifest.get("point_names")}}

    device = pick_device(s.device, rank)
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
    net = LossModule(model)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    train_set = datasets.WindowDataset(data_dir, learner.window, "train", s.val_fraction, s.seed)
    val_set = datasets.WindowDataset(data_dir, learner.window, "val", s.val_fraction, s.seed, stride=learner.window)
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
                viz.write_gif(run / "samples" / f"step-{step:06d}.gif", learner.sample(model, next(iter(val_loader)), device))
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
