"""Planar navigation: the Embed-to-Control "planar system" (Watter et al. 2015), as set up in PCC / PC3.

An agent (a 3x3 square) moves on a 40x40 map past six round obstacles; the observation is a
40x40 grey image. Pure numpy, thousands of frames per second.

Collisions follow the PCC code's planar MDP (the one PC3's control experiments run, whose figures the
benchmark compares against): a state is invalid when the agent's square leaves the map or holds an
obstacle's centre (its edges included), i.e. when the centre is within 1.5 of an obstacle centre in both
coordinates; a move goes to ``clip(s + u)`` on the map (walls stop the agent) and, when that state is
invalid, leaves the agent where it was. Only where the move ends counts. The disks (radius 2.5) are what
the image shows, not what blocks: the agent may overlap a disk's rim. (An earlier version of this module
blocked the centre at the disks and rejected any move leaving the map; read from a commented-out line of
the PCC code, it made E2C's planner stall against walls and disks, the moves it chose being rejected
whole, where PCC's walls stop an agent and let it slide along.)

Coordinates. The state is the agent's centre ``(a, b)`` in map units, where the image spans
``[0, 40] x [0, 40]`` and pixel ``(i, j)`` covers ``[i, i+1] x [j, j+1]``: ``a`` grows downwards
(image rows), ``b`` to the right (image columns). In DESIGN.md's pixel convention (``(0, 0)`` the
centre of the top-left pixel) state ``(a, b)`` is pixel ``(row, col) = (a - 0.5, b - 0.5)``; an
obstacle centred at ``(20.5, 5.5)`` is centred on pixel ``(20, 5)``.
"""
from functools import lru_cache

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from foresight.envs.actions import check_action
from foresight.errors import ForesightError

SIZE = 40  # the map spans [0, SIZE]^2, one pixel per unit
OBSTACLES = np.array([[20.5, 5.5], [20.5, 13.5], [20.5, 27.5], [20.5, 35.5], [10.5, 20.5], [30.5, 20.5]])
OBSTACLE_RADIUS = 2.5
AGENT_HALF = 1.5  # the agent is the square [a - 1.5, a + 1.5] x [b - 1.5, b + 1.5]
MAX_ACTION = 3.0
OBSTACLE_VALUE = 128  # mid grey, so the agent (white) and the obstacles are told apart
AGENT_VALUE = 255
_PIXELS = np.arange(SIZE, dtype=np.float64)  # pixel i spans [i, i + 1]


def collides(p):
    """Whether agent centres ``p`` (..., 2) are invalid: the square leaves the map or holds an obstacle's
    centre (on its edge counts)."""
    p = np.asarray(p, dtype=np.float64)
    off_map = ((p < AGENT_HALF) | (p > SIZE - AGENT_HALF)).any(axis=-1)
    hit = (np.abs(p[..., None, :] - OBSTACLES) <= AGENT_HALF).all(axis=-1).any(axis=-1)
    return off_map | hit


@lru_cache(maxsize=1)
def background():
    """The obstacle image (SIZE, SIZE) uint8: each pixel's disk coverage, 8x8 supersampled, times grey."""
    s = 8
    u = (np.arange(SIZE * s) + 0.5) / s  # sub-sample centres in map units
    inside = np.zeros((SIZE * s, SIZE * s), dtype=bool)
    for ca, cb in OBSTACLES:
        inside |= (u[:, None] - ca) ** 2 + (u[None, :] - cb) ** 2 <= OBSTACLE_RADIUS**2
    cover = inside.reshape(SIZE, s, SIZE, s).mean(axis=(1, 3))
    img = np.rint(cover * OBSTACLE_VALUE).astype(np.uint8)
    img.setflags(write=False)
    return img


def _square_coverage(c):
    """How much of each pixel row (or column) [i, i+1] the interval [c - 1.5, c + 1.5] covers, (SIZE,)."""
    overlap = np.minimum(_PIXELS + 1, c + AGENT_HALF) - np.maximum(_PIXELS, c - AGENT_HALF)
    return np.maximum(overlap, 0.0)  # never above 1: the interval is 3 long


