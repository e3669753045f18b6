"""The MuJoCo scenes (PointPush, ArmPush) and the camera module."""
import os
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import load_env_creator
from gymnasium.utils.env_checker import check_env

import foresight  # noqa: F401  (registers the envs, selects EGL)
import mujoco
from foresight.envs import camera as camera_module
from foresight.envs import point_push
from foresight.envs.camera import image_shape, project
from foresight.errors import ForesightError


@pytest.fixture
def make():
    """gym.make that closes what it made."""
    envs = []

    def _make(env_id, **kwargs):
        envs.append(gym.make(env_id, **kwargs))
        return envs[-1]

    yield _make
    for env in envs:
        env.close()


def rollout(env, actions):
    """Step through `actions`; return the stacked observations and info states."""
    frames, states = [], []
    for a in actions:
        obs, _, terminated, truncated, info = env.step(a)
        assert not terminated and not truncated
        frames.append(obs)
        states.append(info["state"])
    return np.stack(frames), np.stack(states)


def nearest_color(pixel, palette):
    """Index of the palette colour (P, 3) nearest to `pixel` (3,)."""
    return int(np.argmin(np.linalg.norm(palette.astype(float) - pixel.astype(float), axis=1)))


# ---------------------------------------------------------------- camera


def test_project_convention():
    # camera 2 m above the origin looking down (identity orientation: image right = +x, up = +y)
    pos, mat, fovy, h, w = np.array([0, 0, 2.0]), np.eye(3), 60.0, 48, 80
    half = 2.0 * np.tan(np.deg2rad(fovy) / 2)  # half the visible height on the floor
    points = np.array([[0, 0, 0], [0, half, 0], [0, -half, 0], [half * w / h, 0, 0], [0.1, 0.2, 0]])
    px = project(points, pos, mat, fovy, h, w)
    assert px.dtype == np.float32 and px.shape == (5, 2)
    centre = ((h - 1) / 2, (w - 1) / 2)
    np.testing.assert_allclose(px[0], centre, atol=1e-4)
    np.testing.assert_allclose(px[1], (-0.5, centre[1]), atol=1e-4)  # top edge of the image
    np.testing.assert_allclose(px[2], (h - 0.5, centre[1]), atol=1e-4)  # bottom edge
    np.testing.assert_allclose(px[3], (centre[0], w - 0.5), atol=1e-4)  # right edge (aspect from W/H)
    assert px[4, 0] < centre[0] and px[4, 1] > centre[1]  # +y is up, +x is right


def test_image_shape_validation():
    assert image_shape(64) == (64, 64) and image_shape((48, 80)) == (48, 80) and image_shape([80, 48]) == (80, 48)
    for bad in [0, -3, 64.0, "64", (64,), (64, 64, 3), (0, 64), True, None]:
        with pytest.raises(ForesightError, match="image_size"):
            image_shape(bad)


# ---------------------------------------------------------------- both envs

ENVS = [("foresight/PointPush-v0", {"objects": 1}), ("foresight/PointPush-v0", {"objects": 3}),
        ("foresight/PointPush-v0", {"objects": 3, "min_objects": 1, "colors": "random", "block_size": [0.03, 0.05]}),
        ("foresight/ArmPush-v0", {})]


@pytest.mark.parametrize("env_id", ["foresight/PointPush-v0", "foresight/ArmPush-v0"])
def test_renderer_made_on_first_render_in_the_rendering_process(make, env_id):
    """No EGL context before the first render (gymnasium's async vector env builds one env in the parent, then
    forks); a renderer that another process made is dropped untouched and a new one made, drawing the same."""
    env = make(env_id)
    camera = env.unwrapped.camera
    assert camera._renderer is None  # building the environment made no OpenGL context
    obs, _ = env.reset(seed=2)
    first = camera._renderer
    assert first is not None and camera._pid == os.getpid()
    assert camera.renderer is first  # reused in the same process
    camera._pid = -1  # as if made by the parent before a fork
    inherited = len(camera_module._INHERITED)
    again = env.render()
    assert camera._renderer is not first and camera._pid == os.getpid()
    assert camera_module._INHERITED[inherited:] == [first]  # kept, not closed: not this process's to free
    assert first._mjr_context is not None
    assert np.array_equal(again, obs)
    camera.close()
    camera.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        env.render()


