"""The MPC loop: the oracle solves tiny tasks, the model planner runs end to end, bad input is named."""
import dataclasses
import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import foresight  # noqa: F401
from foresight import pixels, recipes
from foresight.errors import ForesightError
from foresight.models.e2c import E2C, PRESETS, E2CConfig
from foresight.models.video import VideoPredictionConfig, VideoPredictionModel
from foresight.planning import mpc, planners, suites
from foresight.planning.video import VideoPredictor

TINY = {"name": "tiny", "env": "foresight/PointPush-v0", "tasks": 3, "steps": 24, "seed": 1,
        "reset_options": {"pusher_near": 0.02}, "goal_min_px": 6.0, "goal_max_px": 8.0,
        "cem": {"samples": 60, "elites": 6, "iterations": 2, "horizon": 3, "repeat": 3}}


def suite(**changes):
    return recipes.from_dict(suites.DesignatedPixelSuite, {**TINY, **changes}, "test")


def test_tasks_are_seeded_and_goals_lie_in_range(point_push_env):
    s = suite(tasks=5, goal_min_px=8.0, goal_max_px=20.0, reset_options={})
    a, b = suites.make_tasks(s, point_push_env), suites.make_tasks(s, point_push_env)
    for t, u in zip(a, b):
        assert t.seed == u.seed and np.array_equal(t.goals, u.goals)
        d = np.linalg.norm(t.goals - t.designated, axis=-1)
        assert ((8 - 1e-9 <= d) & (d <= 20 + 1e-9)).all()
        assert (t.goals >= 10).all() and (t.goals <= 63 - 10).all()


def test_oracle_solves_tiny_tasks_and_beats_random(point_push_env):
    s = suite()
    tasks = suites.make_tasks(s, point_push_env)
    oracle = [mpc.run_task(point_push_env, t, s, "oracle", record=False) for t in tasks]
    random = [mpc.run_task(point_push_env, t, s, "random", record=False) for t in tasks]
    assert sum(o.success for o in oracle) >= 2, [o.final_distance for o in oracle]
    for o in oracle + random:  # the true distance after every step, ending at the final one
        assert len(o.distances) == s.steps and o.distances[-1] == pytest.approx(o.final_distance)
        assert o.summary()["distance_per_step"][-1] == pytest.approx(o.final_distance, abs=0.01)
    assert mpc.aggregate(oracle)["final_over_start"] < 0.5 * mpc.aggregate(random)["final_over_start"]


def test_until_success_ends_a_task_at_its_first_step_in_the_goal(point_push_env):
    """mpc.until_success: the task ends where the block first reaches its goal; the same task without it runs
    every step, and its first success is at the same step (the planner is seeded alike)."""
    runs = {}
    for until in (False, True):
        s = suite(mpc={"until_success": until})
        task = suites.make_tasks(s, point_push_env)[0]
        runs[until] = mpc.run_task(point_push_env, task, s, "oracle", record=False)
    full, short = runs[False], runs[True]
    assert len(full.distances) == TINY["steps"] and any(full.in_goal)
    first = full.in_goal.index(True)
    assert len(short.distances) == first + 1 and short.success and short.in_goal == full.in_goal[:first + 1]
    assert short.distances == pytest.approx(full.distances[:first + 1])


def test_with_an_effort_weight_the_planner_keeps_still_once_the_object_is_at_its_goal(point_push_env):
    """cost.effort: every plan leaves the block where it is (its goal), so without the effort term CEM's
    choice among them is arbitrary and the pusher wanders; with it the pusher keeps (almost) still."""
    s = suite(tasks=1, steps=6, reset_options={"pusher_near": 0.06})
    task = suites.make_tasks(s, point_push_env)[0]
    task = dataclasses.replace(task, goals=task.designated.copy())  # the goal: where it is
    moved = {}
    for weight in (0.0, 1.0):
        ws = suite(tasks=1, steps=6, reset_options={"pusher_near": 0.06}, cost={"effort": weight})
        o = mpc.run_task(point_push_env, task, ws, "oracle", record=False, keep_episode=True)
        moved[weight] = float(np.linalg.norm(o.episode["actions"], axis=-1).mean())
        assert o.success
    assert moved[1.0] < 0.25 * moved[0.0], moved  # mean |action| per step, 1 = full speed


