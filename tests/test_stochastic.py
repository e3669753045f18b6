"""The stochastic video model (SV2P, foresight.models.stochastic) and its learner: the KL term, learning, starting
from a deterministic model, latents, recipe errors, and a tiny end-to-end run."""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from foresight import cli, collect, recipes, training
from foresight.errors import ForesightError
from foresight.learners import load_run
from foresight.learners.stochastic import StochasticVideoLearner
from foresight.models.stochastic import StochasticVideoConfig, StochasticVideoModel, init_from_video, kl_divergence
from foresight.models.video import VideoPredictionConfig, VideoPredictionModel

REPO = Path(__file__).resolve().parents[1]
TINY = dict(widths=(4, 4, 8, 8, 8, 8, 4), lstm_kernel=3, num_kernels=3, transform_kernel=3)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_config(variant="cdna", window=6, latent_dim=3, state_dim=0, **kw):
    return StochasticVideoConfig.small(variant, image_size=(16, 16), channels=3, action_dim=2, state_dim=state_dim,
                                       window=window, latent_dim=latent_dim, posterior_widths=(8, 8), **{**TINY, **kw})


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return StochasticVideoModel(tiny_config(**kw))


def deterministic_twin(config: StochasticVideoConfig, seed=1) -> VideoPredictionModel:
    """The deterministic model a stochastic one with this config starts from (action_dim A, no latent)."""
    torch.manual_seed(seed)
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(VideoPredictionConfig)}
    return VideoPredictionModel(VideoPredictionConfig(**fields))


def batch(B=4, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T + 1, 3, 16, 16, generator=g), torch.randn(B, T, 2, generator=g)


# ---------------------------------------------------------------------------- the latent


def test_kl_is_zero_at_the_prior_and_agrees_with_torch_distributions():
    B, L = 5, 4
    zero = torch.zeros(B, L)
    assert torch.equal(kl_divergence(zero, zero), torch.zeros(B))
    mean, logvar = torch.randn(B, L), torch.randn(B, L)
    prior_mean, prior_logvar = torch.randn(B, L), torch.randn(B, L)
    assert torch.equal(kl_divergence(mean, logvar, mean, logvar), torch.zeros(B))
    normal = torch.distributions.Normal
    for pm, plv in ((None, None), (prior_mean, prior_logvar)):
        p = normal(zero if pm is None else pm, torch.ones(B, L) if plv is None else (0.5 * plv).exp())
        want = torch.distributions.kl_divergence(normal(mean, (0.5 * logvar).exp()), p).sum(-1)
        got = kl_divergence(mean, logvar, pm, plv)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert (got > 0).all()


def test_posterior_starts_as_the_prior_and_sample_latents_repeat_with_a_seed():
    model = tiny_model()
    frames, _ = batch()
    mean, logvar = model.posterior(frames)
    assert mean.shape == logvar.shape == (4, 3) and not mean.any() and not logvar.any()
    a = model.sample_latents(6, torch.Generator().manual_seed(7))
    b = model.sample_latents(6, torch.Generator().manual_seed(7))
    c = model.sample_latents(6, torch.Generator().manual_seed(8))
    assert a.shape == (6, 3) and torch.equal(a, b) and not torch.equal(a, c)


