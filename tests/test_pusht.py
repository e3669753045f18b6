"""foresight/PushT-v0: gym-pusht under foresight's environment contract."""
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import foresight  # noqa: F401  (registers the environments)
from foresight.envs import pusht
from foresight.errors import ForesightError

# pygame's LightSlateGray, which gym-pusht's drawing fills 1.2 times lighter inside the outline
T_RGB = np.array([[119, 136, 153], [143, 163, 184]])
# states whose agent is clear of the T (the agent is drawn over it)
STATES = [[100, 100, 256, 256, 0.0], [420, 80, 200, 300, 1.0], [60, 450, 300, 200, -2.5], [450, 450, 150, 150, 4.0]]


@pytest.fixture
def env():
    e = gym.make("foresight/PushT-v0").unwrapped
    yield e
    e.close()


def push_actions(state, rng, n):
    """Targets scattered about the block, so the agent runs into it."""
    return [np.asarray(state[2:4]) + rng.normal(0, 40, 2) for _ in range(n)]


def test_check_env():
    e = gym.make("foresight/PushT-v0", image_size=(48, 80))
    check_env(e.unwrapped, skip_render_check=False)
    obs, _ = e.reset(seed=0)
    assert obs.shape == (48, 80, 3) and obs.dtype == np.uint8
    e.close()


@pytest.mark.parametrize("size", [64, (48, 80)])
def test_points_land_on_their_objects(size):
    """The T's keypoints fall on T-coloured pixels and the agent's on the agent, at any image size (an independent
    check through the picture gym-pusht draws)."""
    e = gym.make("foresight/PushT-v0", image_size=size).unwrapped
    for state in STATES:
        obs, info = e.reset(options={"state": state})
        assert info["points"].shape == (3, 2) and info["points"].dtype == np.float32
        (r0, c0), (r1, c1), (ra, ca) = np.round(info["points"]).astype(int)
        for r, c in ((r0, c0), (r1, c1)):
            assert np.abs(obs[r, c].astype(int) - T_RGB).max(1).min() < 20, (state, obs[r, c])
        blue = obs[ra, ca].astype(int)
        assert blue[2] > 200 and blue[2] - blue[0] > 100, (state, blue)  # RoyalBlue ring, a lighter blue inside
    e.close()


def test_t_points_agree_with_gym_pushts_keypoints(env):
    """The bar's point is the middle of gym-pusht's four bar corners; the stem's lies on the stem's axis 5/6 of the
    way from its base to its end (gym-pusht's get_keypoints: corners 0-3 the bar, 4-7 the stem, in pymunk's order)."""
    for state in STATES:
        env.reset(options={"state": state})
        corners = env.sim.get_keypoints(env.sim._block_shapes)  # (8, 2) world x, y
        bar, stem = corners[:4].mean(0), corners[4:]
        near = np.argsort(np.linalg.norm(stem - bar, axis=1))
        base, end = stem[near[:2]].mean(0), stem[near[2:]].mean(0)
        want = np.stack([bar, base + 5 / 6 * (end - base)])
        np.testing.assert_allclose(pusht.t_points(env.state()), want, atol=1e-6)


def test_reset_state_is_exact_angle_first(env):
    """options["state"] lands exactly: the block at the given origin and angle (gym-pusht's own reset sets the
    position before the angle, which turns the block about its centre of gravity and moves it)."""
    for state in STATES:
        _, info = env.reset(options={"state": state})
        want = np.array(state, dtype=np.float64)
        want[4] %= 2 * np.pi
        np.testing.assert_allclose(env.state(), want, atol=1e-9)
        np.testing.assert_allclose(info["state"], want.astype(np.float32), atol=1e-4)


def test_random_reset_follows_gym_pushts_distribution(env):
    states = np.array([env.reset(seed=s)[1]["state"] for s in range(200)])
    assert (states[:, :2] >= 50).all() and (states[:, :2] < 450).all()
    assert (states[:, 2:4] >= 100).all() and (states[:, 2:4] < 400).all()
    assert np.allclose(states[:, :4], np.round(states[:, :4]))  # integer positions, as gym-pusht draws them
    assert states[:, 4].std() > 1.5  # angles spread over the circle
    assert all(pusht.on_table(s) for s in states)  # never a T in a wall (gym-pusht's draw puts 4% there)


def test_on_table_agrees_with_gym_pushts_corners(env):
    rng = np.random.default_rng(3)
    seen = set()
    for state in np.column_stack([rng.uniform(0, 512, (300, 4)), rng.uniform(-4, 4, 300)]):
        env.reset(options={"state": state})
        corners = env.sim.get_keypoints(env.sim._block_shapes)
        inside = bool(((corners > pusht.WALL_LOW) & (corners < pusht.WALL_HIGH)).all())
        assert pusht.on_table(state) == inside
        seen.add(inside)
    assert seen == {True, False}
    np.testing.assert_array_equal(env.reset(seed=7)[0], env.reset(seed=7)[0])


def test_sim_state_restores_exactly_through_contacts():
    """Saved mid-push (cached contacts in the solver), restored in the same and in a new environment: the next
    30 frames and states are bit-identical to the original's."""
    rng = np.random.default_rng(0)
    a, b = gym.make("foresight/PushT-v0").unwrapped, gym.make("foresight/PushT-v0").unwrapped
    contacts = 0
    for seed in range(6):
        _, info = a.reset(seed=seed)
        for action in push_actions(info["state"], rng, 15):
            _, _, _, _, info = a.step(action)
        saved = a.get_sim_state()
        contacts += saved[2 * len(pusht.BODY_FIELDS) + 2] > 0
        actions = push_actions(info["state"], rng, 30)
        original = [a.step(x) for x in actions]
        for e in (a, b):
            e.set_sim_state(saved)
            for x, (obs, _, _, _, info) in zip(actions, original):
                obs2, _, _, _, info2 = e.step(x)
                np.testing.assert_array_equal(obs2, obs)
                np.testing.assert_array_equal(info2["state"], info["state"])
    assert contacts >= 3  # the check did cover saved contacts
    a.close(), b.close()


