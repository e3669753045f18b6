"""The latent-model learner: Embed to Control, its VAE baseline, and its successors PCC and PC3 (one family:
images to a latent space whose transition a planner linearises), and the planar system's latent map."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from foresight import datasets, evaluation, recipes, viz
from foresight.errors import ForesightError
from foresight.learners.base import TrainSettings, model_table
from foresight.models import e2c, pc3, pcc
from foresight.recipes import spec

PLANAR = "foresight/Planar-v0"  # the system whose latent map the E2C paper draws
STACK = {"planar": 1, "pendulum": 2, "point_push": 1, "cartpole": 2}  # frames per observation of each preset
VARIANTS = {  # model.variant: (model class, its config, the presets it has)
    "e2c": (e2c.E2C, e2c.E2CConfig, e2c.PRESETS),
    "vae": (e2c.E2C, e2c.E2CConfig, e2c.PRESETS),
    "pcc": (pcc.PCC, pcc.PCCConfig, pcc.PRESETS),
    "pc3": (pc3.PC3, pc3.PC3Config, pc3.PRESETS),
}


@dataclass(frozen=True)
class E2CKeys:
    """The [model] table's keys that are not config fields."""

    preset: str = spec(choices=tuple(STACK), help="'planar', 'pendulum', 'cartpole' (the papers' systems), or "
                                                  "'point_push' (E2C and the VAE only)")
    kind: str = "e2c"
    variant: str = spec("e2c", choices=tuple(VARIANTS), help="'e2c', the 'vae' baseline, 'pcc' or 'pc3'")
    stack: int | None = spec(None, min=1, help="frames per observation (default: the preset's)")


