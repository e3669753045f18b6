"""ArmPush: gymnasium's Pusher-v5 (7-DoF arm, one cylinder, one goal disc) seen from above.

The physics, action space, reward and reset distribution are gymnasium's own: `ArmPushEnv`
subclasses `PusherEnv` and only (a) adds a top-down camera to Pusher's MJCF through `MjSpec`
(cameras do not touch the dynamics) and (b) observes through it with the lean renderer, about
two orders of magnitude faster than gymnasium's default rendering.

Observation: the camera image (H, W, 3) uint8.
Action: (7,) joint torques in [-2, 2], as Pusher-v5.
info["state"]: float32 (23,), Pusher-v5's observation exactly as gymnasium computes it.
info["points"]: float32 (1, 2), the (row, col) pixel of the object's centre.
info["goal_pixel"]: float32 (2,), the (row, col) pixel of the goal disc's centre.
"""
import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.pusher_v5 import PusherEnv
from gymnasium.spaces import Box

import mujoco  # (foresight/__init__.py, imported first, has chosen EGL)

from foresight.envs.actions import check_action
from foresight.envs.camera import Camera, image_shape
from foresight.envs.sim_state import SimState
from foresight.errors import ForesightError

# The view: a square on the table around the object's and goal's region and the arm's reach
# (object starts in x 0.25..0.65, y -0.35..-0.05; goal at (0.45, -0.05); shoulder at (0, -0.6)).
VIEW_CENTER = (0.45, -0.2)
VIEW_HALF = 0.6  # half-side of the square (on the table) that fits the image's shorter side (m)
TABLE_Z = -0.325
# Pusher's arm, from its MJCF: the pan axis at SHOULDER, the lift joint LIFT_OFFSET out along the pan
# direction at z = 0, then the upper arm and the forearm to the wrist (body "tips_arm" sits at the wrist).
SHOULDER = np.array([0.0, -0.6])
LIFT_OFFSET, UPPER_ARM, FOREARM = 0.1, 0.4, 0.321
# steer_toward (see there), lengths in m
STEER_HEIGHT = -0.275  # wrist height when sweeping: the object's mid-height (it spans -0.325..-0.225)
STEER_LOW = -0.21  # the wrist is "low" below this: the hand then hits the object's side, not its top
STEER_LEAD = 0.11  # low: the hand's leading corner (0.1 beside the wrist) aims 1 cm short of the object's centre
STEER_CLEAR = 0.18  # high: the wrist stays this far to the side of the object (hand half-width + both radii)
STEER_OMEGA, STEER_ZETA = 10.0, 0.85  # joint tracking: natural frequency (rad/s) and damping ratio
CAMERA_Z = 2.0  # high, so the arm (0.3 m above the table) looks only a little bigger