def test_rollout_points_match_steps_and_leave_state(env):
    rng = np.random.default_rng(1)
    _, info = env.reset(seed=3)
    actions = np.stack([push_actions(info["state"], rng, 6) for _ in range(4)])  # (4, 6, 2)
    before = env.get_sim_state()
    points = env.rollout_points(actions)
    assert points.shape == (4, 6, 3, 2)
    np.testing.assert_array_equal(env.get_sim_state(), before)
    for n in range(4):
        env.set_sim_state(before)
        stepped = np.stack([env.step(a)[4]["points"] for a in actions[n]])
        np.testing.assert_array_equal(points[n], stepped)


def test_agent_path_is_the_executed_path(env):
    """The PD law alone predicts the agent's pixels, through contacts with the T (the agent is kinematic)."""
    rng = np.random.default_rng(2)
    _, info = env.reset(seed=5)
    env.step(info["state"][2:4])  # under way: a velocity to carry
    actions = np.stack([push_actions(info["state"], rng, 10) + [np.array([600.0, -50.0])]])  # the last one clipped
    path = env.agent_path(actions)
    executed = np.stack([env.step(a)[4]["points"][2] for a in actions[0]])
    np.testing.assert_allclose(path[0], executed, atol=1e-3)
    np.testing.assert_allclose(pusht.agent_pixels(env.state(), 64, 64)[0], executed[-1], atol=1e-3)


def test_relative_actions_offset_the_target_from_the_agent():
    """actions = 'relative': the target is the agent's position plus the offset; the same physics as the target
    itself, agent_path agrees exactly, and the rest action (0) holds the agent."""
    absolute, relative = gym.make("foresight/PushT-v0").unwrapped, gym.make("foresight/PushT-v0", actions="relative").unwrapped
    assert relative.action_space.low.tolist() == [-1, -1] and relative.action_space.high.tolist() == [1, 1]
    start = {"state": [200.0, 300.0, 260.0, 260.0, 0.3]}
    absolute.reset(options=start), relative.reset(options=start)
    rng = np.random.default_rng(4)
    offsets = rng.uniform(-1, 1, (12, 2))
    path = relative.agent_path(offsets[None])[0]
    for a, expected in zip(offsets, path):
        target = absolute.state()[:2] + pusht.RELATIVE_REACH * a
        _, _, _, _, info = relative.step(a)
        _, _, _, _, same = absolute.step(target)
        np.testing.assert_array_equal(info["state"], same["state"])  # the same target, the same physics
        np.testing.assert_allclose(info["points"][2], expected, atol=1e-3)
    assert relative.rest_action().tolist() == [0.0, 0.0]
    held = relative.state()
    for _ in range(30):  # the agent comes to rest where it is
        relative.step(relative.rest_action())
    assert np.linalg.norm(relative.state()[:2] - held[:2]) < 25
    steer = relative.steer_toward(0)
    assert steer.shape == (2,) and np.abs(steer).max() <= 1.0
    absolute.close(), relative.close()


def test_pose_success_and_coverage(env):
    goal = np.array([200, 200, 300, 300, 0.1])
    assert pusht.pose_success(goal, goal)
    assert pusht.pose_success(goal + [10, 0, 0, 10, 0], goal)  # 14 units away
    assert not pusht.pose_success(goal + [15, 0, 0, 15, 0], goal)  # 21 units
    assert pusht.pose_success(goal + [0, 0, 0, 0, 2 * np.pi - 0.3], goal)  # -0.3 rad after wrapping
    assert not pusht.pose_success(goal + [0, 0, 0, 0, 0.4], goal)
    env.reset(options={"state": goal})
    assert env.coverage(goal) == pytest.approx(1.0, abs=1e-6)
    assert env.coverage(goal + [0, 0, 200, 0, 0]) == 0.0
    assert 0.0 < env.coverage(goal + [0, 0, 20, 0, 0]) < 1.0
    assert env.sim.goal_pose.tolist() == [256, 256, np.pi / 4]  # gym-pusht's drawn goal stays


def test_bad_input_one_line(env):
    env.reset(seed=0)
    before = env.get_sim_state()
    cases = [
        (lambda: env.reset(options={"start": 1}), "options['start']: unknown reset option"),
        (lambda: env.reset(options={"state": [1, 2, 3]}), "options['state']: expected 5 finite numbers"),
        (lambda: env.reset(options={"state": [1, 2, 3, 4, np.nan]}), "options['state']: expected 5 finite"),
        (lambda: env.step([np.inf, 3.0]), "foresight/PushT-v0: action [inf, 3] is not finite"),
        (lambda: env.step([1.0]), "foresight/PushT-v0: action [1] has 1 numbers"),
        (lambda: env.set_sim_state(before[:-1]), f"state: expected {pusht.STATE_SIZE} finite numbers"),
        (lambda: env.rollout_points(np.zeros((2, 3))), "foresight/PushT-v0: action sequences of shape (2, 3)"),
        (lambda: gym.make("foresight/PushT-v0", image_size=0), "image_size: expected positive ints"),
        (lambda: gym.make("foresight/PushT-v0", actions="velocity"), "actions: expected one of target, relative"),
    ]
    for call, message in cases:
        with pytest.raises(ForesightError) as e:
            call()
        assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    np.testing.assert_array_equal(env.get_sim_state(), before)  # the failed calls touched nothing
