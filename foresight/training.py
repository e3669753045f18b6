"""One training loop for every model: recipes, resume, data-parallel (torchrun), progress, samples.

What differs between model families lives in a *learner* (``foresight.learners``: how to build the model
from a dataset, the windows it trains on, its loss on a batch, its validation metrics, its sample pictures,
what it adds to a finished run); the loop below knows nothing else about them. All randomness is a function
of ``(seed, step)``: the batches of step ``s``, the scheduled-sampling draws of step ``s``; so a run resumed
from a checkpoint continues exactly as the uninterrupted run would have.

Run folder (``<recipe folder>/runs/<name>/``)::

    recipe.json        the fully resolved recipe (absolute dataset path, model config)
    checkpoint/        model.pt, optimizer.pt (state dicts, loaded with weights_only=True), state.json
                       (``foresight.checkpoints``)
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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from foresight import datasets, evaluation, recipes, viz
from foresight.checkpoints import checkpoint_dir, load_state_dict, read_weights, save_checkpoint
from foresight.errors import ForesightError
from foresight.learners import TrainSettings, learner_from_resolved, make_learner
from foresight.recipes import spec


@dataclass(frozen=True)
class TrainRecipe:
    name: str = spec(help="run name; the run lands in <recipe folder>/runs/<name>/")
    data: str = spec(help="dataset folder, relative to the recipe file")
    data_mix: tuple[str, ...] = spec((), help="more dataset folders (relative to the recipe) whose training "
                                              "episodes join data's; validation stays on data's")
    model: dict = spec({}, help="'kind' plus the model's options")
    train: TrainSettings = spec(TrainSettings())


class LossModule(torch.nn.Module):
    """Its forward is the model's ``loss``: DistributedDataParallel synchronises the gradients of
    what a wrapped module's forward computes, so the loss must run through one."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return self.model.loss(*args, **kwargs)


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


def data_facts(manifest: dict) -> dict:
    """What a learner reads of a dataset: its shapes and its action bounds."""
    return {**manifest["shapes"], "action_space": manifest.get("action_space")}


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
    facts = data_facts(store.manifest)
    ckpt = checkpoint_dir(run)
    if ckpt is not None and not resume:
        raise ForesightError(f"{run}: already holds a checkpoint; pass --resume to continue it, or "
                             f"--set name=<other> for a new run")
    if resume and ckpt is None:
        raise ForesightError(f"{run}: has no checkpoint to resume from")
    learner = make_learner(recipe.model, s, facts, source)
    if resume:  # the stored config wins; a changed dataset is an error, not a crash
        resolved = json.loads((run / "recipe.json").read_text())
        learner = learner_from_resolved(resolved, s, str(run / "recipe.json"))
    learner.check_data(facts, str(data_dir))
    mix_dirs = [relative_to(recipe_path, d) for d in recipe.data_mix]
    for d in mix_dirs:
        try:
            mix = datasets.read_manifest(d)
        except ForesightError as e:
            raise ForesightError(f"{source}: key 'data_mix': {e}") from None
        learner.check_data(data_facts(mix), f"{source}: key 'data_mix': {d}")
    for d in (data_dir, *mix_dirs):  # every shard as the manifest says: a damaged dataset does not train
        datasets.EpisodeStore(d).check_shards()
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
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    step = 0
    if resume:
        load_state_dict(model, ckpt / "model.pt")
        try:
            optimizer.load_state_dict(read_weights(ckpt / "optimizer.pt", map_location=device))
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise ForesightError(f"{ckpt / 'optimizer.pt'}: cannot restore the optimizer ({e})") from None
        step = json.loads((ckpt / "state.json").read_text())["step"]
    elif s.init:
        init = relative_to(recipe_path, s.init)
        start = checkpoint_dir(init)
        if start is None:
            raise ForesightError(f"{source}: key 'train.init': {init} is not a training run with a checkpoint")
        if hasattr(learner, "init_weights"):  # a learner that starts from other runs too (stochastic from video)
            learner.init_weights(model, init, f"{source}: key 'train.init'")
        else:
            load_state_dict(model, start / "model.pt")
    net = LossModule(model)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    train_sets, val_set = learner.data(data_dir, mix_dirs, source)
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
                shown = "val_psnr" if "val_psnr" in metrics else "val_loss"  # PC3 has no decoder, so no PSNR
                postfix[shown] = f"{metrics[shown]:.4g}"
            if step % s.sample_every == 0 or step == s.steps:
                model.eval()
                picture = learner.sample(model, next(iter(val_loader)), device)
                _write_picture(run / "samples" / f"step-{step:06d}", picture)
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
    if writer:  # what the trained model adds to its run (E2C on the planar system: the latent map)
        learner.finish(model, run, resolved, device)
    if world > 1:
        dist.barrier()
    return run


def _write_picture(stem: Path, picture) -> None:
    """A sample: one image (H, W, 3) as <stem>.png, or GIF frames as <stem>.gif."""
    if isinstance(picture, np.ndarray) and picture.ndim == 3:
        viz.write_png(stem.with_suffix(".png"), picture)
    else:
        viz.write_gif(stem.with_suffix(".gif"), picture)


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
