"""foresight/CartPole-v0, PCC / PC3's cart-pole from pixels: the gymnasium checker, the dynamics against an
independent fine integration of PCC's equations, energy and momentum without force, the image against the
projected tip, exact save / restore, clipping, bad input, and the oracle keeping the pole up where random
actions let it fall."""
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import foresight  # noqa: F401  (registers the environments)
from foresight.envs import cartpole
from foresight.envs.cartpole import CartPoleEnv
from foresight.errors import ForesightError
from foresight.planning import mpc, suites

pytestmark = pytest.mark.filterwarnings("ignore:.*last axis has three dimensions:UserWarning")


def at(state):
    env = CartPoleEnv()
    env.reset(options={"state": state})
    return env


def test_gymnasium_checker_and_the_info_contract():
    env = gym.make("foresight/CartPole-v0")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*symmetric and normalized space.*")
        check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs.shape == (80, 80, 1) and obs.dtype == np.uint8
    assert info["state"].shape == (4,) and info["points"].shape == (1, 2)
    obs2, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert not terminated and not truncated and reward in (0.0, 1.0)


def fine_step(state, force, n=4000):
    """Euler's method in n tiny steps on PCC's equations written out again: an independent integration."""
    th, w, x, v = state
    h = cartpole.DT / n
    for _ in range(n):
        total = 1.1
        s, c = math.sin(th), math.cos(th)
        acc = (total * 9.81 * s - c * (force + 0.1 * 0.5 * w * w * s)) / (4 / 3 * total * 0.5 - 0.1 * 0.5 * c * c)
        x_acc = (force + 0.1 * 0.5 * (w * w * s - acc * c)) / total
        th, w, x, v = th + h * w, w + h * acc, x + h * v, v + h * x_acc
    return np.array([th, w, x, v])


@pytest.mark.parametrize("state, force", [([0.1, 0.0, 0.0, 0.0], 0.0), ([-0.3, 2.0, 1.0, -1.0], 7.5),
                                          ([0.5, -3.0, -0.5, 2.0], -10.0)])
def test_a_step_matches_an_independent_fine_integration(state, force):
    env = at(state)
    env.step(np.array([force], dtype=np.float32))
    assert np.allclose(env.get_sim_state(), fine_step(state, force), atol=2e-4)


def test_gravity_tips_the_pole_away_from_upright_and_a_push_moves_the_cart():
    env = at([0.05, 0.0, 0.0, 0.0])
    for _ in range(10):
        env.step(np.zeros(1, np.float32))
    assert env.get_sim_state()[0] > 0.05 and env.get_sim_state()[2] < 0  # the pole falls right, the cart recoils
    env = at([0.0, 0.0, 0.0, 0.0])
    env.step(np.array([10.0], np.float32))
    th, _, x, v = env.get_sim_state()
    assert v > 0 and x > 0 and th < 0  # pushing right leaves the pole behind


def test_energy_and_horizontal_momentum_are_conserved_without_force():
    env = at([0.4, 0.0, 0.0, 0.0])

    def energy_and_momentum(s):
        th, w, _, v = s
        m, mc, l, g = 0.1, 1.0, 0.5, 9.81
        pole_v2 = v * v + 2 * v * l * w * math.cos(th) + (l * w) ** 2  # the pole's centre
        kinetic = 0.5 * mc * v * v + 0.5 * m * pole_v2 + 0.5 * (m * (2 * l) ** 2 / 12) * w * w
        return kinetic + m * g * l * math.cos(th), (mc + m) * v + m * l * w * math.cos(th)

    e0, p0 = energy_and_momentum(env.get_sim_state())
    for _ in range(20):  # while |theta_dot| stays below its clip
        env.step(np.zeros(1, np.float32))
    e1, p1 = energy_and_momentum(env.get_sim_state())
    assert abs(e1 - e0) < 1e-5 and abs(p1 - p0) < 1e-5


