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

from foresight.envs.camera import Camera, image_shape
from foresight.envs.sim_state import SimState
from foresight.errors import ForesightError

# The view: a square on the table around the object's and goal's region and the arm's reach
# (object starts in x 0.15..0.45, y -0.25..0.15; goal at (0.45, -0.05); shoulder at (0, -0.6)).
VIEW_CENTER = (0.45, -0.2)
VIEW_HALF = 0.6  # half-side of the square (on the table) that fits the image's shorter side (m)
TABLE_Z = -0.325
STEER_KP, STEER_KD, STEER_LIFT = 20.0, 0.5, 0.03  # steer_toward: gains and tip height above the object centre (m)
CAMERA_Z = 2.0  # high, so the arm (0.3 m above the table) looks only a little bigger


class ArmPushEnv(SimState, PusherEnv):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

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

    def step(self, action):
        state, reward, _, _, info = super().step(action)
        # mj_step leaves the kinematics one substep behind qpos; bring them level for the image
        # and the points (positions only: the next step recomputes everything from the state)
        mujoco.mj_forward(self.model, self.data)
        obs, extra = self._observe(state)
        return obs, float(reward), False, False, {**info, **extra}

    def render(self) -> np.ndarray:
        return self.camera.render(self.data)

    def steer_toward(self, k: int = 0) -> np.ndarray:
        """Joint torques that drive the arm's tip toward the object (Jacobian transpose with joint
        damping): an exploration policy's way to push it. `k` is the object index (only 0 here)."""
        tip = self.data.body("tips_arm")
        jac = np.zeros((3, self.model.nv))
        mujoco.mj_jacBody(self.model, self.data, jac, None, tip.id)
        error = self.data.body("object").xpos + (0.0, 0.0, STEER_LIFT) - tip.xpos  # sliding on the table jams
        # qfrc_bias holds gravity and Coriolis forces: cancelling them keeps the tip off the table
        torque = STEER_KP * jac[:, :7].T @ error - STEER_KD * self.data.qvel[:7] + self.data.qfrc_bias[:7]
        return np.clip(torque, -2.0, 2.0).astype(np.float32)

    def close(self) -> None:
        self.camera.close()
        super().close()
