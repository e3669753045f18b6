"""Inverted pendulum: the Embed-to-Control swing-up system (Watter et al. 2015), as PCC / PC3 set it up.

The pendulum of PCC's ``mdp/pendulum_mdp.py`` (Levine et al. 2020; PC3, Shu et al. 2020 use the same): a rod
of mass 0.1 and length 0.5 under g = 9.81, dt = 0.02, seen as a 48x48 grey image of the rod. Pure numpy and
Python floats, thousands of frames per second.
"""
import math
import numbers

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from foresight.envs.actions import check_action
from foresight.errors import ForesightError

SIZE = 48
CENTRE = (SIZE - 1) / 2  # the pivot, (23.5, 23.5) in (row, col): the middle of the image
ROD_LENGTH = 22.0  # pixels from the pivot to the tip (PCC: width / 2 - 2)
ROD_WIDTH = 4.0
MAX_SPEED = 3 * math.pi  # rad/s; the speed is clipped to [-MAX_SPEED, MAX_SPEED] after every step
G = 9.81  # PCC's earth_gravity
M = 0.1  # pend_mass
L = 0.5  # length
INERTIA = M * L**2 / 3  # PCC's moment of inertia (a rod about its end)
DT = 0.02  # 1 / frequency, frequency 50
SUBSTEPS = 4  # fixed-step RK4 sub-steps per step, torque held (PCC: solve_ivp's RK45 over the step)
DEFAULT_TORQUE = 1.0  # PCC's default torque limit; the swing-up protocol uses 0.65
_ROWS, _COLS = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)  # pixel centres, (SIZE, SIZE) each


def wrap_angle(th):
    """``th`` mapped to (-pi, pi]; values already there are returned unchanged (bit for bit)."""
    if -math.pi < th <= math.pi:
        return float(th)
    th = math.pi - (math.pi - th) % (2 * math.pi)
    return th if th > -math.pi else math.pi  # the modulo can round up to 2 pi


def tip_pixel(theta):
    """The rod tip's (row, col): angle 0 points up, positive angles turn counter-clockwise on screen."""
    return np.array([CENTRE - ROD_LENGTH * np.cos(theta), CENTRE - ROD_LENGTH * np.sin(theta)])


def render_angle(theta):
    """The image (SIZE, SIZE, 1) uint8 of the rod at angle ``theta``: a white bar, width 4, on black.

    Anti-aliased from each pixel centre's position in the rod's frame: the coverage across the rod
    is ``clip(w/2 + 1/2 - |perpendicular distance|, 0, 1)``, along it ``clip(1/2 + distance to the
    nearer end, 0, 1)`` (flat ends at the pivot and the tip). Both vary continuously with theta.
    """
    ur, uc = -np.cos(theta), -np.sin(theta)  # unit vector pivot -> tip, (row, col)
    dr, dc = _ROWS - CENTRE, _COLS - CENTRE
    along = dr * ur + dc * uc  # (SIZE, SIZE) position along the rod
    across = np.abs(dr * uc - dc * ur)  # distance from the rod's axis
    cover = np.clip(ROD_WIDTH / 2 + 0.5 - across, 0.0, 1.0) * np.clip(
        0.5 + np.minimum(along, ROD_LENGTH - along), 0.0, 1.0
    )
    return np.rint(cover * 255.0).astype(np.uint8)[:, :, None]


def acceleration(theta, torque):
    """PCC's angular acceleration: ``(m g l sin(pi - theta) - torque) / (m l^2 / 3)``; theta = 0 is upright.

    Gravity pulls the rod away from upright (the same sign as theta); a positive torque turns it toward
    negative angles. Python floats in and out.
    """
    return (M * G * L * math.sin(math.pi - theta) - torque) / INERTIA


def integrate(theta, omega, torque, dt=DT, substeps=SUBSTEPS):
    """(theta, omega) after ``dt`` seconds with the torque held: classic RK4, ``substeps`` equal sub-steps.

    No wrapping or clipping here (``PendulumEnv.step`` does those after the step, as PCC does after
    solve_ivp). With the default 4 sub-steps of 5 ms this matches PCC's ``solve_ivp`` (RK45, default
    tolerances) to within 2e-8 rad and 3e-7 rad/s per step (2000 random states and torques), 3e-6 over
    100-step trajectories; each is within 1e-8 rad and 2e-7 rad/s of a 1e-12-tolerance DOP853 solution.
    """
    h = dt / substeps
    th, w = float(theta), float(omega)
    for _ in range(substeps):
        k1t, k1w = w, acceleration(th, torque)
        k2t, k2w = w + 0.5 * h * k1w, acceleration(th + 0.5 * h * k1t, torque)
        k3t, k3w = w + 0.5 * h * k2w, acceleration(th + 0.5 * h * k2t, torque)
        k4t, k4w = w + h * k3w, acceleration(th + h * k3t, torque)
        th += h / 6 * (k1t + 2 * k2t + 2 * k3t + k4t)
        w += h / 6 * (k1w + 2 * k2w + 2 * k3w + k4w)
    return th, w