def test_given_latents_forward_is_deterministic_and_latents_change_the_prediction():
    model = tiny_model().eval()
    frames, actions = batch()
    z = model.sample_latents(4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        one = model(frames[:, :2], actions, latent=z).frames
        again = model(frames[:, :2], actions, latent=z.clone()).frames
        other = model(frames[:, :2], actions, latent=-z).frames
        # no latent: drawn from the prior with the generator, so a seeded generator repeats the rollout
        drawn = [model(frames[:, :2], actions, generator=torch.Generator().manual_seed(3)).frames for _ in range(2)]
        prior = model(frames[:, :2], actions, latent=model.sample_latents(4, torch.Generator().manual_seed(3))).frames
    assert one.shape == (4, 5, 3, 16, 16)
    assert torch.equal(one, again)
    assert (one - other).abs().max() > 1e-4  # enc3's weights for z are random in a fresh model
    assert torch.equal(drawn[0], drawn[1]) and torch.equal(drawn[0], prior)


def test_input_errors_are_one_clear_line():
    model = tiny_model()
    frames, actions = batch()
    with pytest.raises(ForesightError, match=r"actions: expected shape \(B, T, 2\) \(action_dim=2\), got \(4, 5, 5\)"):
        model(frames, torch.randn(4, 5, 5))
    with pytest.raises(ForesightError, match=r"latent: expected shape \(4, 3\) .*got \(4, 2\)"):
        model(frames, actions, latent=torch.zeros(4, 2))
    with pytest.raises(ForesightError, match="the posterior reads windows of 6 frames"):
        model.loss(frames[:, :5], actions[:, :4])


# ---------------------------------------------------------------------------- learning


def moving_batch(B=4, T=5, seed=1):
    """Smooth images that move one pixel a step, to the right or down as the action says."""
    g = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.interpolate(torch.rand(B, 3, 4, 4, generator=g), size=(16, 16), mode="bilinear")
    right = torch.rand(B, generator=g) < 0.5
    frames = torch.stack([torch.stack([image[b].roll(t, 2 if right[b] else 1) for t in range(T + 1)])
                          for b in range(B)])
    actions = torch.stack([torch.tensor([0.0, 1.0]) if r else torch.tensor([1.0, 0.0]) for r in right])
    return frames, actions[:, None].expand(B, T, 2).contiguous()


def test_loss_falls_on_a_fixed_batch():
    model = tiny_model()
    frames, actions = moving_batch()
    points = torch.full((4, 6, 1, 2), 7.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses, kls = [], []
    for step in range(30):
        terms = model.loss(frames, actions, generator=torch.Generator().manual_seed(step), points=points,
                           track_weight=0.01, kl_weight=1e-2)
        assert {"loss", "image_mse", "track_px", "kl"} <= set(terms)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["loss"].detach()))
        kls.append(float(terms["kl"].detach()))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    assert kls[0] == 0.0 and max(kls) > 0  # q starts as the prior, then learns something of the frames


def test_loss_is_reproducible_with_a_seeded_generator():
    model = tiny_model()
    model.posterior.head.bias.data.normal_()  # a posterior that is not the prior: the noise matters
    frames, actions = batch()
    a, b = (model.loss(frames, actions, generator=torch.Generator().manual_seed(5))["loss"] for _ in range(2))
    c = model.loss(frames, actions, generator=torch.Generator().manual_seed(6))["loss"]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("variant, state_dim", [("cdna", 0), ("sna", 2)])
def test_init_from_video_predicts_what_the_video_model_does(variant, state_dim):
    model = tiny_model(variant=variant, state_dim=state_dim)
    video = deterministic_twin(model.config).eval()
    init_from_video(model, video.state_dict())
    model.eval()
    frames, actions = batch()
    states = torch.randn(4, 6, state_dim) if state_dim else None
    pixels = torch.softmax(torch.randn(4, 2, 256), -1).view(4, 2, 16, 16)
    with torch.no_grad():
        want = video(frames, actions, states, pixels, num_context=2)
        for z in (torch.zeros(4, 3), 5 * torch.randn(4, 3)):
            got = model(frames, actions, states, pixels, num_context=2, latent=z)
            torch.testing.assert_close(got.frames, want.frames, atol=1e-6, rtol=0)
            torch.testing.assert_close(got.pixels, want.pixels, atol=1e-6, rtol=0)
            if state_dim:
                torch.testing.assert_close(got.states, want.states, atol=1e-6, rtol=0)
    enc3 = model.video.enc3.weight  # (w4, w4 + A + L [+ S], 1, 1): z's columns right after the action's
    assert not enc3[:, 8 + 2:8 + 2 + 3].any()
    bigger = VideoPredictionModel(VideoPredictionConfig.small(variant, image_size=(16, 16), channels=3,
                                                              action_dim=2, state_dim=state_dim))
    with pytest.raises(ForesightError, match=r"does not fit .*shapes differ \(enc0.weight: video model"):
        init_from_video(model, bigger.state_dict())


def test_config_round_trips_through_the_stored_recipe():
    config = tiny_config(variant="sna", latent_dim=5)
    stored = json.loads(json.dumps(dataclasses.asdict(config)))
    assert recipes.from_dict(StochasticVideoConfig, stored, "recipe.json") == config
    assert config.network().action_dim == 2 + 5 and config.action_dim == 2
    with pytest.raises(ForesightError, match="key 'model_config.posterior_widths': expected at least one width"):
        recipes.from_dict(StochasticVideoConfig, {**stored, "posterior_widths": []}, "recipe.json",
                          prefix="model_config.")


