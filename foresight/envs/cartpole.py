"""Cart-pole from pixels, as PCC / PC3 define it: balance a pole on a cart pushed left and right.

The system of PCC's ``mdp/cartpole_mdp.py`` (Levine et al. 2020; PC3, Shu et al. 2020 use the same): a cart of
mass 1 carrying a pole of mass 0.1 and half-length 0.5 under g = 9.81, a horizontal force in [-10, 10],
dt = 0.02, seen as an 80x80 grey image of the cart and the pole. Pure numpy and Python floats.
"""
import math
import numbers

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from foresight.envs.actions import check_action
from foresight.envs.pendulum import wrap_angle
from foresight.errors import ForesightError

SIZE = 80
G, M_CART, M_POLE, L = 9.81, 1.0, 0.1, 0.5  # PCC's earth_gravity, cart_mass, pend_mass, length (half the pole)
DT = 0.02  # 1 / frequency, frequency 50
SUBSTEPS = 4  # fixed-step RK4 sub-steps per step, force held (PCC: solve_ivp's RK45 over the step)
MAX_FORCE = 10.0
MAX_SPIN = 2 * math.pi  # |theta_dot| is clipped to this after every step (PCC's angular_velocity_range)
MAX_SPEED = 6.0  # |x_dot| likewise (PCC's velocity_range)
TRACK = 2.4  # PCC's position_range: |x| = 2.4 puts the cart's side at the image's edge (x itself is not clipped)
RESET_ANGLE = math.pi / 5  # reset()'s angle range, twice the goal region (see CartPoleEnv)
GOAL_ANGLE = math.pi / 10  # PCC's goal_range: the pole within 18 degrees of upright
CART_HALF = (SIZE / 20.0, SIZE / 10.0)  # (rows, cols): the cart is 8 px tall and 16 px wide
CART_ROW = SIZE - 2 * CART_HALF[0] - 2  # the cart's centre row, 70
POLE_LENGTH = SIZE * 0.65  # 52 px from the cart's centre to the tip
POLE_WIDTH = 6.0
_ROWS, _COLS = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)  # pixel centres


def cart_col(x):
    """The cart centre's column for a position x (PCC's rendering: +-2.4 puts the cart's side at the edge)."""
    return SIZE / 2.0 + x / TRACK * (SIZE / 2.0 - CART_HALF[1])


def tip_pixel(theta, x):
    """The pole tip's (row, col): theta = 0 points up, positive angles lean toward larger x (right)."""
    return np.array([CART_ROW - POLE_LENGTH * np.cos(theta), cart_col(x) + POLE_LENGTH * np.sin(theta)])


def render_state(theta, x):
    """The image (80, 80, 1) uint8: a white cart (16 x 8 px) and a white pole (width 6, length 52) on black,
    anti-aliased from each pixel centre's distance to the shapes' edges (continuous in theta and x)."""
    c = cart_col(x)
    cart = np.clip(CART_HALF[0] + 0.5 - np.abs(_ROWS - CART_ROW), 0, 1) * np.clip(CART_HALF[1] + 0.5 - np.abs(_COLS - c), 0, 1)
    ur, uc = -np.cos(theta), np.sin(theta)  # unit vector cart -> tip, (row, col)
    dr, dc = _ROWS - CART_ROW, _COLS - c
    along = dr * ur + dc * uc
    across = np.abs(dr * uc - dc * ur)
    pole = np.clip(POLE_WIDTH / 2 + 0.5 - across, 0, 1) * np.clip(0.5 + np.minimum(along, POLE_LENGTH - along), 0, 1)
    return np.rint(np.maximum(cart, pole) * 255.0).astype(np.uint8)[:, :, None]


def derivatives(theta, theta_dot, x_dot, force):
    """PCC's cart-pole equations (Tedrake's textbook form, theta = 0 upright): (theta', theta'', x', x'')."""
    total = M_CART + M_POLE
    s, c = math.sin(theta), math.cos(theta)
    push = force + M_POLE * L * theta_dot**2 * s
    theta_acc = (total * G * s - c * push) / (4.0 / 3.0 * total * L - M_POLE * L * c**2)
    x_acc = (push - M_POLE * L * theta_acc * c) / total
    return theta_dot, theta_acc, x_dot, x_acc


def integrate(state, force, dt=DT, substeps=SUBSTEPS):
    """(theta, theta_dot, x, x_dot) after ``dt`` seconds with the force held: classic RK4 in ``substeps`` steps.
    No wrapping or clipping here (``CartPoleEnv.step`` does those after the step, as PCC does after solve_ivp)."""
    h = dt / substeps
    s = [float(v) for v in state]
    for _ in range(substeps):
        k1 = derivatives(s[0], s[1], s[3], force)
        s2 = [v + 0.5 * h * k for v, k in zip(s, k1)]
        k2 = derivatives(s2[0], s2[1], s2[3], force)
        s3 = [v + 0.5 * h * k for v, k in zip(s, k2)]
        k3 = derivatives(s3[0], s3[1], s3[3], force)
        s4 = [v + h * k for v, k in zip(s, k3)]
        k4 = derivatives(s4[0], s4[1], s4[3], force)
        s = [v + h / 6 * (a + 2 * b + 2 * c + d) for v, a, b, c, d in zip(s, k1, k2, k3, k4)]
    return s


