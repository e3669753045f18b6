"""Latent planning: iLQR against the analytic LQ solution, CEM and iLQR reaching goals with the true planar
dynamics as the 'latent model', the suite's result folder, the CLI hand-over for E2C runs, clear errors."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from foresight import cli, collect, recipes, training
from foresight.envs import planar
from foresight.errors import ForesightError
from foresight.models.e2c import E2C, E2CConfig
from foresight.planning import mpc, planners, suites
from foresight.planning.costs import Cost, CostContext, CostSettings, build_cost, step_weights
from foresight.planning.ilqr import ILQRSettings, LatentILQR
from foresight.planning.latent import LatentModel


class LinearModel:
    """z_{t+1} = A z + B u + o: the interface the planners use (transition(z, u).mean, linearize)."""

    def __init__(self, A, B, o):
        self.A, self.B, self.o = A, B, o

    def transition(self, z, u):
        return SimpleNamespace(mean=z @ self.A.T + u @ self.B.T + self.o)

    def linearize(self, z, u=None):
        n = z.shape[0]
        return self.A.expand(n, *self.A.shape), self.B.expand(n, *self.B.shape), self.o.expand(n, -1)


class TruePlanar(LinearModel):
    """The planar system's true dynamics away from obstacles, z = agent position / 10, encoded from the image
    by the agent's intensity centroid: planning with it may only fail where obstacles block the way."""

    scale = 0.1

    def __init__(self, image_size=40):
        super().__init__(torch.eye(2), self.scale * torch.eye(2), torch.zeros(2))
        self.config = E2CConfig(image_shape=(1, image_size, image_size), latent_dim=2, action_dim=2)

    def eval(self):
        return self

    def encode(self, x):  # x (B, 1, 40, 40)
        w = (x[:, 0] - 0.6).clamp_min(0)  # the agent is white, obstacles mid grey
        centre = torch.arange(40.0) + 0.5  # pixel i spans [i, i + 1] in map units
        m = w.sum((1, 2))
        pos = torch.stack([(w.sum(2) * centre).sum(1) / m, (w.sum(1) * centre).sum(1) / m], -1)
        return Normal(pos * self.scale, torch.full_like(pos, 0.01))

    def decode(self, z):
        return torch.stack([torch.as_tensor(planar.render_state(p / self.scale)).permute(2, 0, 1) / 255.0
                            for p in z.numpy()])


SUITE = """
name = "reach"
env = "foresight/Planar-v0"
kind = "goal_image"
tasks = 2
seed = 1
steps = 20
start_low = [3.0, 3.0]
start_high = [7.0, 7.0]
goal_states = [[3.0, 37.0], [20.0, 20.0]]
region_radius = 2.0
[cem]
samples = 60
elites = 6
iterations = 3
horizon = 6
repeat = 1
[ilqr]
horizon = 6
iterations = 5
"""


def suite(tmp_path, *overrides, text=SUITE):
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return suites.load(path, list(overrides)), path


def latent_cost(effort, last_weight, half):
    return build_cost(CostSettings(goal_distance=1.0, effort=effort, last_weight=last_weight), CostContext(half=half))


def test_ilqr_matches_the_analytic_lq_solution():
    g = torch.Generator().manual_seed(0)
    Z, U, T = 3, 2, 6
    A = torch.eye(Z) + 0.1 * torch.randn(Z, Z, generator=g)
    B, o = torch.randn(Z, U, generator=g), 0.1 * torch.randn(Z, generator=g)
    model, z0, goal = LinearModel(A, B, o), torch.randn(Z, generator=g), torch.randn(Z, generator=g)
    effort = 0.3
    cost = latent_cost(effort, 5.0, torch.ones(U))
    ilqr = LatentILQR(model, cost, goal, -100 * torch.ones(U), 100 * torch.ones(U),
                      ILQRSettings(horizon=T, iterations=5, regularization=0.0))
    u, J = ilqr.plan(z0)
    # analytic: z_t = Phi_t z0 + sum_s G_ts u_s + c_t is linear in the stacked u; the cost is least squares
    A64, B64, o64 = A.double(), B.double(), o.double()
    G, c, z, zero = [], [], z0.double(), torch.zeros(Z, U * T, dtype=torch.float64)
    rows = zero.clone()
    for t in range(T):
        rows = A64 @ rows
        rows[:, t * U:(t + 1) * U] += B64
        z = A64 @ z + o64
        G.append(rows.clone()), c.append(z.clone())
    w = step_weights(T, 5.0).double()
    lhs = effort * torch.eye(U * T, dtype=torch.float64)
    rhs = torch.zeros(U * T, dtype=torch.float64)
    for t in range(T):
        lhs += w[t] * G[t].T @ G[t]
        rhs += w[t] * G[t].T @ (goal.double() - c[t])
    expected = torch.linalg.solve(lhs, rhs).view(T, U)
    torch.testing.assert_close(u.double(), expected, rtol=1e-3, atol=1e-3)
    assert ilqr.iterations_run <= 3  # exact on a linear-quadratic problem: one step, then nothing to gain