@pytest.mark.parametrize("env_id,kwargs", ENVS)
def test_check_env(make, env_id, kwargs):
    env = make(env_id, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
    # ArmPush keeps Pusher-v5's [-2, 2] torque range, which the checker comments on
    caught = [w for w in caught if "symmetric and normalized" not in str(w.message)]
    assert not caught, [str(w.message) for w in caught]


@pytest.mark.parametrize("env_id,kwargs", ENVS)
def test_contract(make, env_id, kwargs):
    env = make(env_id, image_size=(48, 80), **kwargs)
    u = env.unwrapped
    k = len(u.point_names)
    assert u.metadata["render_modes"] == ["rgb_array"] and u.metadata["render_fps"] == 20
    assert env.observation_space == gym.spaces.Box(0, 255, (48, 80, 3), np.uint8)
    assert u.object_colors.shape == (k, 3) and u.object_colors.dtype == np.uint8
    obs, info = env.reset(seed=0)
    for _ in range(2):
        assert obs.shape == (48, 80, 3) and obs.dtype == np.uint8 and obs.std() > 10
        assert info["state"].dtype == np.float32 and info["state"].ndim == 1
        assert info["points"].dtype == np.float32 and info["points"].shape == (k, 2)
        np.testing.assert_array_equal(env.render(), obs)
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert np.isscalar(reward) and not terminated and not truncated


@pytest.mark.parametrize("env_id,kwargs", ENVS)
def test_same_seed_same_episode(make, env_id, kwargs):
    env = make(env_id, **kwargs)
    actions = np.random.default_rng(0).uniform(-1, 1, (5, env.action_space.shape[0])).astype(np.float32)
    runs = []
    for seed in (7, 7, 8):
        obs, info = env.reset(seed=seed)
        frames, states = rollout(env, actions)
        runs.append((np.concatenate([obs[None], frames]), np.concatenate([info["state"][None], states])))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0][0], runs[2][0][0])


@pytest.mark.parametrize("env_id,kwargs", ENVS)
def test_sim_state_round_trip(make, env_id, kwargs):
    env = make(env_id, **kwargs)
    u = env.unwrapped
    rng = np.random.default_rng(1)
    sample = lambda n: rng.uniform(-1, 1, (n, env.action_space.shape[0])).astype(np.float32)  # noqa: E731
    env.reset(seed=3)
    obs, *_ = env.step(sample(1)[0])
    rollout(env, sample(10))  # get things moving (contacts, warm start)
    saved, here = u.get_sim_state(), env.render()
    assert saved.dtype == np.float64 and saved.ndim == 1
    actions = sample(8)
    frames, states = rollout(env, actions)
    rollout(env, sample(6))  # wander off
    u.set_sim_state(saved)
    np.testing.assert_array_equal(env.render(), here)
    frames2, states2 = rollout(env, actions)
    np.testing.assert_array_equal(frames2, frames)
    np.testing.assert_array_equal(states2, states)
    with pytest.raises(ForesightError, match="state"):
        u.set_sim_state(saved[:-1])


@pytest.mark.parametrize("env_id", ["foresight/PointPush-v0", "foresight/ArmPush-v0"])
def test_bad_options(env_id):
    for kwargs in [{"image_size": 0}, {"image_size": (64, 64, 3)}, {"image_size": "64"}]:
        with pytest.raises(ForesightError, match="image_size"):
            gym.make(env_id, **kwargs)
    # straight to the class: gym.make answers render_mode="human" itself with a wrapper
    env_class = load_env_creator(gym.spec(env_id).entry_point)
    with pytest.raises(ForesightError, match="render_mode"):
        env_class(render_mode="depth_array")


# ---------------------------------------------------------------- PointPush


def test_point_push_objects_option():
    for bad in [0, 4, 1.5, "2", True, None]:
        with pytest.raises(ForesightError, match="objects"):
            gym.make("foresight/PointPush-v0", objects=bad)