class CartPoleEnv(gym.Env):
    """PCC / PC3's cart-pole, seen as an 80x80 grey image of the cart and the pole.

    - dynamics (PCC's ``CartPoleMDP``): state ``(theta, theta_dot, x, x_dot)``, theta = 0 upright, positive
      toward +x; cart mass 1, pole mass 0.1 and half-length 0.5, g = 9.81 (`derivatives`), integrated over
      dt = 0.02 s with the force held (RK4, 4 sub-steps: `integrate`; PCC uses solve_ivp), then theta wrapped to
      (-pi, pi], theta_dot clipped to [-2 pi, 2 pi] and x_dot to [-6, 6]; x is not bounded (past |x| = 2.4 the
      cart starts to leave the picture, as in PCC's renderer).
    - observation: ``uint8 (80, 80, 1)`` (`render_state`). One frame shows no velocity: models stack two.
    - action: ``float32 (1,)`` force in [-10, 10], clipped to it.
    - ``info["state"]`` the state; ``info["points"]`` the pole tip's pixel ``(1, 2)`` (row, col).
    - ``reset()`` draws theta uniform in [-pi/5, pi/5], theta_dot in [-2 pi, 2 pi], x in [-2.4, 2.4] and x_dot in
      [-6, 6], the ranges PCC's sampler names (its angle range is written ``2 * goal_range``, a Python list
      repeated, so its code draws within +-pi/10 only; twice the goal region is what the name says, and it
      covers the +-pi/8 starts of PC3's task). ``reset(options={"state": [...]})`` sets the state.
    - reward: 1 inside the goal region |theta| <= pi/10, else 0 (PCC's reward); the episode never ends by itself.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / DT))}
    env_id = "foresight/CartPole-v0"  # as registered in envs/__init__.py: ENVS (named in errors)
    point_names = ["tip"]

    def __init__(self, render_mode="rgb_array", reset_angle=RESET_ANGLE):
        if render_mode != "rgb_array":
            raise ForesightError(f"CartPoleEnv: render_mode must be 'rgb_array', got {render_mode!r}")
        if isinstance(reset_angle, bool) or not (isinstance(reset_angle, numbers.Real) and 0 <= reset_angle <= math.pi):
            raise ForesightError(f"CartPoleEnv: reset_angle must be a number in [0, pi], got {reset_angle!r}")
        self.render_mode = render_mode
        self.reset_angle = float(reset_angle)
        self.observation_space = spaces.Box(0, 255, (SIZE, SIZE, 1), dtype=np.uint8)
        self.action_space = spaces.Box(-MAX_FORCE, MAX_FORCE, (1,), dtype=np.float32)
        self._state = np.zeros(4)

    # --- simulator state -------------------------------------------------------------------------

    def get_sim_state(self):
        return self._state.copy()

    def set_sim_state(self, s):
        self._state = self._checked_state(s, "set_sim_state(s)")

    @staticmethod
    def _checked_state(s, what):
        s = np.array(s, dtype=np.float64).reshape(-1)
        if s.shape != (4,) or not np.all(np.isfinite(s)) or abs(s[1]) > MAX_SPIN or abs(s[3]) > MAX_SPEED:
            raise ForesightError(f"CartPoleEnv: {what} must be 4 finite numbers (theta, theta_dot, x, x_dot) with "
                                 f"|theta_dot| <= 2 pi and |x_dot| <= 6, got {s.tolist()}")
        return np.array([wrap_angle(s[0]), s[1], s[2], s[3]])

    # --- gymnasium API ---------------------------------------------------------------------------

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options is not None and "state" in options:
            self._state = self._checked_state(options["state"], 'options["state"]')
        else:
            r = self.np_random
            self._state = np.array([r.uniform(-self.reset_angle, self.reset_angle), r.uniform(-MAX_SPIN, MAX_SPIN),
                                    r.uniform(-TRACK, TRACK), r.uniform(-MAX_SPEED, MAX_SPEED)])
        return self.render(), self._info()

    def step(self, action):
        a = check_action(self.env_id, action, self.action_space)  # float64 (1,), finite; the state untouched if not
        force = min(max(float(a[0]), -MAX_FORCE), MAX_FORCE)
        th, th_dot, x, x_dot = integrate(self._state, force)
        self._state = np.array([wrap_angle(th), min(max(th_dot, -MAX_SPIN), MAX_SPIN), x,
                                min(max(x_dot, -MAX_SPEED), MAX_SPEED)])
        reward = float(abs(self._state[0]) <= GOAL_ANGLE)
        return self.render(), reward, False, False, self._info()

    def render(self):
        return render_state(self._state[0], self._state[2])

    def _info(self):
        return {
            "state": self._state.astype(np.float32),
            "points": tip_pixel(self._state[0], self._state[2]).astype(np.float32)[None, :],  # (1, 2) (row, col)
        }