def test_model_planner_runs_end_to_end_and_writes_results(point_push_env, tmp_path):
    torch.manual_seed(0)
    cfg = VideoPredictionConfig.small("sna", image_size=(64, 64), channels=3, action_dim=2,
                                      widths=(4, 4, 8, 8, 8, 8, 4), transform_kernel=3)
    predictor = VideoPredictor(VideoPredictionModel(cfg))
    s = suite(tasks=1, steps=6, cem={"samples": 8, "elites": 2, "iterations": 1, "horizon": 2, "repeat": 3},
              cost={"approach": 0.3})  # and the approach term on the model's predictions
    summary = mpc.run_suite(s, tmp_path, predictor, ["model", "random"], progress=False)
    assert summary["model"]["tasks"] == 1 and 0 <= summary["model"]["success"] <= 1
    assert summary["model"]["model_seconds_per_replan"] > 0
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["random"]["per_task"][0]["start_distance"] == summary["random"]["per_task"][0]["start_distance"]
    assert (tmp_path / "model" / "task-000.gif").exists()
    # the carried distribution keeps mass 1
    frames = torch.rand(2, 3, 64, 64)
    dist = torch.zeros(1, 64, 64)
    dist[0, 30, 30] = 1
    _, dists = predictor(frames, torch.zeros(1, 2), torch.rand(5, 6, 2) * 2 - 1, dist)
    assert torch.allclose(dists.sum((-1, -2)), torch.ones(5, 6, 1), atol=1e-4)