def test_ilqr_respects_the_action_bounds():
    model = LinearModel(torch.eye(2), torch.eye(2), torch.zeros(2))
    cost = latent_cost(0.0, 1.0, torch.ones(2))
    u, _ = LatentILQR(model, cost, torch.tensor([50.0, -50.0]), -torch.ones(2), torch.ones(2),
                      ILQRSettings(horizon=4)).plan(torch.zeros(2))
    torch.testing.assert_close(u, torch.tensor([[1.0, -1.0]] * 4))  # as far as the bounds allow, every step


class CubicModel:
    """z' = z + u^3: at u = 0 the action has no first-order effect, so a plan of zeros is stationary for iLQR."""

    def transition(self, z, u):
        return SimpleNamespace(mean=z + u ** 3)

    def linearize(self, z, u=None):
        n, Z = z.shape
        return torch.eye(Z).expand(n, Z, Z), torch.diag_embed(3 * u ** 2), torch.zeros(n, Z)


def test_ilqr_random_starts_escape_a_stationary_plan():
    cost = latent_cost(0.0, 1.0, torch.ones(1))
    goal, z0 = torch.tensor([2.0]), torch.zeros(1)
    stuck = LatentILQR(CubicModel(), cost, goal, -torch.ones(1), torch.ones(1), ILQRSettings(horizon=4))
    u, J = stuck.plan(z0)
    assert torch.equal(u, torch.zeros(4, 1)) and J == pytest.approx(4 * 4.0)  # never leaves the zero plan
    starts = ILQRSettings(horizon=4, uniform_starts=2, extreme_starts=2)
    u, J = LatentILQR(CubicModel(), cost, goal, -torch.ones(1), torch.ones(1), starts,
                      np.random.default_rng(0)).plan(z0)
    z = torch.cumsum(u[:, 0] ** 3, 0)  # the rollout, computed directly
    assert J == pytest.approx(float(((z - 2.0) ** 2).sum()), rel=1e-5)
    assert J < 2.0  # reaches the goal in two full pushes and stays: 1 + 0 + 0 + 0


@pytest.mark.parametrize("planner", ["cem", "ilqr"])
def test_planning_with_the_true_dynamics_reaches_the_goals(tmp_path, planner):
    s, _ = suite(tmp_path)
    summary = mpc.run_suite(s, tmp_path / "out", LatentModel(TruePlanar()), [planner, "random"], progress=False,
                            videos=1)
    ours, rand = summary[planner], summary["random"]
    assert ours["success"] == 1.0 and ours["mean_final_distance"] < 2.0, ours["per_task"]
    assert ours["percent_in_goal"] > 40 and rand["percent_in_goal"] == 0.0
    assert (tmp_path / "out" / planner / "task-000.gif").exists() and not (tmp_path / "out" / planner / "task-001.gif").exists()
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved[planner]["percent_in_goal"] == ours["percent_in_goal"] and len(saved[planner]["per_task"]) == 2


def test_the_oracle_plans_on_the_true_state_without_a_model(tmp_path):
    """The protocol's bound: CEM on the simulator's state reaches the open-field goals, from the same start."""
    s, _ = suite(tmp_path)
    summary = mpc.run_suite(s, tmp_path / "out", None, ["oracle"], progress=False, videos=0)
    assert summary["oracle"]["success"] == 1.0 and summary["oracle"]["percent_in_goal"] > 40, summary["oracle"]