# ---------------------------------------------------------------------------- the learner and training


DATA = """
name = "planar_seq"
env = "foresight/Planar-v0"
episodes = 12
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
kind = "stochastic_video"
variant = "cdna"
image_size = [16, 16]
widths = [4, 4, 8, 8, 8, 8, 4]
transform_kernel = 3
latent_dim = 2
posterior_widths = [4, 8]
kl_weight = 1e-2
kl_warmup_steps = 4
[train]
steps = 2
batch_size = 4
lr = 3e-3
context = 2
horizon = 4
val_every = 2
val_batches = 1
sample_every = 2
checkpoint_every = 2
log_every = 1
loader_workers = 0
schedule_k = 0.0
"""


@pytest.fixture(scope="module")
def workdir(collected):
    return collected("stochastic", DATA)


def recipe(root, name, *overrides, text=RECIPE):
    path = root / f"{name}.toml"
    path.write_text(text.replace('name = "tiny"', f'name = "{name}"'))
    return recipes.load(training.TrainRecipe, path, list(overrides)), path


def video_recipe(root, name, *overrides):
    """The same network as RECIPE's, deterministic."""
    text = "\n".join(line for line in RECIPE.splitlines() if not line.startswith(("latent_dim", "posterior_widths",
                                                                                   "kl_"))).replace(
        'kind = "stochastic_video"', 'kind = "video"')
    return recipe(root, name, *overrides, text=text)