class E2CLearner:
    """Trains Embed to Control (or its VAE baseline, PCC or PC3) on (x_t, u_t, x_{t+1}) triples cut from episodes.

    An observation is ``stack`` consecutive frames stacked along the channels (the pendulum's two frames,
    which show its velocity): a window of ``stack + 1`` frames gives x_t = frames[0:stack],
    u_t = actions[stack - 1] and x_{t+1} = frames[1:stack + 1].
    """

    kind = "e2c"

    def __init__(self, config, settings: TrainSettings, stack: int):
        self.config, self.settings, self.stack = config, settings, stack
        self.window = stack + 1

    @classmethod
    def from_recipe(cls, table: dict, settings: TrainSettings, shapes: dict, source: str) -> E2CLearner:
        variant = table.get("variant", "e2c")
        if variant not in VARIANTS:
            raise ForesightError(f"{source}: key 'model.variant': expected one of {', '.join(VARIANTS)}, got {variant!r}")
        _, config_class, presets = VARIANTS[variant]
        keys, options = model_table(table, E2CKeys, config_class, source, reserved=("model",))
        if keys.preset not in presets:
            raise ForesightError(f"{source}: key 'model.preset': {variant} has the presets {', '.join(presets)}, "
                                 f"got {keys.preset!r}")
        stack = keys.stack if keys.stack is not None else STACK[keys.preset]
        if shapes["frames"][0] < stack + 1:
            raise ForesightError(f"{source}: key 'model.stack': {stack} stacked frames and the next need "
                                 f"{stack + 1} frames, the dataset's episodes have {shapes['frames'][0]}")
        preset = presets[keys.preset]
        if "image_shape" not in options:  # the preset's frame size, with its channels per frame times `stack`
            c, h, w = preset["image_shape"]
            options["image_shape"] = (c // STACK[keys.preset] * stack, h, w)
        config = recipes.from_dict(config_class, {**preset, "model": keys.variant, **options}, source, prefix="model.")
        if config.image_shape[0] % stack:
            raise ForesightError(f"{source}: key 'model.stack': {stack} frames do not divide the model's "
                                 f"{config.image_shape[0]} image channels")
        return cls(config, settings, stack)

    @classmethod
    def from_resolved(cls, resolved: dict, settings: TrainSettings, source: str = "recipe.json") -> E2CLearner:
        table = resolved["model"]
        config_class = VARIANTS[resolved["model_config"].get("model", "e2c")][1]
        config = recipes.from_dict(config_class, resolved["model_config"], source, prefix="model_config.")
        return cls(config, settings, table.get("stack", STACK[table["preset"]]))

    def build(self):
        return VARIANTS[self.config.model][0](self.config)

    def windows(self, root, split: str, stride: int = 1) -> datasets.WindowDataset:
        """The split's windows of a dataset folder, held in memory. Reading a window from HDF5 costs about
        1.5 ms; an E2C step on a planar batch of 128 takes ~35 ms, so per-item reads would more than double
        training time."""
        s = self.settings
        return datasets.WindowDataset(root, self.window, split, s.val_fraction, s.seed, stride, in_memory=True)

    def data(self, data_dir: Path, mix_dirs: list[Path], source: str):
        return [self.windows(d, "train") for d in (data_dir, *mix_dirs)], self.windows(data_dir, "val", self.window)

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
        """The loss, and how well the predicted next latent mean lands on the next frame's encoding beside
        standing still (val_latent_error_over_copy: 1 = no better than predicting no motion). Models with a
        decoder add the reconstruction PSNR of x_t from its mean latent and the PSNR of x_{t+1} decoded from the
        predicted mean, beside copying x_t."""
        figures = {"recon": [], "pred": [], "copy": []}
        loss, error, still, n = 0.0, 0.0, 0.0, 0
        decodes = hasattr(model, "decode")
        torch.manual_seed(self.settings.seed)
        for batch in batches:
            x_t, u_t, x_next = self.triples(batch, device)
            mu, mu_next = model.encode(x_t).mean, model.encode(x_next).mean
            pred = model.transition(mu, u_t).mean
            error += float(((pred - mu_next) ** 2).sum())
            still += float(((mu - mu_next) ** 2).sum())
            loss += float(model.loss(x_t, u_t, x_next)["loss"]) * len(x_t)
            n += len(x_t)
            if decodes:
                figures["recon"].append(evaluation.psnr(model.decode(mu)[:, None], x_t[:, None]))
                figures["pred"].append(evaluation.psnr(model.decode(pred)[:, None], x_next[:, None]))
                figures["copy"].append(evaluation.psnr(x_t[:, None], x_next[:, None]))
        result = {"val_loss": loss / n, "val_latent_error_over_copy": error / max(still, 1e-12)}
        if decodes:
            result = {"val_psnr": float(torch.cat(figures["recon"]).mean()),
                      "val_psnr_next": float(torch.cat(figures["pred"]).mean()),
                      "val_psnr_copy": float(torch.cat(figures["copy"]).mean()), **result}
        return result

    @torch.inference_mode()
    def sample(self, model, batch, device, n: int = 8) -> np.ndarray:
        """One picture: rows = transitions; columns = x_t | its reconstruction | x_{t+1} | x_{t+1} decoded from
        the predicted next latent (stacked observations show their last frame). A model without a decoder (PC3)
        shows x_t | x_{t+1} | the frame of the batch whose encoding lies nearest the predicted next latent."""
        pick = torch.linspace(0, len(batch["frames"]) - 1, min(n, len(batch["frames"]))).long()  # spread over episodes
        x_t, u_t, x_next = self.triples({k: v[pick] for k, v in batch.items()}, device)
        mu = model.encode(x_t).mean
        c = self.config.image_shape[0] // self.stack
        to_u8 = lambda x: (x[:, -c:].clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).cpu().numpy()  # noqa: E731
        if hasattr(model, "decode"):
            cols = [x_t, model.decode(mu), x_next, model.decode(model.transition(mu, u_t).mean)]
        else:
            everything, all_u, all_next = self.triples(batch, device)
            bank = torch.cat([everything, all_next])  # candidate frames and their encodings
            nearest = torch.cdist(model.transition(mu, u_t).mean, model.encode(bank).mean).argmin(-1)
            cols = [x_t, x_next, bank[nearest]]
        cols = [to_u8(x) for x in cols]
        scale = max(1, 160 // self.config.image_shape[1])
        return viz.grid([[viz.enlarge(col[b], scale) for col in cols] for b in range(len(x_t))])

    def draws_map(self, env: dict | None) -> bool:
        """The latent map is drawn for single-frame observations of the planar system."""
        return (env or {}).get("id") == PLANAR and self.stack == 1

    def evaluate(self, model, data_dir, out_dir: Path, max_windows: int | None = None, run=None,
                 step: int | None = None, device="cpu") -> dict:
        """`validate`'s PSNRs over the whole validation split (all windows when it is empty), written to
        <out_dir>/eval.json (and the latent map, when the data is the planar system's)."""
        windows = self.windows(data_dir, "val", self.window)
        if len(windows) == 0:
            windows = self.windows(data_dir, "all", self.window)
        if max_windows is not None:
            windows.items = windows.items[:max_windows]
        batches = torch.utils.data.DataLoader(windows, batch_size=256)
        result = {**self.validate(model, batches, device), "windows": len(windows), "data": str(data_dir)}
        if self.draws_map(datasets.read_manifest(data_dir)["env"]):
            result["map_rank_correlation"] = write_planar_latent_map(model, Path(out_dir) / "latent_map.png",
                                                                     device=device)
        evaluation.write_json(Path(out_dir) / "eval.json", result)
        return result

    def describe(self, result: dict, out_dir: Path) -> str:
        psnr = (f"PSNR reconstruction {result['val_psnr']:.2f} dB, predicted next frame "
                f"{result['val_psnr_next']:.2f} dB; " if "val_psnr" in result else "")
        return (f"{psnr}predicted next latent's squared error {result['val_latent_error_over_copy']:.3f}x standing "
                f"still's\nwrote {Path(out_dir) / 'eval.json'}")

    def finish(self, model, run: Path, resolved: dict, device) -> None:
        """After training on the planar system: the E2C paper's latent map, written to <run>/latent_map.png, and
        its rank correlation to <run>/latent_map.json."""
        if self.draws_map(resolved.get("dataset", {}).get("env")):
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