@pytest.mark.parametrize("size", [64, (48, 80)])
def test_point_push_points_on_their_objects(make, size):
    """Independent of the projection code: each projected centre must fall inside the blob of
    its object's colour, near the blob's centroid, in the rendered frames."""
    env = make("foresight/PointPush-v0", objects=3, image_size=size)
    u = env.unwrapped
    palette = np.concatenate([u.object_colors, np.round(255 * np.array(
        [point_push.FLOOR_RGB, point_push.WALL_RGB, point_push.PUSHER_RGB])).astype(np.uint8)])
    assert len(np.unique(palette, axis=0)) == len(palette)  # distinct colours
    rng = np.random.default_rng(0)
    checked = 0
    for seed in range(3):
        obs, info = env.reset(seed=seed)
        for t in range(8):
            h, w = obs.shape[:2]
            for k, color in enumerate(u.object_colors):
                r, c = info["points"][k]
                assert 0 <= r <= h - 1 and 0 <= c <= w - 1
                assert nearest_color(obs[int(round(r)), int(round(c))], palette) == k
                rows, cols = np.nonzero((obs == color).all(-1))
                assert len(rows) >= 20  # the top face is drawn in exactly the object's colour
                assert np.hypot(rows.mean() - r, cols.mean() - c) < 1.0
                checked += 1
            obs, _, _, _, info = env.step(rng.uniform(-1, 1, 2))
    assert checked == 3 * 8 * 3


def test_point_push_pusher_moves_objects(make):
    env = make("foresight/PointPush-v0", objects=1)
    u = env.unwrapped
    env.reset(seed=0)
    u.data.qpos[:5] = [-0.15, 0.0, -0.05, 0.0, 0.0]  # pusher left of the block, both on y = 0
    mujoco.mj_forward(u.model, u.data)
    start = u.render()
    before = u.camera.project(u.data, u.data.xpos[u._block_ids])[0]
    for _ in range(8):
        obs, _, _, _, info = env.step(np.array([1.0, 0.0], np.float32))
    moved = info["points"][0] - before
    assert moved[1] > 5 and abs(moved[0]) < 2  # pushed right by several pixels, little sideways
    assert not np.array_equal(obs, start)


def test_point_push_stays_in_view(make):
    env = make("foresight/PointPush-v0", objects=3, image_size=(48, 80))
    env.reset(seed=5)
    rng = np.random.default_rng(5)
    action = rng.uniform(-1, 1, 2)
    for t in range(150):
        if t % 10 == 0:  # long straight drives, into the walls
            action = rng.uniform(-1, 1, 2)
        _, _, _, _, info = env.step(action)
        pts = info["points"]
        assert (pts >= 0).all() and (pts[:, 0] <= 47).all() and (pts[:, 1] <= 79).all()
    qpos = info["state"][:11]  # pusher x, y, then (x, y, yaw) per block
    positions = np.concatenate([qpos[:2], qpos[2:].reshape(3, 3)[:, :2].ravel()])
    assert np.abs(positions).max() < point_push.ARENA  # inside the walls


# ---------------------------------------------------------------- ArmPush


def test_arm_push_is_gymnasium_pusher(make):
    """Same reset distribution and dynamics as gymnasium's Pusher-v5, bit for bit."""
    env = make("foresight/ArmPush-v0")
    ref = gym.make("Pusher-v5").unwrapped
    for seed in (0, 1):
        _, info = env.reset(seed=seed)
        ref_obs, _ = ref.reset(seed=seed)
        np.testing.assert_array_equal(info["state"], ref_obs.astype(np.float32))
        rng = np.random.default_rng(seed)
        for _ in range(40):
            a = rng.uniform(-2, 2, 7).astype(np.float32)
            _, reward, _, _, info = env.step(a)
            ref_obs, ref_reward, *_ = ref.step(a)
            np.testing.assert_array_equal(info["state"], ref_obs.astype(np.float32))
            assert reward == ref_reward
    ref.close()


@pytest.mark.parametrize("size", [64, (48, 80)])
def test_arm_push_points_on_object_and_goal(make, size):
    env = make("foresight/ArmPush-v0", image_size=size)
    u = env.unwrapped
    table = np.array([150, 150, 150], np.uint8)  # Pusher's grey table, lit unevenly
    palette = np.stack([u.object_colors[0], u.goal_color, table, np.zeros(3, np.uint8)])
    rng = np.random.default_rng(0)
    for seed in range(4):
        obs, info = env.reset(seed=seed)
        for t in range(3):  # small torques: the arm stays clear of the object and goal
            h, w = obs.shape[:2]
            r, c = np.round(info["points"][0]).astype(int)
            assert nearest_color(obs[r, c], palette) == 0
            gr, gc = np.round(info["goal_pixel"]).astype(int)
            assert nearest_color(obs[gr, gc], palette) == 1
            # the goal disc's red blob is centred on the goal pixel
            rows, cols = np.nonzero((obs[..., 0] > 200) & (obs[..., 1] < 140))
            assert np.hypot(rows.mean() - info["goal_pixel"][0], cols.mean() - info["goal_pixel"][1]) < 1.0
            obs, _, _, _, info = env.step(rng.uniform(-0.2, 0.2, 7).astype(np.float32))