def test_goal_region_in_angles_wraps():
    s = suites.GoalImageSuite(name="p", env="foresight/Pendulum-v0", goal_states=((0.0, 0.0),), region_dims=(0,),
                              region_radius=0.5, region_wrap=True)
    task = suites.Task(0, 0, np.zeros((1, 2)), np.zeros((1, 2)), {}, np.zeros((48, 48, 1), np.uint8), np.zeros(2))
    points = np.zeros((1, 2))
    assert suites.region_distance(s, task, {"state": np.array([2 * np.pi - 0.1, 3.0]), "points": points}) == \
        pytest.approx(0.1)
    assert suites.judge(s, task, {"state": np.array([2 * np.pi - 0.1, 3.0]), "points": points}) == (0.0, True)
    assert not suites.judge(s, task, {"state": np.array([0.6, 0.0]), "points": points})[1]


@pytest.mark.parametrize("variant", ["e2c", "vae"])
def test_an_untrained_pendulum_model_plans_from_two_stacked_frames(tmp_path, variant):
    text = SUITE.replace('"foresight/Planar-v0"', '"foresight/Pendulum-v0"')
    s, _ = suite(tmp_path, "goal_states=[[0.0, 0.0]]", "start_low=[2.83, 0.0]", "start_high=[2.98, 0.0]",
                 "region_dims=[0]", "region_wrap=true", "tasks=1", "steps=3", "env_kwargs.max_torque=0.65", text=text)
    torch.manual_seed(0)
    model = E2C(E2CConfig(image_shape=(2, 48, 48), latent_dim=3, action_dim=1, model=variant, encoder_widths=(32,),
                          decoder_widths=(32,), transition_widths=(16,)))  # the VAE's iLQR uses autograd Jacobians
    summary = mpc.run_suite(s, tmp_path / "pend", LatentModel(model), ["cem", "ilqr"], progress=False)
    assert summary["cem"]["tasks"] == 1 and summary["ilqr"]["per_task"][0]["percent_in_goal"] == 0.0


def test_foresight_plan_hands_an_e2c_run_to_the_latent_planner(tmp_path, capsys):
    (tmp_path / "data.toml").write_text('name = "pl"\nenv = "foresight/Planar-v0"\nepisodes = 40\nsteps = 2\n')
    collect.collect(recipes.load(collect.CollectRecipe, tmp_path / "data.toml"), tmp_path / "pl", progress=False)
    (tmp_path / "e2c.toml").write_text('name = "e"\ndata = "pl"\n[model]\nkind = "e2c"\npreset = "planar"\n'
                                       'encoder_widths = [16]\ndecoder_widths = [16]\ntransition_widths = [8]\n'
                                       '[train]\nsteps = 2\nbatch_size = 8\nloader_workers = 0\n')
    run = training.train(recipes.load(training.TrainRecipe, tmp_path / "e2c.toml"), tmp_path / "e2c.toml", progress=False)
    _, path = suite(tmp_path)
    code = cli.main(["plan", str(path), "--model", str(run), "--set", "tasks=1", "--set", "steps=2",
                     "--out", str(tmp_path / "res"), "--no-progress"])
    assert code == 0
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert {"cem", "ilqr", "random"} <= set(summary) and summary["recipe"]["model"] == str(run)
    assert "% of steps in the goal region" in capsys.readouterr().out
    assert cli.main(["plan", str(path), "--model", str(run), "--planners", "mppi", "--out", str(tmp_path / "x")]) == 2
    assert "--planners: unknown planner 'mppi'" in capsys.readouterr().err
    pendulum = tmp_path / "pendulum.toml"
    pendulum.write_text(SUITE.replace('"foresight/Planar-v0"', '"foresight/Pendulum-v0"'))
    assert cli.main(["plan", str(pendulum), "--model", str(run), "--out", str(tmp_path / "x")]) == 2
    assert "--model: was trained on foresight/Planar-v0 images, the suite" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (["goal_states=[[3.0, 37.0, 1.0]]"], "key 'goal_states': foresight/Planar-v0 has states of 2 numbers"),
    (["region_dims=[2]"], r"key 'region_dims': expected state entries in 0..1"),
    (["start_high=[7.0]"], r"key 'start_high': expected as many numbers as start_low \(2\)"),
    (["goal_states=[[20.5, 5.5]]"], "key 'goal_states'.*not a valid state"),
    (["goal_states=[]"], "key 'goal_states': expected goal states, or goal_push_steps > 0"),
    (["baselines=['mppi']"], r"key 'baselines': expected planners of cem, ilqr, model, random, oracle \(unknown planner 'mppi'\)"),
    (["cost.designated_pixels=1.0"], "key 'cost.designated_pixels': this planner's rollouts cannot feed"),
])
def test_bad_suites_give_one_clear_error(tmp_path, overrides, message):
    with pytest.raises(ForesightError, match=message) as e:
        s, path = suite(tmp_path, *overrides)
        mpc.run_suite(s, tmp_path / "o", LatentModel(TruePlanar()), ["cem"], source=str(path), progress=False)
    assert "\n" not in str(e.value)