def test_bad_input_is_named(point_push_env, tmp_path):
    with pytest.raises(ForesightError, match=r"--goal: pixel \(70, 3\) lies outside the 64x64 image"):
        pixels.check_in_image("--goal", [[70, 3]], 64, 64)
    e2c = E2C(E2CConfig(**PRESETS["planar"]))
    with pytest.raises(ForesightError, match="predicts no pixel distributions"):
        VideoPredictor(e2c)
    with pytest.raises(ForesightError, match="'env'.*unknown environment"):
        mpc.run_suite(suite(env="foresight/Nowhere-v0"), tmp_path, None, ["random"], "s.toml", progress=False)
    with pytest.raises(ForesightError, match="'designated'"):
        suites.make_tasks(suite(designated=2), point_push_env, "s.toml")
    arm = suite(env="foresight/ArmPush-v0", goal="env", cost={"approach": 0.3})
    with pytest.raises(ForesightError, match=r"s.toml: key 'cost.approach': environment "
                                             r"'foresight/ArmPush-v0' offers no agent_path"):
        mpc.run_suite(arm, tmp_path, None, ["oracle"], "s.toml", progress=False)
    with pytest.raises(ForesightError, match=r"s.toml: key 'cem.elites': expected at most samples"):
        recipes.from_dict(suites.DesignatedPixelSuite, {**TINY, "cem": {"samples": 4, "elites": 9}}, "s.toml")
    with pytest.raises(ForesightError, match=r"s.toml: key 'goal_min_px': expected at most goal_max_px"):
        recipes.from_dict(suites.DesignatedPixelSuite, {**TINY, "goal_min_px": 9.0}, "s.toml")
    with pytest.raises(ForesightError, match=r"--planners: unknown planner 'cem' \(expected: model, oracle, random\)"):
        mpc.run_suite(suite(), tmp_path, None, ["cem"], "s.toml", progress=False)
    with pytest.raises(ForesightError, match=r"--model: planner\(s\) model need a trained model"):
        mpc.run_suite(suite(), tmp_path, None, ["model"], "s.toml", progress=False)
    run = subprocess.run([sys.executable, "-m", "foresight", "plan", "--env", "foresight/PointPush-v0",
                          "--designated", "20,31", "--goal", "44,99", "--planners", "random"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == "foresight: error: --goal: pixel (44, 99) lies outside the 64x64 image (rows 0..63, columns 0..63)"


def test_a_smaller_planning_image_scales_pixels_and_keeps_mass(point_push_env, tmp_path):
    """A 32x32 model plans on the 64x64 camera: frames area-averaged, pixels scaled, mass kept."""
    torch.manual_seed(0)
    cfg = VideoPredictionConfig.small("cdna", skip=True, image_size=(32, 32), channels=3, action_dim=2,
                                      widths=(4, 4, 8, 8, 8, 8, 4), transform_kernel=5)
    predictor = VideoPredictor(VideoPredictionModel(cfg))
    obs, _ = point_push_env.reset(seed=0)
    ctx = predictor.frames([obs, obs])
    assert ctx.shape == (2, 3, 32, 32) and torch.allclose(ctx[0].mean(), torch.as_tensor(obs / 255.0).mean().float(), atol=1e-3)
    s = suite(tasks=1, steps=6, cem={"samples": 8, "elites": 2, "iterations": 1, "horizon": 2, "repeat": 3})
    o = mpc.run_task(point_push_env, suites.make_tasks(s, point_push_env)[0], s, "model", predictor)
    assert len(o.video) == 6 and 3 * 64 * 4 <= o.video[0].shape[1] < 3 * 64 * 4 + 20  # 3 panels at the camera's size
    _, dists = predictor(ctx, torch.zeros(1, 2), torch.rand(3, 4, 2) * 2 - 1,
                         pixels.delta_distribution(torch.tensor([[[10.2, 20.7]]]), 32, 32)[0])
    assert torch.allclose(dists.sum((-1, -2)), torch.ones(3, 4, 1), atol=1e-4)
    # the suite's mpc.amp reaches the model: bf16 autocast changes the frames, not the pixel mass
    actions = torch.rand(3, 4, 2) * 2 - 1
    start = pixels.delta_distribution(torch.tensor([[[10.2, 20.7]]]), 32, 32)[0]
    fp32, _ = predictor(ctx, torch.zeros(1, 2), actions, start)
    bf16, dists = predictor(ctx, torch.zeros(1, 2), actions, start, amp="bf16")
    assert not torch.equal(fp32, bf16) and torch.allclose(fp32, bf16, atol=0.1)
    assert torch.allclose(dists.sum((-1, -2)), torch.ones(3, 4, 1), atol=1e-4)


def test_the_model_time_scale_must_match_the_suite(point_push_env):
    cfg = VideoPredictionConfig.small("sna", image_size=(64, 64), channels=3, action_dim=2,
                                      widths=(4, 4, 8, 8, 8, 8, 4), transform_kernel=3)
    trained = {"id": "foresight/PointPush-v0", "kwargs": {"image_size": 64, "action_repeat": 3}}
    predictor = VideoPredictor(VideoPredictionModel(cfg), trained_env=trained)
    predictor.check_env("foresight/PointPush-v0", {"action_repeat": 3}, point_push_env, "s.toml")
    with pytest.raises(ForesightError, match=r"s.toml: key 'env_kwargs.action_repeat': the model was trained "
                                             r"with action_repeat = 3, the suite runs 1"):
        predictor.check_env("foresight/PointPush-v0", {}, point_push_env, "s.toml")
    with pytest.raises(ForesightError, match=r"^--model: trained on foresight/PointPush-v0 data, the suite runs "
                                             r"foresight/PushT-v0$"):  # the same image and action sizes
        predictor.check_env("foresight/PushT-v0", {}, point_push_env, "s.toml")


def test_task_processes_give_the_same_outcomes(tmp_path):
    s = suite(tasks=2, steps=6)
    one = mpc.run_suite(s, tmp_path / "one", None, ["oracle"], progress=False, videos=0)
    two = mpc.run_suite(s, tmp_path / "two", None, ["oracle"], progress=False, videos=1, workers=2)
    outcome = lambda summary: [(t["final_distance"], t["success"]) for t in summary["oracle"]["per_task"]]  # noqa: E731
    assert outcome(one) == outcome(two)
    assert (tmp_path / "two" / "oracle" / "task-000.gif").exists()


def test_color_tracker_follows_a_pushed_block_to_the_simulators_pixel():
    """Registration sees only camera frames; it must land on the object's true pixel (an independent measure)."""
    from foresight.planning.tracking import ColorTracker

    e = gym.make("foresight/PointPush-v0", objects=2)
    obs, info = e.reset(seed=4, options={"pusher_near": 0.02})
    designated = info["points"] + np.array([[1.5, -1.0], [0.0, 0.0]])  # one pixel off its block's centre
    tracker = ColorTracker(obs, designated)
    start, errors = info["points"].copy(), []
    for t in range(40):  # drive through the red block, pushing it
        obs, _, _, _, info = e.step(e.unwrapped.steer_toward(0))
        errors.append(np.abs(tracker.update(obs) - (info["points"] + designated - start)).max())
    e.close()
    assert np.linalg.norm(info["points"][0] - start[0]) > 5  # the block really moved (into a corner)
    assert max(errors) < 1.0, errors
    with pytest.raises(ForesightError, match=r"frame: the colour tracker needs RGB frames"):
        tracker.update(np.zeros((64, 64, 1), np.uint8))


@pytest.mark.parametrize("track", ["registration", "true"])
def test_tracked_designated_pixels_restart_on_the_object(point_push_env, track):
    """With registration (images) or the true pixel, each replan starts from a delta at the object's pixel."""
    torch.manual_seed(0)
    cfg = VideoPredictionConfig.small("cdna", skip=True, image_size=(32, 32), channels=3, action_dim=2,
                                      widths=(4, 4, 8, 8, 8, 8, 4), transform_kernel=5)
    model = VideoPredictionModel(cfg)
    seen = []

    class Recorder(VideoPredictor):
        def __call__(self, frames, past, actions, dists, amp="off"):
            seen.append(dists.clone())
            return super().__call__(frames, past, actions, dists, amp)

    s = suite(tasks=1, steps=4, mpc={"replan_every": 1, "track": track},
              cem={"samples": 8, "elites": 2, "iterations": 1, "horizon": 2, "repeat": 1})
    task = suites.make_tasks(s, point_push_env)[0]
    mpc.run_task(point_push_env, task, s, "model", Recorder(model), record=False)
    # the last replan's start distribution is a delta (4 bilinear taps), not a model-spread distribution
    assert (seen[-1][0] > 0).sum() <= 4 and torch.allclose(seen[-1].sum(), torch.tensor(1.0))
    with pytest.raises(ForesightError, match=r"key 'mpc.track'"):
        suite(mpc={"track": "telepathy"})


def test_with_an_approach_weight_the_planner_heads_round_the_object(point_push_env):
    """cost.approach: the goal lies between the pusher and the block, so in a short look ahead no plan moves
    the block closer and the designated-pixel cost cannot choose; the approach term sends the pusher round to the
    block's far side."""
    from foresight.envs import point_push

    s = suite(tasks=1, steps=4, reset_options={"pusher_near": 0.03})
    task = suites.make_tasks(s, point_push_env)[0]
    _, info = point_push_env.reset(seed=task.seed, options=s.reset_options)
    block, pusher = info["points"][0].astype(np.float64), point_push.pusher_pixels(info["state"], 64, 64)[0]
    toward = (pusher - block) / np.linalg.norm(pusher - block)
    task = dataclasses.replace(task, goals=(block + 10 * toward)[None])  # goal on the pusher's side
    push_point = block - 9 * toward
    gap = {}
    for weight in (0.0, 1.0):
        ws = suite(tasks=1, steps=4, reset_options={"pusher_near": 0.03}, cost={"approach": weight})
        o = mpc.run_task(point_push_env, task, ws, "oracle", record=False, keep_episode=True)
        gap[weight] = float(np.linalg.norm(point_push.pusher_pixels(o.episode["states"][-1], 64, 64)[0] - push_point))
    start = float(np.linalg.norm(pusher - push_point))  # ~21 px; 4 control steps move the pusher <= ~10
    assert gap[1.0] < start - 3 and gap[1.0] < 0.7 * gap[0.0], (start, gap)


def test_the_benchmarks_cost_is_the_planners_for_every_term(point_push_env, monkeypatch):
    """benchmarks/plan_model_errors.py scores plans with the model and oracle planners' own cost: on the decisions
    the planner scored at its first replan, every term the suite switches on gives the same costs."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "plan_model_errors.py"
    spec = importlib.util.spec_from_file_location("plan_model_errors", path)
    errors = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(errors)
    torch.manual_seed(0)
    cfg = VideoPredictionConfig.small("cdna", skip=True, image_size=(32, 32), channels=3, action_dim=2,
                                      widths=(4, 4, 8, 8, 8, 8, 4), transform_kernel=5)
    predictor = VideoPredictor(VideoPredictionModel(cfg))
    s = suite(tasks=1, steps=1, cem={"samples": 6, "elites": 2, "iterations": 1, "horizon": 3, "repeat": 1},
              cost={"designated_pixels": 1.0, "approach": 0.3, "effort": 0.2})
    task = suites.make_tasks(s, point_push_env)[0]
    seen = {}
    score = planners.CEMPlanner.score

    def spy(self, decisions):  # the first replan's decisions and the planner's cost of each term
        costs = score(self, decisions)
        seen.setdefault(type(self.rollouts).__name__, (decisions.clone(), costs,
                                                       self.cost.parts(self.rollouts(self.cem.expand(decisions)))))
        return costs

    monkeypatch.setattr(planners.CEMPlanner, "score", spy)
    for name in ("model", "oracle"):
        mpc.run_task(point_push_env, task, s, name, predictor, record=False)
    model, oracle = errors.first_replan(s, point_push_env, task, predictor)
    for planner in (model, oracle):
        decisions, costs, parts = seen[type(planner.rollouts).__name__]
        assert set(parts) == {"designated_pixels", "approach", "effort"}
        torch.testing.assert_close(score(planner, decisions), costs, rtol=0, atol=0)
        mine = planner.cost.parts(planner.rollouts(planner.cem.expand(decisions)))
        for term in parts:
            torch.testing.assert_close(mine[term], parts[term], rtol=0, atol=0)


def test_heldout_twin_is_the_same_suite_on_other_tasks(point_push_env):
    s = suite(tasks=4, heldout_seed=7)
    twin = suites.heldout(s, "plan/x.toml")
    assert (twin.name, twin.seed) == ("tiny_heldout", 7)
    assert dataclasses.replace(twin, name=s.name, seed=s.seed) == s  # nothing else changes
    seeds = {t.seed for t in suites.make_tasks(s, point_push_env)}
    assert not seeds & {t.seed for t in suites.make_tasks(twin, point_push_env)}
    with pytest.raises(ForesightError, match=r"^plan/x.toml: key 'heldout_seed': this suite has no held-out twin"):
        suites.heldout(suite(), "plan/x.toml")
    with pytest.raises(ForesightError, match="heldout_seed"):
        suite(heldout_seed=TINY["seed"])


def test_approach_pulls_the_agent_to_the_first_object_not_yet_home():
    """Two objects: the first is home (within success_px), so only the second's push point pulls the agent."""
    from foresight.planning.costs import Approach, Rollout

    goals = np.array([[10.0, 10.0], [40.0, 40.0]])
    now = np.array([[10.0, 11.0], [40.0, 25.0]], np.float32)  # object 0 is 1 px from its goal, object 1 15 px
    push = np.array([[10.0, 11.0 + 9.0], [40.0, 25.0 - 9.0]])  # 9 px behind each, away from its goal
    objects = torch.as_tensor(now)[None, None].expand(2, 1, 2, 2)
    agents = torch.as_tensor(push, dtype=torch.float32)[:, None]  # plan 0 ends at object 0's push point, plan 1 at 1's
    r = Rollout(actions=torch.zeros(2, 1, 2), points=objects, now=now, agent_path=lambda a: agents.numpy())
    ordered = Approach(goals, 9.0, 1.0, 1.0, done=3.0)(r)
    assert ordered[1] == pytest.approx(0.0, abs=1e-5) and ordered[0] > 20  # object 1 is the one to reach
    every = Approach(goals, 9.0, 1.0, 1.0)(r)  # without an order: both objects pull (object 0 faded to 1/9)
    gap = float(np.linalg.norm(push[0] - push[1]))
    np.testing.assert_allclose(every.numpy(), [gap, gap / 9], rtol=1e-5)


def test_a_single_task_is_saved_as_a_suite_is(tmp_path):
    """`foresight plan --env`: the GIF, the task record and summary.json, the distance judged by the object under
    the designated pixel (here the second of two blocks, not the first)."""
    env = gym.make("foresight/PointPush-v0", render_mode="rgb_array", objects=2)
    _, info = env.reset(seed=3)
    env.close()
    second = info["points"][1]
    run = subprocess.run([sys.executable, "-m", "foresight", "plan", "--env", "foresight/PointPush-v0", "--seed", "3",
                          "--designated", f"{second[0]:.2f},{second[1]:.2f}", "--goal", "40,40",
                          "--planners", "random", "--set", "steps=3", "--set", "env_kwargs.objects=2",
                          "--out", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    task = summary["random"]["per_task"][0]
    assert (tmp_path / "random" / "task-000.gif").exists() and (tmp_path / "random" / "task-000.json").exists()
    # the first step's true distance is the second block's (random pushes rarely reach it in one step)
    assert task["distance_per_step"][0] == pytest.approx(np.linalg.norm(second - 40), abs=0.6)
    assert len(task["distance_per_step"]) == 3
