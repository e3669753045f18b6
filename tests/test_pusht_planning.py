"""PushT's planning protocol: start-goal pairs from recorded trajectories, success by the true pose."""
import dataclasses
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import foresight  # noqa: F401  (registers the environments)
from foresight import collect, datasets, recipes
from foresight.envs import pusht
from foresight.errors import ForesightError
from foresight.learners.video import VideoLearner, action_bounds
from foresight.learners import TrainSettings
from foresight.planning import mpc, suites
from foresight.planning.cem import CEM, CEMConfig

POLICY = {"kind": "push", "repeat": 2, "smoothing": 0.5, "push_fraction": 0.9, "steer_prob": 0.7}


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory):
    """Four recorded PushT episodes of 26 steps (two datasets: the suite's and its twin's)."""
    root = tmp_path_factory.mktemp("pusht")
    out = {}
    for name, seed in (("tune", 5), ("heldout", 6)):
        recipe = recipes.from_dict(collect.CollectRecipe, {
            "name": name, "env": "foresight/PushT-v0", "episodes": 4, "steps": 26, "seed": seed, "shard_size": 4,
            "env_kwargs": {"image_size": 64}, "policy": POLICY}, "test")
        out[name] = collect.collect(recipe, root / name, progress=False)
    return out


def suite(trajectories, **changes):
    return recipes.from_dict(suites.DesignatedPixelSuite, {
        "name": "pusht", "env": "foresight/PushT-v0", "tasks": 3, "seed": 1, "heldout_seed": 2, "steps": 4,
        "designated": 3, "goal": "trajectory", "goal_data": str(trajectories["tune"]),
        "heldout_goal_data": str(trajectories["heldout"]), "goal_after": 25, "success": "state",
        "baselines": ["random", "oracle"], "cem": {"samples": 8, "elites": 2, "iterations": 1, "horizon": 3,
                                                   "repeat": 1}, **changes}, "test")


def test_pairs_are_a_trajectory_state_and_its_state_25_steps_later(trajectories):
    s = suite(trajectories)
    env = gym.make(s.env)
    tasks = suites.make_tasks(s, env)
    store = datasets.EpisodeStore(trajectories["tune"])
    assert len({t.episode for t in tasks}) == 3  # each episode at most once
    for task in tasks:
        states, points = store.read(task.episode, "states"), store.read(task.episode, "points")
        t = task.start_step
        assert t in (0, 1)
        _, info = env.reset(seed=task.seed, options=task.reset_options)
        np.testing.assert_allclose(info["state"], states[t], atol=1e-3)  # the recorded start
        np.testing.assert_allclose(task.designated, points[t], atol=1e-3)
        np.testing.assert_allclose(task.goal_state, states[t + 25])  # the recorded goal, 25 steps on
        np.testing.assert_allclose(task.goals, points[t + 25], atol=1e-3)
        assert task.goal_frame.shape == (64, 64, 3)
    twin = suites.make_tasks(suites.heldout(s), env)
    heldout = datasets.EpisodeStore(trajectories["heldout"])
    for task in twin:  # the twin's pairs are the other dataset's
        np.testing.assert_allclose(task.goal_state, heldout.read(task.episode, "states")[task.start_step + 25])
    env.close()


def test_success_is_the_environments_pose_criterion(trajectories):
    s = suite(trajectories)
    env = gym.make(s.env)
    task = suites.make_tasks(s, env)[0]
    goal = task.goal_state
    for state, expected in ((goal, True), (goal + [10, 0, 0, 10, 0.3], True), (goal + [0, 0, 21, 0, 0], False),
                            (goal + [0, 0, 0, 0, 0.36], False)):
        _, info = env.reset(options={"state": list(state)})
        assert suites.judge(s, task, info, env)[1] is expected
    env.close()


def test_rest_action_holds_the_agent_and_centres_the_prior():
    env = gym.make("foresight/PushT-v0")
    env.reset(options={"state": [100.0, 200.0, 300.0, 300.0, 0.5]})
    u = env.unwrapped
    for _ in range(3):
        _, _, _, _, info = env.step(u.rest_action())
    np.testing.assert_allclose(info["state"], [100.0, 200.0, 300.0, 300.0, 0.5], atol=1e-4)
    cem = CEM(CEMConfig(samples=16, elites=4, iterations=2, horizon=4, repeat=1, init_std=0.01), [0, 0], [512, 512])
    cem.set_prior(u.rest_action())
    plan = cem.plan(lambda x: torch.zeros(len(x)))  # every plan costs the same: the plan is the prior
    np.testing.assert_allclose(plan.mean.numpy(), [[100.0, 200.0]] * 4, atol=15)
    cem.set_prior([50.0, 60.0])
    cem.shift(1)  # the decision appended at the end is the prior's
    np.testing.assert_allclose(cem.initial_mean[-1].numpy(), [50.0, 60.0])
    env.close()