class PendulumEnv(gym.Env):
    """The E2C pendulum of PCC / PC3: torque-limited swing-up, seen as a 48x48 grey image of the rod.

    - dynamics (PCC's ``PendulumMDP``): state ``(theta, omega)``, theta = 0 upright;
      ``theta'' = (m g l sin(pi - theta) - u) / (m l^2 / 3)`` with g = 9.81, m = 0.1, l = 0.5 (`acceleration`),
      integrated over dt = 0.02 s with the torque held (RK4, 4 sub-steps: `integrate`; PCC uses solve_ivp),
      then theta wrapped to (-pi, pi] and omega clipped to [-3 pi, 3 pi]. The largest gravity torque,
      m g l = 0.49, is below the swing-up protocol's torque limit 0.65: the rod can be pushed up directly.
    - observation: ``uint8 (48, 48, 1)``: a white anti-aliased bar of width 4 and length 22 from
      the image centre (pixel (23.5, 23.5)) towards ``(23.5 - 22 cos theta, 23.5 - 22 sin theta)``:
      up at theta = 0, counter-clockwise on screen for positive theta.
      One frame shows no velocity: models and planners on this system observe two consecutive
      frames (the E2C model stacks them); the environment's own observation is one frame.
    - action: ``float32 (1,)`` torque in ``[-max_torque, max_torque]`` (default 1, PCC's; the swing-up protocol
      uses 0.65), clipped to it.
    - ``info["state"]`` is ``(theta, omega)``; ``info["points"]`` is the tip's pixel ``(1, 2)`` (row, col).
    - ``reset()`` draws theta uniform in [-pi, pi) and omega uniform in [-reset_speed, reset_speed] (default
      3 pi, the whole speed range, as PCC's random-state sampler draws data), except that a ``rest_fraction`` of
      resets start at rest (omega = 0: the planning protocols start there, and a uniform speed leaves few such
      data);
      ``reset(options={"state": [theta, omega]})`` sets them (|omega| <= 3 pi).
    - reward: minus ``theta^2 + 0.1 omega^2 + 0.001 u^2`` (gymnasium's pendulum cost, at the state before the
      step; PCC's MDP has none); the episode never terminates or truncates (add a TimeLimit for episodes).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / DT))}
    env_id = "foresight/Pendulum-v0"  # as registered in envs/__init__.py: ENVS (named in errors)
    point_names = ["tip"]

    def __init__(self, render_mode="rgb_array", max_torque=DEFAULT_TORQUE, reset_speed=MAX_SPEED, rest_fraction=0.0):
        if render_mode != "rgb_array":
            raise ForesightError(f"PendulumEnv: render_mode must be 'rgb_array', got {render_mode!r}")
        if isinstance(max_torque, bool) or not (isinstance(max_torque, numbers.Real) and np.isfinite(max_torque) and max_torque > 0):
            raise ForesightError(f"PendulumEnv: max_torque must be a positive number, got {max_torque!r}")
        if isinstance(reset_speed, bool) or not (isinstance(reset_speed, numbers.Real) and 0 <= reset_speed <= MAX_SPEED):
            raise ForesightError(f"PendulumEnv: reset_speed must be a number in [0, 3 pi = {MAX_SPEED:.6f}], "
                                 f"got {reset_speed!r}")
        if isinstance(rest_fraction, bool) or not (isinstance(rest_fraction, numbers.Real) and 0 <= rest_fraction <= 1):
            raise ForesightError(f"PendulumEnv: rest_fraction must be a number in [0, 1], got {rest_fraction!r}")
        self.render_mode = render_mode
        self.rest_fraction = float(rest_fraction)
        self.max_torque = float(max_torque)
        self.reset_speed = float(reset_speed)
        self.observation_space = spaces.Box(0, 255, (SIZE, SIZE, 1), dtype=np.uint8)
        self.action_space = spaces.Box(-self.max_torque, self.max_torque, (1,), dtype=np.float32)
        self._state = np.array([np.pi, 0.0])  # float64 (theta, omega), set properly by reset()

    # --- simulator state -------------------------------------------------------------------------

    def get_sim_state(self):
        return self._state.copy()

    def set_sim_state(self, s):
        self._state = self._checked_state(s, "set_sim_state(s)")

    @staticmethod
    def _checked_state(s, what):
        s = np.array(s, dtype=np.float64).reshape(-1)
        if s.shape != (2,) or not np.all(np.isfinite(s)) or abs(s[1]) > MAX_SPEED:
            raise ForesightError(
                f"PendulumEnv: {what} must be 2 finite numbers (theta, omega) with |omega| <= 3 pi, "
                f"got {s.tolist()}"
            )
        return np.array([wrap_angle(s[0]), s[1]])

    # --- gymnasium API ---------------------------------------------------------------------------

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options is not None and "state" in options:
            self._state = self._checked_state(options["state"], 'options["state"]')
        else:
            th = self.np_random.uniform(-np.pi, np.pi)
            w = self.np_random.uniform(-self.reset_speed, self.reset_speed)
            # no extra draw at 0: the default data stay as they were
            if self.rest_fraction and self.np_random.random() < self.rest_fraction:
                w = 0.0
            self._state = np.array([wrap_angle(th), w])
        return self.render(), self._info()

    def step(self, action):
        a = check_action(self.env_id, action, self.action_space)  # float64 (1,), finite; the state untouched if not
        # Python floats and math: numpy's per-call overhead would dominate on scalars.
        u = min(max(float(a[0]), -self.max_torque), self.max_torque)
        th, w = float(self._state[0]), float(self._state[1])
        cost = th**2 + 0.1 * w**2 + 0.001 * u**2
        th, w = integrate(th, w, u)
        self._state = np.array([wrap_angle(th), min(max(w, -MAX_SPEED), MAX_SPEED)])
        return self.render(), float(-cost), False, False, self._info()

    def render(self):
        return render_angle(self._state[0])

    def _info(self):
        return {
            "state": self._state.astype(np.float32),
            "points": tip_pixel(self._state[0]).astype(np.float32)[None, :],  # (1, 2) (row, col)
        }
