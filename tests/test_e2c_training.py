"""E2C through the training loop: (x_t, u_t, x_{t+1}) triples, stacked frames, the loss falling, exact resume,
samples and the latent map, load_run, and clear errors for data or recipes that do not fit the preset."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from foresight import collect, datasets, recipes, training
from foresight.errors import ForesightError
from foresight.learners import load_run
from foresight.learners.e2c import map_rank_correlation
from foresight.models.e2c import E2C

DATA = """
name = "{name}"
env = "{env}"
episodes = {episodes}
steps = {steps}
seed = 5
shard_size = 40
[policy]
kind = "random"
repeat = 1
smoothing = 0.0
"""

RECIPE = """
name = "tiny"
data = "planar"
[model]
kind = "e2c"
preset = "planar"
variant = "e2c"
encoder_widths = [64, 64]
decoder_widths = [64, 64]
transition_widths = [32]
[train]
steps = 6
batch_size = 32
lr = 2e-3
val_every = 3
val_batches = 1
sample_every = 6
checkpoint_every = 3
log_every = 1
loader_workers = 0
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2c")
    for name, env, episodes, steps in (("planar", "foresight/Planar-v0", 80, 2), ("pendulum", "foresight/Pendulum-v0", 40, 3)):
        (root / f"{name}.toml").write_text(DATA.format(name=name, env=env, episodes=episodes, steps=steps))
        collect.collect(recipes.load(collect.CollectRecipe, root / f"{name}.toml"), root / name, progress=False)
    return root


def recipe(root, name, *overrides):
    path = root / f"{name}.toml"
    path.write_text(RECIPE.replace('name = "tiny"', f'name = "{name}"'))
    return recipes.load(training.TrainRecipe, path, list(overrides)), path