def test_arm_push_steering_pushes_the_object(make):
    """Always steering toward the object pushes it >= 2 px within 40 steps for most resets."""
    env = make("foresight/ArmPush-v0")
    u = env.unwrapped
    moved = []
    for seed in range(6):
        _, info = env.reset(seed=seed)
        start, farthest = info["points"][0], 0.0
        state = u.get_sim_state()
        action = u.steer_toward(0)
        # a function of the current state that leaves the simulation alone
        np.testing.assert_array_equal(u.get_sim_state(), state)
        np.testing.assert_array_equal(u.steer_toward(0), action)
        for _ in range(40):
            assert action.shape == (7,) and action.dtype == np.float32 and np.abs(action).max() <= 2.0
            _, _, _, _, info = env.step(action)
            farthest = max(farthest, float(np.linalg.norm(info["points"][0] - start)))
            action = u.steer_toward(0)
        moved.append(farthest)
    assert sum(m >= 2.0 for m in moved) >= 4, moved  # (seed 0's object is too near the shoulder to reach)


@pytest.mark.parametrize("env_id", ["foresight/PointPush-v0", "foresight/ArmPush-v0"])
def test_rollout_points_matches_stepping_and_restores_the_state(env_id):
    env = gym.make(env_id)
    env.reset(seed=5)
    u = env.unwrapped
    rng = np.random.default_rng(0)
    actions = rng.uniform(env.action_space.low, env.action_space.high, (3, 6, *env.action_space.shape))
    before = u.get_sim_state()
    predicted = u.rollout_points(actions)
    assert predicted.shape == (3, 6, len(u.point_names), 2)
    assert np.array_equal(u.get_sim_state(), before)
    stepped = [env.step(a)[4]["points"] for a in actions[1]]
    assert np.allclose(predicted[1], np.stack(stepped), atol=1e-4)
    env.close()


def test_point_push_action_repeat_is_repeated_control_steps(make):
    """One step with action_repeat = 3 is exactly three steps of the same action."""
    coarse, fine = make("foresight/PointPush-v0", action_repeat=3), make("foresight/PointPush-v0")
    coarse.reset(seed=4), fine.reset(seed=4)
    assert coarse.unwrapped.dt == pytest.approx(3 * fine.unwrapped.dt)
    for action in np.random.default_rng(4).uniform(-1, 1, (5, 2)).astype(np.float32):
        obs_c, _, _, _, info_c = coarse.step(action)
        for _ in range(3):
            obs_f, _, _, _, info_f = fine.step(action)
        assert np.array_equal(info_c["state"], info_f["state"]) and np.array_equal(obs_c, obs_f)
    with pytest.raises(ForesightError, match="action_repeat: expected an int >= 1"):
        make("foresight/PointPush-v0", action_repeat=0)


def test_point_push_push_along_moves_the_block_along_the_direction():
    """push_along gets behind the block without shoving it off course, then pushes it along the direction:
    after 12 steps (36 control steps) the block has moved mostly along it, from every side the pusher starts on."""
    env = gym.make("foresight/PointPush-v0", action_repeat=3)
    u = env.unwrapped
    along, across = [], []
    for seed, angle in zip(range(8), np.linspace(-np.pi, np.pi, 8, endpoint=False) + 0.3):
        env.reset(seed=seed, options={"pusher_near": 0.02})
        start = u.data.xpos[u._block_ids[0], :2].copy()
        state = u.get_sim_state()
        action = u.push_along(0, angle)
        np.testing.assert_array_equal(u.get_sim_state(), state)  # a function of the state that leaves it alone
        for _ in range(12):
            assert action.shape == (2,) and action.dtype == np.float32 and np.linalg.norm(action) <= 1 + 1e-6
            env.step(action)
            action = u.push_along(0, angle)
        moved = u.data.xpos[u._block_ids[0], :2] - start
        d = np.array([np.cos(angle), np.sin(angle)])
        along.append(moved @ d), across.append(abs(moved[0] * d[1] - moved[1] * d[0]))
    along, across = np.array(along), np.array(across)
    assert (along > 0.04).sum() >= 6, along  # >= 4.7 px at 64x64 (walls stop a few)
    assert (along > 2 * across).sum() >= 6, (along, across)
    env.close()