class ArmPushEnv(SimState, PusherEnv):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    env_id = "foresight/ArmPush-v0"  # as registered in envs/__init__.py: ENVS (named in errors)

    def __init__(self, render_mode: str | None = "rgb_array", image_size=64, **pusher_kwargs):
        """`pusher_kwargs` go to gymnasium's PusherEnv (e.g. reward weights)."""
        if render_mode not in (None, "rgb_array"):
            raise ForesightError(f"render_mode: expected 'rgb_array', got {render_mode!r}")
        height, width = image_shape(image_size)
        # MujocoEnv sets self.width/height, then calls _initialize_simulation (ours, below)
        super().__init__(render_mode=render_mode, width=width, height=height, **pusher_kwargs)
        utils.EzPickle.__init__(self, render_mode, image_size, **pusher_kwargs)
        self.metadata = type(self).metadata  # PusherEnv sets its own list of render modes
        self.camera = Camera(self.model, "top", height, width)
        self.observation_space = Box(0, 255, (height, width, 3), np.uint8)
        self.point_names = ["object"]
        # flat tops under Pusher's two lights, as drawn by the lean renderer (see tests)
        self.object_colors = np.array([[255, 255, 255]], dtype=np.uint8)  # (K, 3)
        self.goal_color = np.array([255, 83, 83], dtype=np.uint8)  # red, lit with specular

    def _initialize_simulation(self):
        spec = mujoco.MjSpec.from_file(self.fullpath)
        # The table is a plane, infinite for collisions; its size is only how far it is drawn.
        # Draw it under the arm's base too, instead of black background.
        spec.geom("table").size = [2.0, 2.0, 0.1]
        # looking straight down (identity orientation): image right = +x, image up = +y
        spec.worldbody.add_camera(name="top", pos=[VIEW_CENTER[0], VIEW_CENTER[1], CAMERA_Z],
                                  fovy=self._fovy())
        model = spec.compile()
        return model, mujoco.MjData(model)

    def _fovy(self) -> float:
        tan_half_y = VIEW_HALF / (CAMERA_Z - TABLE_Z) * max(1.0, self.height / self.width)
        return float(np.rad2deg(2 * np.arctan(tan_half_y)))

    def _observe(self, state):
        points = self.camera.project(self.data, np.stack([self.data.body("object").xpos, self.data.body("goal").xpos]))
        info = {"state": np.asarray(state, dtype=np.float32), "points": points[:1], "goal_pixel": points[1]}
        return self.camera.render(self.data), info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        state, info = super().reset(seed=seed, options=options)
        obs, extra = self._observe(state)
        return obs, {**info, **extra}

    def _simulate(self, action) -> None:
        """One control step of Pusher's physics, no rendering (the oracle's rollouts), of an action already
        checked (``rollout_points`` checks its own)."""
        self.do_simulation(np.asarray(action, dtype=np.float64), self.frame_skip)
        mujoco.mj_forward(self.model, self.data)

    def _points(self) -> np.ndarray:
        return self.camera.project(self.data, self.data.body("object").xpos[None])  # (1, 2)

    def step(self, action):
        check_action(self.env_id, action, self.action_space)  # before anything touches the simulation
        state, reward, _, _, info = super().step(action)
        # mj_step leaves the kinematics one substep behind qpos; bring them level for the image
        # and the points (positions only: the next step recomputes everything from the state)
        mujoco.mj_forward(self.model, self.data)
        obs, extra = self._observe(state)
        return obs, float(reward), False, False, {**info, **extra}

    def render(self) -> np.ndarray:
        return self.camera.render(self.data)

    def steer_toward(self, k: int = 0) -> np.ndarray:
        """Joint torques that sweep the arm's hand sideways into object `k` (only 0 here) and push it.

        A function of the current state only. Pusher-v5's object is nearly massless, which makes its
        contacts very soft: the hand passes through it unless held against it, and pushes it at most
        ~0.1 m/s, and only with the hand at the object's mid-height (on its top or bottom edge the
        contact pushes vertically, which the object ignores). So, with the object at polar (R, theta)
        about the shoulder, the arm pans toward it from the side the wrist is on:
          - wrist high: pan to STEER_CLEAR beside the object while lowering the wrist to STEER_HEIGHT;
          - wrist low: pan to STEER_LEAD beside it at radius R, pressing the leading corner of the
            hand (where bar and prong overlap: two contacts) into the object; the target follows it.
        The wrist target goes through analytic inverse kinematics with the three roll joints and the
        wrist at 0 (pan, lift, elbow: a planar two-link arm), and joint PD tracks it as computed torque.
        Objects within ~0.45 m of the shoulder are out of reach at mid-height (the lift joint's limit):
        the arm gets as close as it can. Always steering moves ~90% of objects >= 2 px in 40 steps.
        """
        d = self.data
        wrist, obj = d.body("tips_arm").xpos, d.body("object").xpos
        r, theta = _polar(obj[:2] - SHOULDER)
        side = 1.0 if theta >= _polar(wrist[:2] - SHOULDER)[1] else -1.0  # +1: the wrist is at smaller pan angles
        offset = STEER_LEAD if wrist[2] < STEER_LOW else STEER_CLEAR
        pan = theta - side * np.arcsin(min(1.0, offset / r))
        lift, elbow = _arm_ik(r, STEER_HEIGHT)
        low, high = self.model.jnt_range[:7].T
        target = np.clip([pan, lift, 0.0, elbow, 0.0, 0.0, 0.0], low, high)
        mass = np.zeros((self.model.nv, self.model.nv))
        mujoco.mj_fullM(self.model, d, mass)
        accel = STEER_OMEGA**2 * (target - d.qpos[:7]) - 2 * STEER_ZETA * STEER_OMEGA * d.qvel[:7]
        torque = mass[:7, :7] @ accel + d.qfrc_bias[:7]
        return np.clip(torque, -2.0, 2.0).astype(np.float32)

    def close(self) -> None:
        self.camera.close()
        super().close()


def _polar(xy: np.ndarray) -> tuple[float, float]:
    """(radius, angle) of a horizontal offset from the shoulder's pan axis."""
    return float(np.hypot(xy[0], xy[1])), float(np.arctan2(xy[1], xy[0]))


def _arm_ik(r: float, z: float) -> tuple[float, float]:
    """Lift and elbow angles that put the wrist at horizontal distance `r` from the pan axis and height `z`,
    with the roll joints at 0 (the arm in the vertical plane of its pan angle). Pusher's elbow bends the
    forearm only upward (elbow <= 0); a positive lift points the upper arm down. Out of reach, the wrist
    keeps the height and falls short."""
    h = min(r - LIFT_OFFSET, np.sqrt((UPPER_ARM + FOREARM) ** 2 - z**2) - 1e-3)  # from the lift joint
    cos_elbow = (h**2 + z**2 - UPPER_ARM**2 - FOREARM**2) / (2 * UPPER_ARM * FOREARM)
    elbow = -np.arccos(np.clip(cos_elbow, -1.0, 1.0))
    lift = np.arctan2(-z, h) + np.arctan2(-FOREARM * np.sin(elbow), UPPER_ARM + FOREARM * np.cos(elbow))
    return float(lift), float(elbow)
