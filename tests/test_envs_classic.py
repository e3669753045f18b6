"""The classic E2C pixel systems: foresight/Planar-v0 and foresight/Pendulum-v0."""
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import foresight  # noqa: F401  (registers the environments)
from foresight.envs.pendulum import PendulumEnv, render_angle
from foresight.envs.planar import PlanarEnv
from foresight.errors import ForesightError

# gymnasium's passive checker (gym.make) expects 3 channels from rgb_array; these systems are grey.
pytestmark = pytest.mark.filterwarnings("ignore:.*last axis has three dimensions:UserWarning")

PLANAR_CENTRES = [(20.5, 5.5), (20.5, 13.5), (20.5, 27.5), (20.5, 35.5), (10.5, 20.5), (30.5, 20.5)]


@pytest.mark.parametrize("env_id", ["foresight/Planar-v0", "foresight/Pendulum-v0"])
def test_gymnasium_checker(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*symmetric and normalized space.*")
        check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["state"].dtype == np.float32 and info["state"].shape == (2,)
    assert info["points"].dtype == np.float32 and info["points"].shape == (1, 2)
    assert len(env.unwrapped.point_names) == 1
    obs2, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert not terminated and not truncated and isinstance(reward, float)
    assert np.array_equal(env.render(), obs2)


# --- Planar --------------------------------------------------------------------------------------


def planar_valid(a, b):
    """Independent validity check (PCC's planar MDP): the 3x3 square stays on the 40x40 map and holds no
    obstacle centre, edges included."""
    if not (1.5 <= a <= 38.5 and 1.5 <= b <= 38.5):
        return False
    return not any(a - 1.5 <= ca <= a + 1.5 and b - 1.5 <= cb <= b + 1.5 for ca, cb in PLANAR_CENTRES)


def planar_at(state):
    env = PlanarEnv()
    obs, info = env.reset(options={"state": state})
    return env, obs, info


def test_planar_move_into_obstacle_is_blocked():
    env, obs, _ = planar_at([16.0, 5.5])  # the centre 4.5 above the obstacle at (20.5, 5.5)
    obs2, _, _, _, info = env.step(np.array([3.0, 0.0], np.float32))  # would end 1.5 from it: the square's edge
    assert np.array_equal(info["state"], [16.0, 5.5]) and np.array_equal(obs2, obs)
    _, _, _, _, info = env.step(np.array([2.75, 0.0], np.float32))  # ends 1.75 away: the rim of the disk, allowed
    assert np.array_equal(info["state"], [18.75, 5.5])
    env.set_sim_state([17.5, 8.0])
    _, _, _, _, info = env.step(np.array([3.0, -3.0], np.float32))  # (20.5, 5.0): the centre inside the square
    assert np.array_equal(info["state"], [17.5, 8.0])


def test_planar_gaps_between_obstacles_let_the_agent_through():
    """Between the obstacles at columns 5.5 and 13.5 of the middle row, and beside the map's edge, the agent
    goes straight down past the wall of disks."""
    for column in (9.5, 2.0, 7.5):  # 7.5: over the rim of the disk at column 5.5, 2 from its centre
        env, _, _ = planar_at([17.0, column])
        for _ in range(3):
            _, _, _, _, info = env.step(np.array([3.0, 0.0], np.float32))
        assert np.array_equal(info["state"], [26.0, column])


def test_planar_only_where_a_move_ends_counts():
    start, action = np.array([18.0, 5.0]), np.array([1.5, 2.5], np.float32)
    # both ends are valid, but 70% of the way the centre is (19.05, 6.75), inside the obstacle's square
    assert planar_valid(*start) and planar_valid(*(start + action)) and not planar_valid(19.05, 6.75)
    env, _, _ = planar_at(start)
    _, _, _, _, info = env.step(action)
    assert np.array_equal(env.unwrapped.get_sim_state(), start + action.astype(np.float64))


def test_planar_walls_stop_the_agent():
    env, _, _ = planar_at([2.0, 38.0])
    _, _, _, _, info = env.step(np.array([-3.0, 3.0], np.float32))  # into the corner: stops there
    assert np.array_equal(env.unwrapped.get_sim_state(), [1.5, 38.5])
    _, _, _, _, info = env.step(np.array([-2.0, -3.0], np.float32))  # along the top wall: slides
    assert np.array_equal(env.unwrapped.get_sim_state(), [1.5, 35.5])
    env.set_sim_state([37.0, 3.0])
    _, _, _, _, info = env.step(np.array([3.0, -3.0], np.float32))
    assert np.array_equal(env.unwrapped.get_sim_state(), [38.5, 1.5])


def test_planar_free_move_is_exactly_the_action_and_actions_are_clipped():
    env, _, _ = planar_at([5.0, 5.0])
    action = np.array([0.7, -0.3], np.float32)
    _, _, _, _, info = env.step(action)
    expected = np.array([5.0, 5.0]) + action.astype(np.float64)
    assert np.array_equal(env.get_sim_state(), expected)
    assert np.array_equal(info["state"], expected.astype(np.float32))
    np.testing.assert_allclose(info["points"], [expected - 0.5], atol=1e-6)
    env.set_sim_state([10.0, 30.0])
    env.step(np.array([10.0, -10.0], np.float32))  # beyond [-3, 3]: clipped
    assert np.array_equal(env.get_sim_state(), [13.0, 27.0])


def pixel_distance_range(i, j, ca, cb):
    """Nearest and farthest distance from (ca, cb) to pixel (i, j)'s square [i, i+1] x [j, j+1]."""
    na, nb = min(max(ca, i), i + 1), min(max(cb, j), j + 1)
    fa, fb = max(abs(ca - i), abs(ca - i - 1)), max(abs(cb - j), abs(cb - j - 1))
    return math.hypot(na - ca, nb - cb), math.hypot(fa, fb)


def test_planar_image_shows_obstacles_where_the_centres_say_and_the_agent_in_white():
    state = np.array([37.0, 3.0])
    _, obs, info = planar_at(state)
    img = obs[:, :, 0].astype(int)
    agent = np.zeros_like(img, dtype=bool)
    agent[34:40, 0:6] = True  # the square [35.5, 38.5] x [1.5, 4.5] touches only these pixels
    inside = outside = 0
    for i in range(40):
        for j in range(40):
            if agent[i, j]:
                continue
            dists = [pixel_distance_range(i, j, ca, cb) for ca, cb in PLANAR_CENTRES]
            if any(far <= 2.5 for _, far in dists):  # wholly inside a disk
                assert img[i, j] == 128, (i, j)
                inside += 1
            elif all(near >= 2.5 for near, _ in dists):  # wholly outside every disk
                assert img[i, j] == 0, (i, j)
                outside += 1
            else:  # partly covered: some grey, never white
                assert 0 < img[i, j] <= 128, (i, j)
    assert inside == 6 * 9 and outside > 1400  # each disk holds a 3x3 block of whole pixels
    # the agent: its centre pixel and the 2x2 block of whole pixels it covers are white
    r, c = np.rint(info["points"][0]).astype(int)
    assert img[r, c] == 255
    assert np.all(img[36:38, 2:4] == 255)
    np.testing.assert_allclose(img[agent].sum() / 255, 9.0, atol=0.05)  # area 3x3, anti-aliased


def test_planar_points_lie_on_white_agent_pixels():
    env = PlanarEnv()
    for seed in range(50):
        obs, info = env.reset(seed=seed)
        a, b = info["state"].astype(np.float64)
        assert planar_valid(a, b)
        np.testing.assert_allclose(info["points"][0], [a - 0.5, b - 0.5], atol=1e-5)
        r, c = np.rint(info["points"][0]).astype(int)
        assert obs[r, c, 0] == 255


def test_planar_subpixel_moves_change_the_image():
    env, obs, _ = planar_at([5.0, 5.0])
    obs2, _, _, _, _ = env.step(np.array([0.25, 0.0], np.float32))
    assert not np.array_equal(obs, obs2)


def test_planar_reset_options_and_invalid_states():
    for a in np.linspace(3, 7, 5):
        for b in np.linspace(3, 7, 5):
            _, _, info = planar_at([a, b])  # evaluation starts
            assert np.array_equal(info["state"], np.float32([a, b]))
    for goal in ([37.0, 37.0], [37.0, 3.0], [3.0, 37.0]):
        planar_at(goal)
    for bad in ([20.5, 5.5], [19.0, 4.0], [1.0, 20.0], [20.0, 39.0]):  # [19, 4]: the obstacle on the corner
        with pytest.raises(ForesightError, match=str(bad[0])):
            planar_at(bad)
    with pytest.raises(ForesightError, match="state"):
        planar_at([1.0, 2.0, 3.0])
    env = PlanarEnv()
    with pytest.raises(ForesightError):
        env.set_sim_state([20.5, 13.5])


def test_planar_random_resets_are_valid_and_spread_out():
    env = PlanarEnv()
    states = np.array([env.reset(seed=s)[1]["state"] for s in range(300)], dtype=np.float64)
    assert all(planar_valid(a, b) for a, b in states)
    assert states.min() < 5 and states.max() > 35
    assert len({(a > 20, b > 20) for a, b in states}) == 4  # every quadrant


# --- Pendulum ------------------------------------------------------------------------------------


def pendulum_at(state, **kwargs):
    env = PendulumEnv(**kwargs)
    obs, info = env.reset(options={"state": state})
    return env, obs, info


# PCC's pendulum (mdp/pendulum_mdp.py, mdp/pole_base.py), written out here independently of the environment
PCC_G, PCC_MASS, PCC_LENGTH, PCC_DT = 9.81, 0.1, 0.5, 1 / 50
PCC_INERTIA = PCC_MASS * PCC_LENGTH**2 / 3


def pcc_derivative(y, u):
    return np.array([y[1], (PCC_MASS * PCC_G * PCC_LENGTH * math.sin(math.pi - y[0]) - u) / PCC_INERTIA])


def fine_step(th, w, u, n=4000):
    """One PCC step by the explicit midpoint rule in n sub-steps (error ~1e-10): a different integrator."""
    y, h = np.array([th, w], dtype=np.float64), PCC_DT / n
    for _ in range(n):
        y = y + h * pcc_derivative(y + 0.5 * h * pcc_derivative(y, u), u)
    return y


def test_pendulum_step_matches_an_independent_fine_integration_of_pccs_equation():
    rng = np.random.default_rng(0)
    for th, w, u in [(0.3, -0.5, 0.0), (2.9, 0.0, 0.65), (-1.2, 7.0, -1.0), *rng.uniform([-3, -9, -1], [3, 9, 1], (5, 3))]:
        env, _, _ = pendulum_at([th, w])
        _, reward, _, _, _ = env.step(np.array([u], np.float32))
        assert reward == pytest.approx(-(th**2 + 0.1 * w**2 + 0.001 * float(np.float32(u)) ** 2))
        want = fine_step(th, w, float(np.float32(u)))
        got = env.get_sim_state()
        assert math.remainder(got[0] - want[0], 2 * math.pi) == pytest.approx(0.0, abs=1e-7)
        assert got[1] == pytest.approx(want[1], abs=1e-6)  # no clipping from these states


def test_pendulum_first_step_from_rest_is_the_analytic_small_dt_value():
    # from rest theta(dt) = theta0 + a dt^2 / 2 + O(dt^4 ...), omega(dt) = a dt + O(dt^3), a = 3 g / l sin(theta0) - 3 u / (m l^2)
    for th, u in [(0.2, 0.0), (2.9, 0.65), (-1.0, 0.3)]:
        a = 3 * 9.81 / 0.5 * math.sin(th) - 3 * u / (0.1 * 0.5**2)
        env, _, _ = pendulum_at([th, 0.0])
        env.step(np.array([u], np.float32))
        got = env.get_sim_state()
        assert got[1] == pytest.approx(a * 0.02, rel=0.02)
        assert got[0] - th == pytest.approx(a * 0.02**2 / 2, rel=0.02)


def test_pendulum_signs_gravity_pulls_away_from_upright_and_positive_torque_turns_negative():
    env, _, _ = pendulum_at([0.1, 0.0])
    env.step(np.zeros(1, np.float32))
    assert env.get_sim_state()[1] > 0  # falls further from upright
    env, _, _ = pendulum_at([0.0, 0.0])
    env.step(np.array([0.5], np.float32))
    assert env.get_sim_state()[1] < 0  # PCC: minus the torque
    # the largest gravity torque m g l = 0.49 is below the protocol's 0.65: even horizontal the push wins
    env, _, _ = pendulum_at([math.pi / 2, 0.0], max_torque=0.65)
    env.step(np.array([0.65], np.float32))
    assert env.get_sim_state()[1] < 0


def test_pendulum_swing_up_is_reachable_under_the_protocol():
    # PCC / PC3's swing-up: start at rest in [2.83, 2.98], torque <= 0.65, goal |theta| <= pi / 6 in 100 steps
    for th0 in (2.83, 2.98):
        env, _, _ = pendulum_at([th0, 0.0], max_torque=0.65)
        for step in range(1, 101):
            env.step(np.array([0.65], np.float32))
            if abs(env.get_sim_state()[0]) <= math.pi / 6:
                break
        assert step <= 20, step


def test_pendulum_energy_is_conserved_without_torque():
    # E = I w^2 / 2 + m g l cos(theta), I = m l^2 / 3: constant without torque (RK4 keeps it to ~1e-7)
    def energy(s):
        return PCC_INERTIA * s[1] ** 2 / 2 + PCC_MASS * PCC_G * PCC_LENGTH * math.cos(s[0])

    env, _, _ = pendulum_at([math.pi - 0.4, 0.0])
    e0 = energy(env.get_sim_state())
    swing = []
    for _ in range(300):
        env.step(np.zeros(1, np.float32))
        s = env.get_sim_state()
        swing.append(s[0])
        assert energy(s) == pytest.approx(e0, abs=1e-5 * abs(e0))
    swing = np.mod(np.array(swing), 2 * np.pi)  # around pi: it swings both sides of the bottom
    assert swing.min() < math.pi - 0.39 and swing.max() > math.pi + 0.39


def test_pendulum_matches_scipy_solve_ivp_as_pcc_integrates_when_scipy_is_there():
    integrate = pytest.importorskip("scipy.integrate")
    rng = np.random.default_rng(1)
    env = PendulumEnv()
    for _ in range(50):
        th, w, u = rng.uniform([-math.pi, -3 * math.pi, -1], [math.pi, 3 * math.pi, 1])
        env.set_sim_state([th, w])
        env.step(np.array([u], np.float32))
        y = integrate.solve_ivp(lambda t, y: pcc_derivative(y, float(np.float32(u))), [0, PCC_DT], [th, w]).y[:, -1]
        y = [math.remainder(y[0], 2 * math.pi), np.clip(y[1], -3 * math.pi, 3 * math.pi)]
        got = env.get_sim_state()
        assert math.remainder(got[0] - y[0], 2 * math.pi) == pytest.approx(0.0, abs=1e-7)
        assert got[1] == pytest.approx(y[1], abs=1e-6)


def test_pendulum_angle_zero_draws_the_rod_above_the_centre():
    img = render_angle(0.0)[:, :, 0]
    assert np.all(img[2:24, 22:26] == 255)  # 22 rows up from the centre (23.5), 4 columns wide
    img2 = img.copy()
    img2[2:24, 22:26] = 0
    assert np.all(img2 == 0)
    left = render_angle(math.pi / 2)[:, :, 0]  # positive angles turn counter-clockwise: tip to the left
    assert left[22:26, 2:24].sum() == 255 * 4 * 22 and left[:, 25:].sum() == 0
    assert not np.array_equal(render_angle(0.0), render_angle(0.01))  # sub-pixel changes show


def bilinear(img, p):
    r0, c0 = np.floor(p).astype(int)
    fr, fc = p[0] - r0, p[1] - c0
    return (img[r0, c0] * (1 - fr) * (1 - fc) + img[r0 + 1, c0] * fr * (1 - fc)
            + img[r0, c0 + 1] * (1 - fr) * fc + img[r0 + 1, c0 + 1] * fr * fc)


def test_pendulum_tip_lies_at_the_end_of_the_drawn_rod():
    centre = np.array([23.5, 23.5])
    for th in np.linspace(-math.pi, math.pi, 37):
        _, obs, info = pendulum_at([th, 0.0])
        img = obs[:, :, 0].astype(np.float64)
        tip = info["points"][0].astype(np.float64)
        assert np.linalg.norm(tip - centre) == pytest.approx(22.0, abs=1e-4)
        assert 90 < bilinear(img, tip) < 165  # on the rod's flat end: half covered
        inward = centre + (tip - centre) * 20.5 / 22
        assert bilinear(img, inward) > 250
        assert img[tuple(np.rint(inward).astype(int))] == 255


def test_pendulum_speed_and_torque_are_clipped():
    env, _, _ = pendulum_at([0.0, 9.3])  # upright, turning positive: gravity speeds it up past 3 pi
    for _ in range(5):
        env.step(np.array([-1.0], np.float32))
    assert env.get_sim_state()[1] == 3 * math.pi
    with pytest.raises(ForesightError, match="omega"):
        pendulum_at([0.0, 9.5])

    env = PendulumEnv()
    assert env.action_space.high[0] == 1.0 and env.action_space.low[0] == -1.0  # PCC's default torque
    env, _, _ = pendulum_at([1.0, 0.5], max_torque=0.65)
    assert env.action_space.high[0] == np.float32(0.65)
    env.step(np.array([5.0], np.float32))
    clipped = env.get_sim_state()
    env.set_sim_state([1.0, 0.5])
    env.step(np.array([0.65]))  # float64: the limit exactly
    assert np.array_equal(env.get_sim_state(), clipped)
    assert gym.make("foresight/Pendulum-v0", max_torque=0.5).action_space.high[0] == 0.5
    with pytest.raises(ForesightError, match="max_torque"):
        PendulumEnv(max_torque=-1.0)


def test_pendulum_angle_is_normalised_and_resets_are_in_range():
    _, _, info = pendulum_at([3 * math.pi + 0.25, 0.0])
    assert info["state"][0] == pytest.approx(-math.pi + 0.25)
    env, _, _ = pendulum_at([math.pi - 0.01, 8.0])
    env.step(np.zeros(1, np.float32))
    th = env.get_sim_state()[0]
    assert -math.pi < th <= math.pi and th < 0  # went over the bottom
    env = PendulumEnv()  # PCC's sampler: angle in [-pi, pi], speed in [-3 pi, 3 pi]
    states = np.array([env.reset(seed=s)[1]["state"] for s in range(300)], dtype=np.float64)
    assert states[:, 0].min() < -2.8 and states[:, 0].max() > 2.8 and np.all(np.abs(states[:, 0]) <= math.pi)
    assert np.all(np.abs(states[:, 1]) <= 3 * math.pi) and np.abs(states[:, 1]).max() > 9.0
    slow = PendulumEnv(reset_speed=1.0)
    speeds = np.array([slow.reset(seed=s)[1]["state"][1] for s in range(300)])
    assert np.all(np.abs(speeds) <= 1.0) and speeds.std() > 0.4
    for bad in (-1.0, 9.5, True, "fast"):
        with pytest.raises(ForesightError, match=r"reset_speed must be a number in \[0, 3 pi"):
            PendulumEnv(reset_speed=bad)
    some_at_rest = PendulumEnv(rest_fraction=0.3)
    speeds = np.array([some_at_rest.reset(seed=s)[1]["state"][1] for s in range(400)])
    assert 0.2 < np.mean(speeds == 0) < 0.4 and np.abs(speeds).max() > 9.0  # the others as before
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(ForesightError, match=r"rest_fraction must be a number in \[0, 1\]"):
            PendulumEnv(rest_fraction=bad)


# --- both ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["foresight/Planar-v0", "foresight/Pendulum-v0"])
def test_sim_state_round_trip_gives_identical_next_frames(env_id):
    env = gym.make(env_id)
    env.reset(seed=3)
    for _ in range(5):
        env.step(env.action_space.sample())
    saved = env.unwrapped.get_sim_state()
    assert saved.dtype == np.float64
    actions = [env.action_space.sample() for _ in range(10)]
    first = [env.step(a) for a in actions]
    env.unwrapped.set_sim_state(saved)
    assert np.array_equal(env.unwrapped.get_sim_state(), saved)
    again = [env.step(a) for a in actions]
    for (o1, r1, _, _, i1), (o2, r2, _, _, i2) in zip(first, again):
        assert np.array_equal(o1, o2) and r1 == r2
        assert np.array_equal(i1["state"], i2["state"]) and np.array_equal(i1["points"], i2["points"])
    assert len({o.tobytes() for o, *_ in first}) > 1  # the frames did change