def render_state(state):
    """The image (SIZE, SIZE, 1) uint8 of the agent at ``state`` (a, b): obstacles plus an anti-aliased square.

    A pixel's agent intensity is the fraction of its area the square covers, so the pixel holding
    the centre is always pure white and sub-pixel moves change the image.
    """
    cover = np.outer(_square_coverage(state[0]), _square_coverage(state[1]))  # (SIZE, SIZE)
    agent = np.rint(cover * AGENT_VALUE).astype(np.uint8)
    return np.maximum(background(), agent)[:, :, None]


class PlanarEnv(gym.Env):
    """The E2C planar system: a square agent among six round obstacles, seen as a 40x40 grey image.

    - observation: ``uint8 (40, 40, 1)``; obstacles are mid-grey disks (radius 2.5), the agent a white
      3x3 square, both anti-aliased (pixel value = covered area fraction x intensity).
    - action: ``float32 (2,)`` in ``[-3, 3]^2``, added to the state and clipped to the map; a move that
      would end with an obstacle's centre inside the square leaves the agent where it was.
    - state: the agent centre ``(a, b)``, rows down and columns right, in map units (pixel ``(i, j)``
      covers ``[i, i+1] x [j, j+1]``); ``info["points"]`` is its pixel ``[[a - 0.5, b - 0.5]]``.
    - ``reset()`` puts the agent at a uniformly random valid state; ``reset(options={"state": [a, b]})``
      at a given one. Valid states include the PCC evaluation starts ``[3, 7]^2`` and goals
      ``(37, 37)``, ``(37, 3)``, ``(3, 37)``.
    - reward 0; the episode never terminates or truncates (add a TimeLimit for episodes).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    env_id = "foresight/Planar-v0"  # as registered in envs/__init__.py: ENVS (named in errors)
    point_names = ["agent"]

    def __init__(self, render_mode="rgb_array"):
        if render_mode != "rgb_array":
            raise ForesightError(f"PlanarEnv: render_mode must be 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, (SIZE, SIZE, 1), dtype=np.uint8)
        self.action_space = spaces.Box(-MAX_ACTION, MAX_ACTION, (2,), dtype=np.float32)
        self._state = np.array([5.0, 5.0])  # float64 (2,), set properly by reset()

    # --- simulator state -------------------------------------------------------------------------

    def get_sim_state(self):
        return self._state.copy()

    def set_sim_state(self, s):
        self._state = self._checked_state(s, "set_sim_state(s)")

    def _checked_state(self, s, what):
        s = np.array(s, dtype=np.float64).reshape(-1)
        if s.shape != (2,) or not np.all(np.isfinite(s)):
            raise ForesightError(f"PlanarEnv: {what} must be 2 finite numbers (a, b), got {s.tolist()}")
        if collides(s):
            raise ForesightError(
                f"PlanarEnv: {what} = {s.tolist()} is not a valid state: the agent's square (half-size "
                f"{AGENT_HALF}) must lie in [0, {SIZE}]^2 and hold no obstacle's centre (the centre more than "
                f"{AGENT_HALF} from each in one coordinate at least)"
            )
        return s

    # --- gymnasium API ---------------------------------------------------------------------------

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options is not None and "state" in options:
            self._state = self._checked_state(options["state"], 'options["state"]')
        else:
            while True:  # rejection sampling: about 96% of the box is valid
                s = self.np_random.uniform(AGENT_HALF, SIZE - AGENT_HALF, size=2)
                if not collides(s):
                    break
            self._state = s
        return self.render(), self._info()

    def step(self, action):
        u = check_action(self.env_id, action, self.action_space)  # float64 (2,), finite; the state untouched if not
        u = np.minimum(np.maximum(u, -MAX_ACTION), MAX_ACTION)  # np.clip costs more on tiny arrays
        target = np.minimum(np.maximum(self._state + u, AGENT_HALF), SIZE - AGENT_HALF)  # walls stop the agent
        if not collides(target):
            self._state = target
        return self.render(), 0.0, False, False, self._info()

    def render(self):
        return render_state(self._state)

    def _info(self):
        return {
            "state": self._state.astype(np.float32),
            "points": (self._state - 0.5).astype(np.float32)[None, :],  # (1, 2) (row, col)
        }