def test_train_from_a_video_run_then_load_and_eval(workdir, capsys):
    """A tiny stochastic run started from a deterministic one: at lr 0 it predicts what that one does; its
    checkpoint loads as a StochasticVideoModel; `foresight eval` works on it; beta ramps up."""
    video_run = training.train(*video_recipe(workdir, "det"), progress=False)
    run = training.train(*recipe(workdir, "sv2p", "train.lr=0.0", "train.init='runs/det'"), progress=False)
    model, learner, resolved, state = load_run(run)
    video, _, _, _ = load_run(video_run)
    assert isinstance(model, StochasticVideoModel) and isinstance(learner, StochasticVideoLearner)
    assert state["step"] == 2 and resolved["kind"] == "stochastic_video" and model.config.action_dim == 2
    assert resolved["model_config"]["latent_dim"] == 2 and resolved["model_config"]["window"] == 6
    frames, actions = torch.rand(3, 2, 1, 16, 16), torch.randn(3, 6, 2)
    with torch.no_grad():
        want = video(frames, actions).frames
        torch.testing.assert_close(model(frames, actions, latent=torch.randn(3, 2)).frames, want, atol=1e-6, rtol=0)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["kl_weight"] for r in rows if "loss" in r] == [0.0, 0.0025]  # step 0, step 1 of a 4-step ramp
    assert any("val_kl" in r for r in rows) and (run / "samples" / "step-000002.gif").exists()
    assert [learner.kl_weight_at(s) for s in (0, 2, 4, 100)] == [0.0, 0.005, 0.01, 0.01]
    assert cli.main(["eval", str(run), "--max-windows", "2"]) == 0
    assert "at z = 0 (the prior mean)" in capsys.readouterr().out
    assert json.loads((run / "eval.json").read_text())["latent"] == "prior mean (z = 0)"
    # resumed with another horizon, the posterior would read windows of another length
    with pytest.raises(ForesightError, match=r"key 'train.horizon': the posterior reads 6-frame windows"):
        training.train(*recipe(workdir, "sv2p", "train.horizon=3", "train.steps=3"), resume=True, progress=False)
    # a stochastic run starts another as it is
    tuned = training.train(*recipe(workdir, "sv2p_more", "train.lr=0.0", "train.steps=1", "train.init='runs/sv2p'"),
                           progress=False)
    a = torch.load(run / "checkpoint" / "model.pt", weights_only=True)
    b = torch.load(tuned / "checkpoint" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_init_that_does_not_fit_is_one_line_naming_the_key(workdir):
    training.train(*video_recipe(workdir, "det_wide", "model.widths=[4, 4, 8, 8, 16, 8, 4]", "train.steps=1"),
                   progress=False)
    training.train(*recipe(workdir, "sv2p_l3", "model.latent_dim=3", "train.steps=1"), progress=False)
    e2c = workdir / "runs" / "not_video"
    shutil.copytree(workdir / "runs" / "det_wide", e2c, dirs_exist_ok=True)
    resolved = json.loads((e2c / "recipe.json").read_text())
    (e2c / "recipe.json").write_text(json.dumps({**resolved, "kind": "e2c", "model": {"kind": "e2c"}}))
    widths = r"its video model has widths = \(4, 4, 8, 8, 16, 8, 4\), this recipe's \(4, 4, 8, 8, 8, 8, 4\)"
    for init, error in (("det_wide", widths),
                        ("sv2p_l3", r"does not match the model: shapes differ \(video.enc3.weight"),
                        ("not_video", r"a 'e2c' run; expected a 'video' or 'stochastic_video' run")):
        with pytest.raises(ForesightError) as e:
            training.train(*recipe(workdir, f"from_{init}", f"train.init='runs/{init}'", "train.steps=1"),
                           progress=False)
        assert "\n" not in str(e.value) and f"from_{init}.toml: key 'train.init': " in str(e.value)
        assert e.match(error)


@pytest.mark.parametrize("override, key, expected", [
    ("model.colour=1", "model.colour", "unknown key"),
    ("model.window=3", "model.window", "unknown key"),  # set from train.context + train.horizon
    ("model.latent_dim=0", "model.latent_dim", "expected a value >= 1"),
    ("model.kl_weight=-0.1", "model.kl_weight", "expected a value >= 0.0"),
    ("model.kl_warmup_steps=-1", "model.kl_warmup_steps", "expected a value >= 0"),
    ("model.posterior_widths=[0]", "model.posterior_widths[0]", "expected a value >= 1"),
    ("model.posterior_widths=[]", "model.posterior_widths", "expected at least one width"),
])
def test_bad_recipe_keys_name_the_key(workdir, override, key, expected):
    r, path = recipe(workdir, "bad", override)
    with pytest.raises(ForesightError) as e:
        training.train(r, path, progress=False)
    msg = str(e.value)
    assert str(path) in msg and repr(key) in msg and expected in msg and "\n" not in msg, msg
    assert not (workdir / "runs" / "bad").exists()


def test_sv2p_recipe_starts_from_the_shipped_model(tmp_path):
    """train/sv2p_point_push_clutter.toml, on a tiny PointPush dataset: its train.init, the exported
    pretrained/plan_point_push_clutter, is accepted, and at lr 0 the run predicts what the shipped model does."""
    recipe_path = REPO / "train" / "sv2p_point_push_clutter.toml"
    r = recipes.load(training.TrainRecipe, recipe_path)
    assert (r.model["kind"], r.model["kl_weight"], r.model["kl_warmup_steps"], r.train.steps, r.train.horizon,
            r.train.schedule_k, r.train.track_weight) == ("stochastic_video", 1e-5, 500, 2000, 8, 0.0, 1.5e-2)
    assert training.relative_to(recipe_path, r.train.init) == REPO / "pretrained" / "plan_point_push_clutter"
    data = tmp_path / "pp.toml"
    data.write_text('name = "pp"\nenv = "foresight/PointPush-v0"\nepisodes = 3\nsteps = 10\nseed = 3\n'
                    '[env_kwargs]\nimage_size = 64\naction_repeat = 3\n')
    collect.collect(recipes.load(collect.CollectRecipe, data), tmp_path / "pp", progress=False)
    r = recipes.load(training.TrainRecipe, recipe_path, [f"data='{tmp_path / 'pp'}'", "train.steps=1", "train.lr=0.0",
                                                         "train.lr_decay_steps=0", "train.batch_size=2",
                                                         "train.val_batches=1", "train.loader_workers=0"])
    run = training.train(r, recipe_path, run=tmp_path / "sv2p", progress=False)
    model, _, _, _ = load_run(run)
    shipped, _, _, _ = load_run(REPO / "pretrained" / "plan_point_push_clutter")
    frames, actions = torch.rand(2, 2, 3, 32, 32), torch.rand(2, 8, 2) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(frames, actions, latent=model.sample_latents(2)).frames,
                                   shipped(frames, actions).frames, atol=1e-5, rtol=0)