def test_oracle_beats_random_over_the_budget(trajectories):
    """On the true simulator the same CEM and cost bring the T's points nearer their goals than random targets."""
    s = suite(trajectories, tasks=2, steps=12, cem={"samples": 24, "elites": 4, "iterations": 2, "horizon": 5,
                                                     "repeat": 1, "init_std": 0.3, "noise_beta": 2.0})
    env = gym.make(s.env)
    tasks = suites.make_tasks(s, env)
    final = {p: np.mean([mpc.run_task(env, t, s, p, record=False).final_distance for t in tasks])
             for p in ("oracle", "random")}
    env.close()
    assert final["oracle"] < 0.7 * final["random"], final


def test_learner_reads_the_action_bounds_and_refuses_other_ones():
    facts = {"frames": [31, 64, 64, 3], "actions": [30, 2], "states": [31, 5], "points": [31, 3, 2],
             "action_space": {"low": [0.0, 0.0], "high": [512.0, 512.0]}}
    learner = VideoLearner.from_recipe({"kind": "video", "variant": "cdna", "image_size": [32, 32]},
                                       TrainSettings(context=2, horizon=8), facts, "t.toml")
    assert (learner.config.action_low, learner.config.action_high) == ((0.0, 0.0), (512.0, 512.0))
    learner.check_data(facts, "data")
    other = {**facts, "action_space": {"low": [-1.0, -1.0], "high": [1.0, 1.0]}}
    with pytest.raises(ForesightError, match=r"^mix: actions span \[-1.0, -1.0\]"):
        learner.check_data(other, "mix")
    assert action_bounds({"action_space": {"low": [-np.inf], "high": [np.inf]}}) == {}
    assert action_bounds({"action_space": {"low": [-1.0, -1.0], "high": [1.0, 1.0]}}) == {}  # nothing to scale


def test_bad_suites_name_their_key(trajectories, tmp_path):
    with pytest.raises(ForesightError, match="key 'goal_data'"):
        suite(trajectories, goal_data="")
    with pytest.raises(ForesightError, match="key 'heldout_goal_data'"):
        suite(trajectories, heldout_goal_data=str(trajectories["tune"]))
    with pytest.raises(ForesightError, match="key 'success'"):
        suite(trajectories, goal="offset")
    env = gym.make("foresight/PushT-v0")
    for changes, key in (({"tasks": 5}, "tasks"), ({"goal_data": str(tmp_path / "none")}, "goal_data"),
                         ({"goal_after": 27}, "goal_after")):
        with pytest.raises(ForesightError, match=f"^s.toml: key '{key}'"):
            suites.make_tasks(dataclasses.replace(suite(trajectories), **changes), env, "s.toml")
    env.close()
    point_push = gym.make("foresight/PointPush-v0")
    with pytest.raises(ForesightError, match="key 'success'.*goal_reached"):
        suites.make_tasks(dataclasses.replace(suite(trajectories), env="foresight/PointPush-v0", designated=1),
                          point_push, "s")
    point_push.close()


def test_gym_pusht_task_goals_are_its_goal_pose_and_success_its_coverage():
    """plan/pusht_gym.toml: gym-pusht's random start, its fixed goal pose's T pixels, success by its coverage."""
    s = suites.load(Path(__file__).resolve().parent.parent / "plan" / "pusht_gym.toml", ["tasks=2"])
    env = gym.make(s.env)
    u = env.unwrapped
    tasks = suites.make_tasks(s, env)
    goal_pose = [0.0, 0.0, *u.sim.goal_pose]
    for task in tasks:
        np.testing.assert_allclose(task.goals, pusht.world_to_pixels(pusht.t_points(goal_pose), 64, 64))
        _, info = env.reset(seed=task.seed, options=task.reset_options)
        assert info["coverage"] < 0.95 and not suites.judge(s, task, info, env)[1]  # a random start is not done
    frame, _ = env.reset(options={"state": [50.0, 50.0, 100.0, 450.0, 0.0]})  # the T far from its goal region
    for r, c in np.round(tasks[0].goals).astype(int):  # the goal pixels show gym-pusht's light green region
        assert frame[r, c, 1] > 200 and frame[r, c, 0] < 180 and frame[r, c, 2] < 180, frame[r, c]
    _, info = env.reset(options={"state": [50.0, 50.0, *u.sim.goal_pose]})  # the T on its goal pose
    assert info["coverage"] > 0.95 and suites.judge(s, tasks[0], info, env)[1]
    _, info = env.reset(options={"state": [50.0, 50.0, u.sim.goal_pose[0] + 12, *u.sim.goal_pose[1:]]})
    assert 0.5 < info["coverage"] < 0.95 and not suites.judge(s, tasks[0], info, env)[1]
    with pytest.raises(ForesightError, match="key 'designated': foresight/PushT-v0 gives 2 goal pixels"):
        suites.make_tasks(dataclasses.replace(s, designated=3), env, "s")
    env.close()
    point_push = gym.make("foresight/PointPush-v0")
    with pytest.raises(ForesightError, match="key 'success'.*is_success"):
        suites.make_tasks(dataclasses.replace(s, env="foresight/PointPush-v0", designated=1, goal="offset"),
                          point_push, "s")
    point_push.close()
