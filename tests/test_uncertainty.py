"""Planning under model uncertainty: ensembles of video models and a stochastic model's latent draws (particles),
each plan's cost aggregated over them (PETS)."""
import copy

import numpy as np
import pytest
import torch

import foresight  # noqa: F401
from foresight import recipes
from foresight.errors import ForesightError
from foresight.models.stochastic import StochasticVideoConfig, StochasticVideoModel, init_from_video
from foresight.models.video import VideoPredictionConfig, VideoPredictionModel
from foresight.planning import mpc, planners, suites
from foresight.planning.costs import Cost, Rollout
from foresight.planning.video import VideoEnsemble, VideoPredictor

SUITE = {"name": "tiny", "env": "foresight/PointPush-v0", "tasks": 1, "steps": 3, "seed": 1,
         "reset_options": {"pusher_near": 0.02}, "cost": {"designated_pixels": 1.0, "approach": 0.3},
         "cem": {"samples": 12, "elites": 3, "iterations": 1, "horizon": 3, "repeat": 1}}
WIDTHS = dict(widths=(4, 4, 8, 8, 8, 8, 4), transform_kernel=5)


def suite(**changes):
    return recipes.from_dict(suites.DesignatedPixelSuite, {**SUITE, **changes}, "test")


def video_model(seed: int) -> VideoPredictionModel:
    torch.manual_seed(seed)
    cfg = VideoPredictionConfig.small("cdna", skip=True, image_size=(32, 32), channels=3, action_dim=2, **WIDTHS)
    return VideoPredictionModel(cfg)


def first_scores(point_push_env, s, predictor, decisions):
    """The model planner's costs of ``decisions`` at the first replan of the suite's first task."""
    task = suites.make_tasks(s, point_push_env)[0]
    obs, info = point_push_env.reset(seed=task.seed, options=task.reset_options)
    planner = planners.make("model", s, point_push_env, task, obs, predictor)
    planner.rollouts.begin(obs, info)
    return planner.score(decisions)


def test_cost_of_particles_is_their_mean_plus_spread_std():
    class Term:
        def __call__(self, r):
            return r.actions.sum((1, 2))

    a = torch.tensor([[[1.0, 2.0]], [[0.0, -1.0]]])  # (N=2, T=1, A=2)
    rollouts = [Rollout(actions=a), Rollout(actions=3 * a), Rollout(actions=-a)]
    per = np.array([[3.0, -1.0], [9.0, -3.0], [-3.0, 1.0]])  # each particle's cost of each plan, by hand
    for spread in (0.0, 0.5, 2.0):
        got = Cost({"t": Term()}, spread)(rollouts)
        np.testing.assert_allclose(got.numpy(), per.mean(0) + spread * per.std(0), rtol=1e-6)
    assert torch.equal(Cost({"t": Term()}, 2.0)(rollouts[0]), torch.tensor([3.0, -1.0]))  # one rollout: its cost


@pytest.mark.parametrize("spread", [0.0, 1.0])
def test_an_ensemble_of_identical_members_costs_what_the_single_model_does(point_push_env, spread):
    model = video_model(0)
    s = suite(cost={"designated_pixels": 1.0, "approach": 0.3, "spread": spread})
    decisions = torch.rand(12, 3, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    single = first_scores(point_push_env, s, VideoPredictor(model), decisions)
    ensemble = VideoEnsemble([VideoPredictor(model), VideoPredictor(copy.deepcopy(model)),
                              VideoPredictor(copy.deepcopy(model))])
    np.testing.assert_allclose(first_scores(point_push_env, s, ensemble, decisions).numpy(), single.numpy(), rtol=1e-5,
                               atol=1e-5)
    # members that differ: the mean of their costs; mean + 1 std of two numbers is the larger one
    other = first_scores(point_push_env, s, VideoPredictor(video_model(1)), decisions)
    pair = VideoEnsemble([VideoPredictor(model), VideoPredictor(video_model(1))])
    costs = first_scores(point_push_env, s, pair, decisions)
    expected = torch.maximum(single, other) if spread else (single + other) / 2
    np.testing.assert_allclose(costs.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(single, other)


def stochastic(video: VideoPredictionModel, latent_dim: int = 3) -> StochasticVideoModel:
    fields = {f: getattr(video.config, f) for f in video.config.__dataclass_fields__}
    cfg = StochasticVideoConfig(**fields, latent_dim=latent_dim, window=5)
    model = StochasticVideoModel(cfg)
    init_from_video(model, video.state_dict())
    return model.eval()


def test_stochastic_model_plans_under_fixed_latent_draws(point_push_env):
    video = video_model(0)
    model = stochastic(video)
    decisions = torch.rand(12, 3, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    s = suite(mpc={"latent_samples": 3})
    # started from the deterministic model with zero latent weights: every draw predicts what it does
    np.testing.assert_allclose(first_scores(point_push_env, s, VideoPredictor(model), decisions).numpy(),
                               first_scores(point_push_env, s, VideoPredictor(video), decisions).numpy(),
                               rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # now the latent matters
        layer = model.video.enc3
        layer.weight[:, -model.latent_dim:] = torch.randn_like(layer.weight[:, -model.latent_dim:])
    a, b = (first_scores(point_push_env, s, VideoPredictor(model), decisions) for _ in range(2))
    assert torch.equal(a, b)  # the task's draws are fixed: the same plans cost the same
    assert not torch.allclose(a, first_scores(point_push_env, s, VideoPredictor(video), decisions))
    one = first_scores(point_push_env, suite(mpc={"latent_samples": 1}), VideoPredictor(model), decisions)
    assert not torch.allclose(a, one)  # three draws are averaged, not one


def test_model_planner_runs_with_an_ensemble_and_a_stochastic_model(point_push_env, tmp_path):
    s = suite(tasks=1, steps=2, mpc={"latent_samples": 2}, cost={"designated_pixels": 1.0, "spread": 1.0})
    ensemble = VideoEnsemble([VideoPredictor(video_model(0)), VideoPredictor(video_model(1))])
    for name, predictor in (("ensemble", ensemble), ("stochastic", VideoPredictor(stochastic(video_model(0))))):
        summary = mpc.run_suite(s, tmp_path / name, predictor, ["model"], progress=False)
        assert summary["model"]["tasks"] == 1 and summary["model"]["seconds_per_replan"] > 0
        assert (tmp_path / name / "model" / "task-000.gif").exists()


def test_ensemble_members_must_fit_together():
    small = VideoPredictor(video_model(0))
    cfg = VideoPredictionConfig.small("cdna", skip=True, image_size=(16, 16), channels=3, action_dim=2, **WIDTHS)
    with pytest.raises(ForesightError, match="^--model: ensemble members must share image size"):
        VideoEnsemble([small, VideoPredictor(VideoPredictionModel(cfg))])


def test_bad_uncertainty_keys_name_the_key():
    with pytest.raises(ForesightError, match="mpc.latent_samples"):
        suite(mpc={"latent_samples": 0})
    with pytest.raises(ForesightError, match="cost.spread"):
        suite(cost={"designated_pixels": 1.0, "spread": -1.0})
