"""The training loop: loss falls, resume is exact, torchrun data-parallel agrees, errors are clear."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from foresight import collect, recipes, training
from foresight.checkpoints import load_state_dict
from foresight.errors import ForesightError
from foresight.learners import load_run
from foresight.learners.video import VideoLearner
from foresight.models.video import VideoPredictionConfig, VideoPredictionModel

DATA = """
name = "planar_seq"
env = "foresight/Planar-v0"
episodes = 24
steps = 7
seed = 11
shard_size = 12
[policy]
kind = "random"
repeat = 2
"""

RECIPE = """
name = "tiny"
data = "planar_seq"
[model]
kind = "video"
variant = "sna"
widths = [4, 4, 8, 8, 8, 8, 4]
transform_kernel = 3
[train]
steps = 6
batch_size = 4
lr = 3e-3
context = 2
horizon = 4
val_every = 3
val_batches = 1
sample_every = 6
checkpoint_every = 3
log_every = 1
loader_workers = 0
schedule_k = 0.0
"""


@pytest.fixture(scope="module")
def workdir(collected):
    return collected("train", DATA)


def recipe(root, name, *overrides):
    path = root / f"{name}.toml"
    path.write_text(RECIPE.replace('name = "tiny"', f'name = "{name}"'))
    return recipes.load(training.TrainRecipe, path, list(overrides)), path


def weights(run):
    return torch.load(Path(run) / "checkpoint" / "model.pt", weights_only=True)


def test_run_folder_holds_recipe_checkpoint_metrics_and_samples(workdir):
    r, path = recipe(workdir, "layout")
    run = training.train(r, path, progress=False)
    assert run == workdir / "runs" / "layout"
    resolved = json.loads((run / "recipe.json").read_text())
    assert resolved["data"] == str(workdir / "planar_seq") and resolved["model_config"]["image_size"] == [40, 40]
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == 6
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert any("val_psnr" in r for r in rows)
    assert (run / "samples" / "step-000006.gif").exists()
    model, learner, _, state = load_run(run)
    assert state["step"] == 6 and learner.config.widths == (4, 4, 8, 8, 8, 8, 4)
    with pytest.raises(ForesightError, match="already holds a checkpoint"):
        training.train(r, path, progress=False)


def test_training_lowers_the_loss(workdir):
    r, path = recipe(workdir, "learns", "train.steps=80", "train.val_every=80", "train.checkpoint_every=80",
                     "train.sample_every=80")
    run = training.train(r, path, progress=False)
    losses = [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)


def test_resume_continues_exactly(workdir):
    r, path = recipe(workdir, "straight")
    straight = training.train(r, path, progress=False)
    r3, path3 = recipe(workdir, "halves", "train.steps=3")
    halves = training.train(r3, path3, progress=False)
    assert json.loads((halves / "checkpoint" / "state.json").read_text())["step"] == 3
    r6, _ = recipe(workdir, "halves")
    training.train(r6, path3, resume=True, progress=False)
    a, b = weights(straight), weights(halves)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(workdir, monkeypatch):
    r, path = recipe(workdir, "nan", "train.checkpoint_every=1")
    real = VideoLearner.loss

    def poisoned(self, model, batch, step, device):
        terms = real(self, model, batch, step, device)
        return {**terms, "loss": terms["loss"] * float("nan")} if step == 4 else terms

    monkeypatch.setattr(VideoLearner, "loss", poisoned)
    with pytest.raises(ForesightError, match="diverged at step 4.*step 4"):
        training.train(r, path, progress=False)
    assert json.loads((workdir / "runs" / "nan" / "checkpoint" / "state.json").read_text())["step"] == 4


def test_mismatches_are_errors(workdir, tmp_path):
    r, path = recipe(workdir, "mismatch", "train.steps=1")
    run = training.train(r, path, progress=False)
    # a dataset with other images or actions than the model's
    other = tmp_path / "pp.toml"
    other.write_text('name = "pp"\nenv = "foresight/PointPush-v0"\nepisodes = 2\nsteps = 7\n[env_kwargs]\nimage_size = 32\n')
    collect.collect(recipes.load(collect.CollectRecipe, other), tmp_path / "pp", progress=False)
    model, learner, _, _ = load_run(run)
    from foresight import datasets
    with pytest.raises(ForesightError, match="images are 32x32x3, the model expects 40x40x1"):
        learner.check_data(datasets.read_manifest(tmp_path / "pp")["shapes"], "pp")
    # a checkpoint whose shapes differ: name them
    bigger = VideoPredictionModel(VideoPredictionConfig.small(
        "sna", image_size=(40, 40), channels=1, action_dim=2, widths=(16, 16, 32, 32, 64, 32, 16)))
    with pytest.raises(ForesightError, match=r"shapes differ \(enc0.weight: checkpoint \(4, 1, 5, 5\) vs model \(16, 1, 5, 5\)"):
        load_state_dict(bigger, run / "checkpoint" / "model.pt")
    # bad recipe values name the key
    with pytest.raises(ForesightError, match=r"key 'model.widths': expected a list of 7 \(channels of lstm1"):
        training.train(recipe(workdir, "badw", "model.widths=[1, 2]")[0], path, progress=False)
    with pytest.raises(ForesightError, match="'model.colour'"):
        training.train(recipe(workdir, "badk", "model.colour=1")[0], path, progress=False)
    with pytest.raises(ForesightError, match="'train.horizon'"):
        training.train(recipe(workdir, "badh", "train.horizon=9")[0], path, progress=False)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ForesightError, match=r"junk.pt: not a weights file \(.*\); not loaded"):
        load_state_dict(model, tmp_path / "junk.pt")


def test_torchrun_two_processes_match_one(workdir):
    """DDP with 2 gloo processes, each half of the global batch, gives one process's weights."""
    r, path = recipe(workdir, "single", "train.steps=3")
    single = training.train(r, path, progress=False)
    ddp_path = workdir / "ddp.toml"
    ddp_path.write_text(path.read_text().replace('name = "single"', 'name = "ddp"'))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                          "-m", "foresight", "train", str(ddp_path), "--set", "train.steps=3", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    state = json.loads((workdir / "runs" / "ddp" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["world_size"] == 2
    a, b = weights(single), weights(workdir / "runs" / "ddp")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst


def test_model_image_size_area_resizes_the_data(workdir):
    """model.image_size below the camera's: frames are area-averaged for training and evaluation."""
    r, path = recipe(workdir, "resized", "train.steps=2", "model.image_size=[16, 16]")
    run = training.train(r, path, progress=False)
    model, learner, resolved, _ = load_run(run)
    assert resolved["model_config"]["image_size"] == [16, 16] and learner.resize
    from foresight import datasets, evaluation
    learner.check_data(datasets.read_manifest(workdir / "planar_seq")["shapes"], "planar_seq")  # 40x40: accepted
    result = evaluation.evaluate_video(model, workdir / "planar_seq", 2, 4, 0.1, 0, False, progress=False)
    assert len(result["psnr"]) == 4
    with pytest.raises(ForesightError, match="key 'model.image_size'"):
        training.train(recipe(workdir, "badsize", "model.image_size=[15, 15]")[0], path, progress=False)


def test_lr_decay_anneals_the_last_steps_and_resumes_exactly(workdir):
    """lr is constant, then falls along a half cosine over the last lr_decay_steps; a run stopped before the
    decay and resumed with it matches one trained at once (the schedule is a function of the step)."""
    s = training.TrainSettings(steps=10, lr=1.0, lr_decay_steps=4)
    lrs = [training.learning_rate(s, t) for t in range(10)]
    assert lrs[:6] == [1.0] * 6 and lrs[6] == 1.0 and lrs[8] == pytest.approx(0.5) and 0 < lrs[9] < 0.2
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    r, path = recipe(workdir, "decayed", "train.lr_decay_steps=3")
    straight = training.train(r, path, progress=False)
    r3, path3 = recipe(workdir, "decayed_halves", "train.steps=3")
    halves = training.train(r3, path3, progress=False)
    r6, _ = recipe(workdir, "decayed_halves", "train.lr_decay_steps=3")
    training.train(r6, path3, resume=True, progress=False)
    a, b = weights(straight), weights(halves)
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = weights(training.train(*recipe(workdir, "undecayed"), progress=False))
    assert not all(torch.equal(a[k], plain[k]) for k in a)
    with pytest.raises(ForesightError, match=r"bad_decay.toml: key 'train.lr_decay_steps': expected at most "
                                             r"train.steps = 6, got 7"):
        recipe(workdir, "bad_decay", "train.lr_decay_steps=7")  # a rule of the recipe: checked as it is read


def test_init_starts_from_another_runs_weights(workdir):
    """train.init loads a run's weights and trains on with a fresh optimizer: at lr 0 they stay the same."""
    base = training.train(*recipe(workdir, "base", "train.steps=2"), progress=False)
    frozen = training.train(*recipe(workdir, "tuned", "train.steps=1", "train.lr=0.0", "train.init='runs/base'"),
                            progress=False)
    a, b = weights(base), weights(frozen)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = weights(training.train(*recipe(workdir, "fresh", "train.steps=1", "train.lr=0.0"), progress=False))
    assert not all(torch.equal(a[k], fresh[k]) for k in a)
    with pytest.raises(ForesightError, match=r"key 'train.init': .*nowhere is not a training run"):
        training.train(*recipe(workdir, "noinit", "train.init='runs/nowhere'"), progress=False)


def test_data_mix_joins_more_datasets_to_the_training_windows(workdir, tmp_path, monkeypatch):
    """data_mix: the mixed dataset's training episodes are batched with data's; a mismatched one is an error."""
    other = workdir / "more.toml"
    other.write_text(DATA.replace('name = "planar_seq"', 'name = "planar_more"').replace("seed = 11", "seed = 12"))
    collect.collect(recipes.load(collect.CollectRecipe, other), workdir / "planar_more", progress=False)
    sizes = []
    real = training.StepBatches.__init__

    def spy(self, n, *args, **kwargs):
        sizes.append(n)
        real(self, n, *args, **kwargs)

    monkeypatch.setattr(training.StepBatches, "__init__", spy)
    training.train(*recipe(workdir, "alone", "train.steps=1"), progress=False)
    run = training.train(*recipe(workdir, "mixed", "train.steps=1", "data_mix=['planar_more']"), progress=False)
    assert sizes[1] == 2 * sizes[0]  # same episode count and length: twice the windows
    assert json.loads((run / "recipe.json").read_text())["data_mix"] == [str(workdir / "planar_more")]
    pp = tmp_path / "pp.toml"
    pp.write_text('name = "pp"\nenv = "foresight/PointPush-v0"\nepisodes = 2\nsteps = 7\n[env_kwargs]\nimage_size = 32\n')
    collect.collect(recipes.load(collect.CollectRecipe, pp), tmp_path / "pp", progress=False)
    with pytest.raises(ForesightError, match=r"key 'data_mix': .*pp: images are 32x32x3, the model expects 40x40x1"):
        training.train(*recipe(workdir, "badmix", f"data_mix=['{tmp_path / 'pp'}']"), progress=False)


def test_track_agent_adds_the_pushers_pixel_to_the_tracked_points(workdir, tmp_path, monkeypatch):
    """train.track_agent: windows carry the pusher's pixel after the objects', scaled like them, and the
    loss tracks both; without a tracking weight, or on an environment with no agent pixel, a clear error."""
    pp = tmp_path / "pp.toml"
    pp.write_text('name = "pp"\nenv = "foresight/PointPush-v0"\nepisodes = 4\nsteps = 7\n[env_kwargs]\nimage_size = 32\n')
    collect.collect(recipes.load(collect.CollectRecipe, pp), tmp_path / "pp", progress=False)
    from foresight import datasets, envs, pixels
    from foresight.envs.point_push import pusher_pixels
    plain = datasets.WindowDataset(tmp_path / "pp", 4, "all", image_size=(16, 16))
    tracked = datasets.WindowDataset(tmp_path / "pp", 4, "all", image_size=(16, 16),
                                     agent_points=envs.agent_pixels("foresight/PointPush-v0", 32, 32))
    a, b = plain[3], tracked[3]
    assert b["points"].shape == (4, 2, 2)
    np.testing.assert_allclose(b["points"][:, :1], a["points"])
    np.testing.assert_allclose(b["points"][:, 1:], pixels.scale_points(pusher_pixels(a["states"], 32, 32),
                                                                          (32, 32), (16, 16)), atol=1e-5)
    seen = []
    real = VideoLearner.loss

    def spy(self, model, batch, step, device):
        seen.append(tuple(batch["points"].shape))
        return real(self, model, batch, step, device)

    monkeypatch.setattr(VideoLearner, "loss", spy)
    rec = tmp_path / "tiny.toml"
    rec.write_text(RECIPE.replace('data = "planar_seq"', 'data = "pp"').replace("horizon = 4", "horizon = 4\n"
                   "track_weight = 0.01\ntrack_agent = true"))
    run = training.train(recipes.load(training.TrainRecipe, rec, ["train.steps=1"]), rec, progress=False)
    assert seen and seen[0][2] == 2 and (run / "checkpoint" / "model.pt").exists()
    with pytest.raises(ForesightError, match=r"key 'train.track_agent': expected train.track_weight > 0"):
        recipes.load(training.TrainRecipe, rec, ["name='untracked'", "train.track_weight=0.0"])
    with pytest.raises(ForesightError, match=r"key 'train.track_agent': environment 'foresight/Planar-v0' offers no agent"):
        training.train(*recipe(workdir, "noagent", "train.track_weight=0.01", "train.track_agent=true"), progress=False)


def test_every_learner_follows_the_protocol():
    """The loop, `foresight eval` and the planners see a learner only through learners.Learner."""
    import inspect

    from foresight.learners import LEARNERS, Learner

    methods = {n: m for n, m in vars(Learner).items() if not n.startswith("_") and callable(getattr(Learner, n))}
    assert {"from_recipe", "from_resolved", "build", "check_data", "data", "loss", "validate", "sample", "evaluate",
            "describe", "finish"} <= set(methods)
    for kind, cls in LEARNERS.items():
        assert cls.kind == kind
        for name in methods:
            wanted = list(inspect.signature(getattr(Learner, name)).parameters)
            got = list(inspect.signature(getattr(cls, name)).parameters)
            assert got[:len(wanted)] == wanted, (kind, name, got, wanted)


def test_evaluation_gives_each_objects_tracking_ratio(workdir):
    """tracking_ratio_per_object: a model whose pixels stay where they started scores exactly the static baseline
    (1.0) for every object; with one object the per-object ratio is the overall one."""
    from foresight import evaluation
    from foresight.models.video import VideoPrediction

    r, path = recipe(workdir, "per_object", "train.steps=2")
    model = load_run(training.train(r, path, progress=False))[0]
    result = evaluation.evaluate_video(model, workdir / "planar_seq", 2, 4, 0.1, 0, False, moved_px=0.5,
                                       progress=False)
    assert len(result["tracking_ratio_per_object"]) == 1
    assert result["tracking_ratio_per_object"][0] == pytest.approx(result["tracking_ratio"])

    class Still(torch.nn.Module):  # predicts copies of the last context frame; the pixels never move
        config = model.config

        def forward(self, frames, actions, states=None, pixels=None, num_context=2):
            T = actions.shape[1] - num_context + 1
            return VideoPrediction(frames[:, num_context - 1:num_context].expand(-1, actions.shape[1], -1, -1, -1),
                                   None, pixels[:, None].expand(-1, T, -1, -1, -1))

    still = evaluation.evaluate_video(Still(), workdir / "planar_seq", 2, 4, 0.1, 0, False, moved_px=0.5,
                                      progress=False)
    assert still["tracking_pairs"] > 0 and still["tracking_ratio_per_object"] == [pytest.approx(1.0)]