def losses(run):
    return [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def test_tiny_e2c_learns_and_its_run_holds_samples_and_the_latent_map(workdir):
    r, path = recipe(workdir, "learns", "train.steps=150", "train.val_every=150", "train.checkpoint_every=150",
                     "train.sample_every=150", "train.log_every=5")
    run = training.train(r, path, progress=False)
    values = losses(run)
    first, last = np.mean(values[:3]), np.mean(values[-3:])
    assert last < 0.8 * first, (first, last)
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    val = [row for row in rows if "val_psnr" in row][-1]
    assert {"val_psnr", "val_psnr_next", "val_psnr_copy", "val_loss"} <= set(val)
    assert (run / "samples" / "step-000150.png").exists() and not list((run / "samples").glob("*.gif"))
    assert (run / "latent_map.png").stat().st_size > 10_000
    assert -1 <= json.loads((run / "latent_map.json").read_text())["map_rank_correlation"] <= 1
    model, learner, resolved, state = load_run(run)
    assert isinstance(model, E2C) and learner.kind == "e2c" and state["step"] == 150
    assert model.config.image_shape == (1, 40, 40) and model.config.encoder_widths == (64, 64)
    assert resolved["kind"] == "e2c" and learner.stack == 1 and learner.window == 2
    report = learner.evaluate(model, workdir / "planar", workdir / "eval")  # what `foresight eval` can call
    assert report["val_psnr"] > 15 and report["windows"] == len(learner.windows(workdir / "planar", "val", 2))
    assert json.loads((workdir / "eval" / "eval.json").read_text())["windows"] == report["windows"]
    assert (workdir / "eval" / "latent_map.png").exists() and -1 <= report["map_rank_correlation"] <= 1
    from foresight.cli import main
    assert main(["eval", str(run), "--out", str(workdir / "cli_eval")]) == 0  # the command dispatches to it
    assert json.loads((workdir / "cli_eval" / "eval.json").read_text())["val_psnr"] == pytest.approx(report["val_psnr"])


def test_map_rank_correlation_scores_a_faithful_map_above_a_folded_one():
    from foresight.envs import planar

    grid = np.arange(1.5, 38.6, 1.0)
    positions = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    positions = positions[~planar.collides(positions)]
    rotated = positions @ np.array([[0.6, -0.8], [0.8, 0.6]]) * 0.1 + 3.0  # a rigid copy: same distances' order
    folded = np.abs(positions - 20.0)  # the four quadrants laid on top of each other
    noise = np.random.default_rng(1).normal(size=positions.shape)
    assert map_rank_correlation(positions, rotated) == pytest.approx(1.0, abs=1e-3)  # grid ties
    assert map_rank_correlation(positions, folded) < 0.8
    assert abs(map_rank_correlation(positions, noise)) < 0.05


def test_pendulum_observations_stack_two_frames(workdir):
    r, path = recipe(workdir, "pend", "data='pendulum'", "model.preset='pendulum'", "model.variant='vae'",
                     "train.steps=2", "train.batch_size=8", "train.val_every=2", "train.checkpoint_every=2",
                     "train.sample_every=2")
    run = training.train(r, path, progress=False)
    model, learner, _, _ = load_run(run)
    assert model.config.image_shape == (2, 48, 48) and model.config.model == "vae" and learner.window == 3
    # a window of 3 frames gives x_t = frames 0-1, u_t = action 1, x_{t+1} = frames 1-2
    windows = learner.windows(workdir / "pendulum", "train")
    item = windows[0]
    batch = {k: torch.as_tensor(np.asarray(v))[None] for k, v in item.items()}
    x_t, u_t, x_next = learner.triples(batch, "cpu")
    assert x_t.shape == (1, 2, 48, 48) and x_next.shape == (1, 2, 48, 48) and u_t.shape == (1, 1)
    torch.testing.assert_close(x_t[0, 1], x_next[0, 0])
    torch.testing.assert_close(u_t[0], torch.as_tensor(item["actions"][1]))
    # the in-memory windows are the store's windows, item for item
    assert windows.memory is not None
    stored = datasets.WindowDataset(workdir / "pendulum", 3, "train")
    assert stored.memory is None and len(stored) == len(windows)
    for n in (0, 1, len(stored) - 1):
        a, b = windows[n], stored[n]
        assert a.keys() == b.keys() == {"frames", "actions", "states", "points", "episode", "start"}
        for key in a:
            assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype and np.array_equal(a[key], b[key]), key
    assert item["frames"].dtype == np.float32 and item["frames"].max() <= 1.0


def test_resume_continues_exactly(workdir):
    r, path = recipe(workdir, "straight")
    straight = training.train(r, path, progress=False)
    r3, path3 = recipe(workdir, "halves", "train.steps=3")
    halves = training.train(r3, path3, progress=False)
    r6, _ = recipe(workdir, "halves")
    training.train(r6, path3, resume=True, progress=False)
    a = torch.load(Path(straight) / "checkpoint" / "model.pt", weights_only=True)
    b = torch.load(Path(halves) / "checkpoint" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_data_that_does_not_fit_the_preset_is_an_error(workdir):
    r, path = recipe(workdir, "wrongimg", "data='pendulum'")
    with pytest.raises(ForesightError, match="images are 48x48x1, the model expects 40x40x1"):
        training.train(r, path, progress=False)
    r, path = recipe(workdir, "wrongact", "model.action_dim=3")
    with pytest.raises(ForesightError, match="actions have 2 dimensions, the model expects 3"):
        training.train(r, path, progress=False)
    r, path = recipe(workdir, "wrongstack", "model.stack=3")
    with pytest.raises(ForesightError, match="key 'model.stack': 3 stacked frames and the next need 4 frames"):
        training.train(r, path, progress=False)
    r, path = recipe(workdir, "wrongdivide", "data='pendulum'", "model.preset='pendulum'", "model.image_shape=[3, 48, 48]")
    with pytest.raises(ForesightError, match="wrongdivide.toml: key 'model.stack': 2 frames do not divide the model's 3"):
        training.train(r, path, progress=False)


@pytest.mark.parametrize("override, message", [
    ("model.preset='acrobot'", r"key 'model.preset': expected one of \['planar', 'pendulum', 'point_push', 'cartpole'\]"),
    ("model.variant='rnn'", r"key 'model.variant': expected one of e2c, vae, pcc, pc3, got 'rnn'"),
    ("model.latent_dim=0", "key 'model.latent_dim': expected a value >= 1, got 0"),
    ("model.encoder_widths=[64, 0]", r"key 'model.encoder_widths\[1\]': expected a value >= 1"),
    ("model.encoder='conv'", "key 'model.image_shape': expected H and W multiples of 16"),
    ("model.model='vae'", "unknown key 'model.model'"),
    ("model.stack=0", "key 'model.stack': expected a value >= 1, got 0"),
    ("model.stack=true", "key 'model.stack': expected an integer"),
    ("model.kind='lstm'", "key 'model.kind': expected one of"),
])
def test_bad_recipes_name_the_key(workdir, override, message):
    r, path = recipe(workdir, "bad", override)
    with pytest.raises(ForesightError, match=message):
        training.train(r, path, progress=False)