def test_the_projected_tip_lies_on_the_drawn_pole_and_the_cart_where_x_says():
    for th, x in [(0.0, 0.0), (0.3, 1.0), (-0.5, -0.5)]:
        img = cartpole.render_state(th, x)[:, :, 0]
        tip = cartpole.tip_pixel(th, x) + 2 * np.array([math.cos(th), -math.sin(th)])  # 2 px back down the pole
        assert img[int(round(tip[0])), int(round(tip[1]))] > 200
        assert img[int(cartpole.CART_ROW), int(round(cartpole.cart_col(x)))] == 255
    assert cartpole.render_state(0.0, 0.0)[5, 40, 0] == 0  # above the tip: black
    assert cartpole.cart_col(cartpole.TRACK) + cartpole.CART_HALF[1] == pytest.approx(80.0)


def test_save_and_restore_gives_identical_next_frames():
    env = CartPoleEnv()
    env.reset(seed=3)
    for _ in range(5):
        env.step(env.action_space.sample())
    saved = env.get_sim_state()
    a = env.step(np.array([3.0], np.float32))[0]
    env.step(np.array([-9.0], np.float32))
    env.set_sim_state(saved)
    assert np.array_equal(env.step(np.array([3.0], np.float32))[0], a)


def test_force_and_speeds_are_clipped_and_resets_are_in_range():
    env = at([0.0, 0.0, 0.0, 5.99])
    env.step(np.array([1e6], np.float32))
    assert env.get_sim_state()[3] <= cartpole.MAX_SPEED
    env2 = at([0.0, 0.0, 0.0, 5.99])
    env2.step(np.array([10.0], np.float32))
    assert np.array_equal(env.get_sim_state(), env2.get_sim_state())
    env = CartPoleEnv()
    states = np.array([env.reset(seed=s)[1]["state"] for s in range(200)])
    assert np.all(np.abs(states[:, 0]) <= math.pi / 5 + 1e-6) and np.abs(states[:, 0]).max() > 0.5
    assert np.all(np.abs(states[:, 2]) <= 2.4 + 1e-6) and np.all(np.abs(states[:, 3]) <= 6 + 1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda e: e.set_sim_state([0.0, 0.0]), r"set_sim_state\(s\) must be 4 finite numbers"),
    (lambda e: e.reset(options={"state": [0.0, 10.0, 0.0, 0.0]}), r'options\["state"\] must be 4 finite numbers'),
    (lambda e: e.step(np.array([np.nan], np.float32)), "foresight/CartPole-v0"),
    (lambda e: CartPoleEnv(reset_angle=4.0), "reset_angle must be a number in"),
])
def test_bad_input_is_one_clear_error_and_leaves_the_state(call, message):
    env = at([0.1, 0.0, 0.0, 0.0])
    with pytest.raises(ForesightError, match=message):
        call(env)
    assert np.array_equal(env.get_sim_state(), [0.1, 0.0, 0.0, 0.0])


SUITE = """
name = "cart"
env = "foresight/CartPole-v0"
kind = "goal_image"
tasks = 2
seed = 4
steps = 40
start_low = [0.3, 0.0, 0.0, 0.0]
start_high = [0.3927, 0.0, 0.0, 0.0]
goal_states = [[0.0, 0.0, 0.0, 0.0]]
region_dims = [0]
region_radius = 0.3142
region_wrap = true
[cem]
samples = 60
elites = 6
iterations = 3
horizon = 8
repeat = 1
"""


def test_planning_with_the_true_dynamics_keeps_the_pole_up(tmp_path):
    (tmp_path / "cart.toml").write_text(SUITE)
    s = suites.load(tmp_path / "cart.toml")
    summary = mpc.run_suite(s, tmp_path / "res", None, ["oracle", "random"], progress=False)
    assert summary["oracle"]["percent_in_goal"] >= 90
    assert summary["oracle"]["percent_in_goal"] > summary["random"]["percent_in_goal"] + 30