def test_point_push_pusher_pixels_from_states_land_on_the_pusher(make):
    """pusher_pixels (states only) agrees with the camera's projection of the pusher body and, independently,
    with the centroid of the pusher's dark disc in the rendered frames."""
    env = make("foresight/PointPush-v0", image_size=(48, 64))
    u = env.unwrapped
    obs, info = env.reset(seed=4)
    rng = np.random.default_rng(4)
    states, frames, projected = [], [], []
    for _ in range(12):
        obs, _, _, _, info = env.step(rng.uniform(-1, 1, 2))
        states.append(info["state"]), frames.append(obs)
        projected.append(u.camera.project(u.data, u.data.xpos[u.model.body("pusher").id][None]))
    pixels = point_push.pusher_pixels(np.stack(states), 48, 64)  # (T, 1, 2)
    assert pixels.shape == (12, 1, 2) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, np.stack(projected), atol=1e-3)
    for (r, c), obs in zip(pixels[:, 0], frames):
        rows, cols = np.nonzero(obs.astype(int).sum(-1) < 100)  # the pusher is the only near-black thing
        assert len(rows) >= 10 and np.hypot(rows.mean() - r, cols.mean() - c) < 0.5


def test_point_push_pusher_path_follows_the_simulated_pusher(make):
    """pusher_path (kinematics alone, no simulation) lands near the simulator's pusher when nothing is in its way:
    the servo's lag keeps it within ~1.5 px (64x64) over 8 actions held 3 control steps."""
    env = make("foresight/PointPush-v0", action_repeat=3)
    u = env.unwrapped
    obs, info = env.reset(seed=2)
    pusher = point_push.pusher_pixels(info["state"], 64, 64)[0]
    block = info["points"][0]
    away = (pusher - block) / np.linalg.norm(pusher - block)  # (row, col): move away from the block
    # rows grow downward = world -y; cols grow with world x, so the action (x, y) away is (col, -row)
    actions = np.tile(0.4 * np.array([away[1], -away[0]]), (1, 8, 1)) + 0.2 * np.sin(np.arange(8))[None, :, None]
    path = point_push.pusher_path(info["state"], actions, 64, 64, action_repeat=3)
    assert path.shape == (1, 8, 2)
    start = u.get_sim_state()
    for t, a in enumerate(actions[0]):
        _, _, _, _, info = env.step(a)
        true = point_push.pusher_pixels(info["state"], 64, 64)[0]
        assert np.hypot(*(path[0, t] - true)) < 1.5, (t, path[0, t], true)
    assert np.hypot(*(path[0, -1] - pusher)) > 8  # it did move
    u.set_sim_state(start)
    # walls: a long push into one stops at it
    far = point_push.pusher_path(info["state"], np.ones((1, 40, 2)), 64, 64, action_repeat=3)
    np.testing.assert_allclose(far[0, -1], far[0, -2])


def test_point_push_pusher_path_comes_back_from_a_wall(make):
    """Driven into a wall and back, the path follows the simulated pusher: a wall stops it, and the next action
    moves it from where it stopped (not from where the commands alone would have taken it). Full speed from rest,
    the servo's lag is up to ~2 px; the commands alone would put the pusher ~35 px behind the wall."""
    env = make("foresight/PointPush-v0", action_repeat=3)
    u = env.unwrapped
    env.reset(seed=0)
    u.data.qpos[:5] = [0.0, 0.1, 0.15, -0.15, 0.0]  # the pusher mid-table, the block far from its path
    point_push.mujoco.mj_forward(u.model, u.data)
    state = np.concatenate([u.data.qpos, u.data.qvel]).astype(np.float32)
    actions = np.array([[-1.0, 0.0]] * 8 + [[1.0, 0.0]] * 3)[None]  # 8 x 7.5 px left reaches the wall; back
    path = point_push.pusher_path(state, actions, 64, 64, action_repeat=3)
    for t, a in enumerate(actions[0]):
        _, _, _, _, info = env.step(a.astype(np.float32))
        true = point_push.pusher_pixels(info["state"], 64, 64)[0]
        assert np.hypot(*(path[0, t] - true)) < 2.5, (t, path[0, t], true)