def test_bad_models_and_bounds_are_errors(tmp_path):
    s, _ = suite(tmp_path)
    with pytest.raises(ForesightError, match="--model: encodes 48x48 images of 1 channel"):
        mpc.run_suite(s, tmp_path / "o", LatentModel(TruePlanar(image_size=48)), ["cem"], progress=False)
    with pytest.raises(ForesightError, match="--model: not a latent model"):
        LatentModel(torch.nn.Linear(2, 2))
    with pytest.raises(ForesightError, match=r"--model: planner\(s\) ilqr need a trained model"):
        mpc.run_suite(s, tmp_path / "o", None, ["ilqr"], progress=False)
    cost = latent_cost(0.01, 1.0, torch.ones(2))
    with pytest.raises(ForesightError, match="low/high: expected action bounds with low < high"):
        LatentILQR(TruePlanar(), cost, torch.zeros(2), torch.ones(2), torch.ones(2))
    with pytest.raises(ForesightError, match="cost: iLQR plans with the terms goal_distance and effort only"):
        LatentILQR(TruePlanar(), Cost({}), torch.zeros(2), -torch.ones(2), torch.ones(2))


def test_a_video_model_plans_toward_a_goal_image_with_the_goal_image_term(tmp_path):
    """Planner 'model' in a goal-image suite: the video model's predicted frames against the goal image (cost term
    goal_image); a term its rollouts cannot feed, or a latent planner given a video model, is one clear error."""
    from foresight.models.video import VideoPredictionConfig, VideoPredictionModel
    from foresight.planning.video import VideoPredictor, VideoRollouts

    torch.manual_seed(0)
    cfg = VideoPredictionConfig.small("cdna", image_size=(40, 40), channels=1, action_dim=2,
                                      widths=(4, 4, 8, 8, 8, 8, 4), transform_kernel=3)
    predictor = VideoPredictor(VideoPredictionModel(cfg))
    s, _ = suite(tmp_path, "tasks=1", "steps=3", "cost.goal_distance=0.0", "cost.goal_image=1.0",
                 "cem.samples=8", "cem.elites=2", "cem.iterations=1", "cem.horizon=3")
    summary = mpc.run_suite(s, tmp_path / "out", predictor, ["model", "random"], progress=False, videos=1)
    assert summary["model"]["tasks"] == 1 and summary["model"]["model_seconds_per_replan"] > 0
    assert (tmp_path / "out" / "model" / "task-000.gif").exists()
    env = planar.PlanarEnv()
    task = suites.make_tasks(s, env)[0]
    obs, _ = env.reset(seed=task.seed, options=task.reset_options)
    planner = planners.make("model", s, env, task, obs, predictor)
    assert isinstance(planner.rollouts, VideoRollouts) and list(planner.cost.terms) == ["goal_image", "effort"]
    planner.rollouts.begin(obs, {})
    costs = planner.score(torch.zeros(2, 3, 2))
    assert costs.shape == (2,) and torch.isfinite(costs).all() and torch.allclose(costs[0], costs[1])
    latent_cost_suite, _ = suite(tmp_path, "tasks=1")
    with pytest.raises(ForesightError, match="key 'cost.goal_distance': this planner's rollouts cannot feed"):
        mpc.run_suite(latent_cost_suite, tmp_path / "x", predictor, ["model"], progress=False)
    with pytest.raises(ForesightError, match=r"--model: planner 'cem' plans with a latent model"):
        mpc.run_suite(latent_cost_suite, tmp_path / "x", predictor, ["cem"], progress=False)
