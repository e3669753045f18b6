"""PointPush: a round pusher shoves 1-3 coloured blocks around a walled table, seen from above.

Clutter: ``objects`` is how many blocks the scene holds; with ``min_objects`` below it each reset puts a random
number of them on the table (the others wait outside the walls, their points outside the image), and
``colors = "random"`` / a ``block_size`` range draw each block's colour and size at every reset. A
planner or a model sees only the image, so one model can learn scenes of 1 to 3 blocks of any colour.

The scene is planar: the pusher slides in x/y under velocity control, each block slides in x/y
and turns about z. Nothing touches the floor (the joints keep every body at its height), so
table friction is modelled as joint damping: a block moves while pushed and stops within a
step or two after. That keeps contacts few and the simulation cheap: physics and rendering of
a 64x64 frame take well under a millisecond each.

Observation: the top-down camera image (H, W, 3) uint8.
Action: (2,) in [-1, 1], the pusher's target velocity as a fraction of `MAX_SPEED`.
info["state"]: float32 (4 + 6K,) = qpos then qvel, i.e.
    [pusher x, pusher y, (block x, block y, block yaw) * K, their velocities in the same order].
info["points"]: float32 (K, 2), the (row, col) pixel of each block's centre; outside the image (far to the right)
for a block not on the table.
Reward: 0.0 (tasks and costs are defined by the planner, not the environment).
"""
import gymnasium as gym
import numpy as np

import mujoco  # (foresight/__init__.py, imported first, has chosen EGL)

from foresight.envs.actions import check_action
from foresight.envs.camera import Camera, image_shape, project
from foresight.envs.sim_state import SimState
from foresight.errors import ForesightError

ARENA = 0.25  # half-width of the free floor inside the walls (m)
WALL = 0.02  # wall thickness (m)
BLOCK = 0.04  # half-size of a block (m): ~9 px across at 64x64
PUSHER = 0.03  # pusher radius (m)
HEIGHT = 0.04  # height of every body's centre above the floor (m)
CAMERA_HEIGHT = 2.0  # high and narrow, so the view is close to orthographic
TIMESTEP, FRAME_SKIP = 0.005, 10  # 20 Hz control
MAX_SPEED = 0.5  # m/s at |action| = 1: ~2.5 px per step at 64x64

COLORS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
# colors = "random" draws each block's colour from these (all far from the floor, walls and pusher, and from
# each other in hue, so that colour registration can tell them apart)
PALETTE = {**COLORS, "yellow": (1.0, 0.9, 0.0), "magenta": (1.0, 0.0, 1.0), "cyan": (0.0, 0.9, 1.0),
           "orange": (1.0, 0.5, 0.0), "purple": (0.5, 0.0, 1.0)}
BLOCK_SIZES = (0.025, 0.06)  # the half-sizes block_size may take (m)
PARKED = 2.0  # a block not on the table waits this far out along x (and beyond), outside the walls and the view
FLOOR_RGB, WALL_RGB, PUSHER_RGB = (0.8, 0.8, 0.8), (0.4, 0.4, 0.4), (0.1, 0.1, 0.1)


def _rgba(rgb) -> str:
    return " ".join(f"{c:g}" for c in rgb) + " 1"


def scene_xml(names: list[str], fovy: float) -> str:
    """The MJCF of the scene with one block per colour name and a top-down camera of `fovy`."""
    blocks = "\n".join(f"""
    <body name="{name}" pos="0 0 {HEIGHT}">
      <joint name="{name}_x" type="slide" axis="1 0 0" damping="4"/>
      <joint name="{name}_y" type="slide" axis="0 1 0" damping="4"/>
      <joint name="{name}_yaw" type="hinge" axis="0 0 1" damping="0.01"/>
      <geom name="{name}" type="box" size="{BLOCK} {BLOCK} {BLOCK}" mass="0.25" rgba="{_rgba(COLORS[name])}"/>
    </body>""" for name in names)
    w = ARENA + WALL / 2  # wall centre line
    walls = "\n".join(
        f'<geom type="box" pos="{x:g} {y:g} {HEIGHT}" size="{sx:g} {sy:g} {HEIGHT}" rgba="{_rgba(WALL_RGB)}"/>'
        for x, y, sx, sy in [(w, 0, WALL / 2, ARENA + WALL), (-w, 0, WALL / 2, ARENA + WALL),
                             (0, w, ARENA + WALL, WALL / 2), (0, -w, ARENA + WALL, WALL / 2)])
    # Lighting: only the headlight, which shines along the (downward) view, with
    # ambient + diffuse = 1 and no specular: faces seen from above are drawn in exactly their
    # rgba, block sides (lit by ambient only) a little darker.
    return f"""
<mujoco model="point_push">
  <compiler angle="degree"/>
  <option timestep="{TIMESTEP}" gravity="0 0 0" integrator="implicitfast"/>
  <statistic extent="1" center="0 0 0"/>
  <visual>
    <headlight ambient="0.4 0.4 0.4" diffuse="0.6 0.6 0.6" specular="0 0 0"/>
    <quality shadowsize="0" offsamples="0"/>
  </visual>
  <default>
    <geom contype="1" conaffinity="1" condim="3" friction="0.5 0.005 0.0001"/>
  </default>
  <worldbody>
    <geom name="floor" type="plane" size="2 2 0.1" rgba="{_rgba(FLOOR_RGB)}"
          contype="0" conaffinity="0"/>
    {walls}
    <camera name="top" pos="0 0 {CAMERA_HEIGHT}" xyaxes="1 0 0 0 1 0" fovy="{fovy}"/>
    <body name="pusher" pos="0 0 {HEIGHT}">
      <joint name="pusher_x" type="slide" axis="1 0 0"/>
      <joint name="pusher_y" type="slide" axis="0 1 0"/>
      <geom type="sphere" size="{PUSHER}" mass="1" rgba="{_rgba(PUSHER_RGB)}"/>
    </body>
    {blocks}
  </worldbody>
  <actuator>
    <velocity joint="pusher_x" kv="30" ctrlrange="{-MAX_SPEED} {MAX_SPEED}"/>
    <velocity joint="pusher_y" kv="30" ctrlrange="{-MAX_SPEED} {MAX_SPEED}"/>
  </actuator>
</mujoco>"""


def camera_fovy(height: int, width: int) -> float:
    """Vertical field of view (degrees) that fits the arena and its walls in the image's
    shorter side; the longer side shows some floor beyond the walls."""
    half_view = ARENA + WALL  # at floor level
    tan_half_y = half_view / CAMERA_HEIGHT * max(1.0, height / width)
    return float(np.rad2deg(2 * np.arctan(tan_half_y)))


def pusher_pixels(states, height: int, width: int) -> np.ndarray:
    """States (..., 4 + 6K) -> the pusher's (row, col) pixel (..., 1, 2) float32 in an (height, width) image:
    a training target beside info["points"] (train.track_agent), computed from the state alone because the
    camera is fixed and the pusher's height constant."""
    states = np.asarray(states, dtype=np.float64)
    xy = states[..., :2].reshape(-1, 2)
    world = np.column_stack([xy, np.full(len(xy), HEIGHT)])
    pixels = project(world, (0.0, 0.0, CAMERA_HEIGHT), np.eye(3), camera_fovy(height, width), height, width)
    return pixels.reshape(*states.shape[:-1], 1, 2)


def pusher_path(state, actions, height: int, width: int, action_repeat: int = 1) -> np.ndarray:
    """The pusher's (row, col) pixel after each action of each sequence, from its kinematics alone:
    state (4 + 6K,) and actions (N, T, 2) -> (N, T, 2) float32 in an (height, width) image.

    The velocity servo (kv = 30) holds the commanded speed within a control step, so the pusher moves
    action * MAX_SPEED * dt per step, kept inside the walls; what it knows nothing of is the blocks in its
    way. What a robot knows of its own body (its commanded end-effector path, projected by the calibrated
    camera), for planner costs about where the agent goes (the approach cost term)."""
    actions = np.clip(np.asarray(actions, dtype=np.float64), -1, 1)
    step = MAX_SPEED * TIMESTEP * FRAME_SKIP * action_repeat
    xy = np.empty(actions.shape)  # (N, T, 2)
    at = np.broadcast_to(np.asarray(state, dtype=np.float64)[:2], actions.shape[:-2] + (2,))
    for t in range(actions.shape[-2]):  # a wall stops the pusher; the next action moves it from there
        at = xy[..., t, :] = np.clip(at + actions[..., t, :] * step, -ARENA + PUSHER, ARENA - PUSHER)
    return pusher_pixels(xy, height, width)[..., 0, :]  # pusher_pixels reads a state's first two entries only


class PointPushEnv(SimState, gym.Env):
    """image_size: int (square) or (H, W); objects: 1-3 blocks, named red, green, blue (`point_names`; their
    colours now `object_colors` (K, 3) uint8 as drawn on their top faces). `reset` places pusher and blocks at
    random, non-overlapping, from `self.np_random`; options: `{"pusher_near": d}` starts the pusher d metres from
    the first block, `{"clutter_near": d}` puts the other blocks within d metres of it (in the way),
    `{"objects": n}` puts the first n blocks on the table. action_repeat: control steps (of 1/20 s) per env step,
    each with the same action: a coarser time scale for planning models (visual foresight repeats each planned
    action 3 times).

    Varied scenes (each drawn at reset, only when asked for, so fixed scenes keep their random streams):
    min_objects (1..objects, default objects): each reset puts min_objects..objects blocks on the table;
    colors: "fixed" (red, green, blue) or "random" (distinct colours from `PALETTE`); block_size: a block's
    half-size in metres, or a [low, high] range each block's is drawn from. The layout belongs to the episode:
    `set_sim_state` restores the motion within it, `reset` with the same seed and options the layout."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": round(1 / (TIMESTEP * FRAME_SKIP))}
    env_id = "foresight/PointPush-v0"  # as registered in envs/__init__.py: ENVS (named in errors)

    def __init__(self, render_mode: str | None = "rgb_array", image_size=64, objects: int = 1, action_repeat: int = 1,
                 min_objects: int | None = None, colors: str = "fixed", block_size=BLOCK):
        if render_mode not in (None, "rgb_array"):
            raise ForesightError(f"render_mode: expected 'rgb_array', got {render_mode!r}")
        if not _is_int(objects) or not 1 <= objects <= 3:
            raise ForesightError(f"objects: expected an int from 1 to 3, got {objects!r}")
        min_objects = objects if min_objects is None else min_objects
        if not _is_int(min_objects) or not 1 <= min_objects <= objects:
            raise ForesightError(f"min_objects: expected an int from 1 to objects = {objects}, got {min_objects!r}")
        if colors not in ("fixed", "random"):
            raise ForesightError(f"colors: expected 'fixed' or 'random', got {colors!r}")
        sizes = block_size if isinstance(block_size, (list, tuple)) else (block_size, block_size)
        lo, hi = BLOCK_SIZES
        if len(sizes) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi
                                      for v in sizes) or sizes[0] > sizes[1]:
            raise ForesightError(f"block_size: expected a half-size in metres in [{lo}, {hi}], or a [low, high] "
                                 f"range within it, got {block_size!r}")
        self.min_objects, self.colors, self.block_sizes = int(min_objects), colors, tuple(float(v) for v in sizes)
        if isinstance(action_repeat, bool) or not isinstance(action_repeat, (int, np.integer)) or action_repeat < 1:
            raise ForesightError(f"action_repeat: expected an int >= 1, got {action_repeat!r}")
        self.render_mode, self.action_repeat = render_mode, int(action_repeat)
        self.height, self.width = image_shape(image_size)
        self.point_names = list(COLORS)[:objects]
        self.object_colors = np.array([COLORS[n] for n in self.point_names]) * 255
        self.object_colors = np.round(self.object_colors).astype(np.uint8)  # (K, 3)

        self.model = mujoco.MjModel.from_xml_string(scene_xml(self.point_names, camera_fovy(self.height, self.width)))
        self.data = mujoco.MjData(self.model)
        self.camera = Camera(self.model, "top", self.height, self.width)
        self._block_ids = [self.model.body(n).id for n in self.point_names]
        self._geom_ids = [self.model.geom(n).id for n in self.point_names]
        self.half = np.full(objects, BLOCK)  # (K,) each block's half-size this episode
        self.present = objects  # blocks on the table this episode (the first ones)

        self.observation_space = gym.spaces.Box(0, 255, (self.height, self.width, 3), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    @property
    def dt(self) -> float:
        return TIMESTEP * FRAME_SKIP * self.action_repeat

    def _observe(self):
        info = {
            "state": np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float32),  # (4 + 6K,)
            "points": self._points(),  # (K, 2)
        }
        return self.camera.render(self.data), info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        options = options or {}
        unknown = sorted(set(options) - {"pusher_near", "clutter_near", "objects"})
        if unknown:
            raise ForesightError(f"options[{unknown[0]!r}]: unknown reset option (expected pusher_near, "
                                 f"clutter_near, objects)")
        near, clutter = options.get("pusher_near"), options.get("clutter_near")
        for key, value in (("pusher_near", near), ("clutter_near", clutter)):
            if value is not None and not (isinstance(value, (int, float)) and 0.01 <= value <= ARENA):
                raise ForesightError(f"options[{key!r}]: expected metres in [0.01, {ARENA}], got {value!r}")
        self._draw_layout(options.get("objects"))
        n = self.present
        # rejection-sample non-overlapping positions (bounding circles 1 cm apart)
        # pusher_near: the pusher starts d metres (gap between bounding circles) from the first block, in a random
        # direction; clutter_near: each other block within d of the first (planning suites pose tasks with them)
        radii = np.concatenate([[PUSHER], self.half[:n] * np.sqrt(2)])
        while True:
            pos = self.np_random.uniform(-ARENA + radii[:, None], ARENA - radii[:, None], (len(radii), 2))  # (1 + n, 2)
            if near is not None:
                pos[0] = pos[1] + (radii[0] + radii[1] + near) * self._direction()
            if clutter is not None:
                for k in range(2, n + 1):
                    pos[k] = pos[1] + (radii[1] + radii[k] + self.np_random.uniform(0.01, clutter)) * self._direction()
            if (np.abs(pos) > ARENA - radii[:, None]).any():
                continue
            gaps = np.linalg.norm(pos[:, None] - pos[None], axis=-1) - (radii[:, None] + radii[None])
            if (gaps + 10 * np.eye(len(radii)) > 0.01).all():
                break
        yaw = self.np_random.uniform(-np.pi, np.pi, size=n)
        blocks = np.zeros((len(self.point_names), 3))
        blocks[:n] = np.column_stack([pos[1:], yaw])
        blocks[n:, 0] = PARKED + 0.5 * np.arange(len(self.point_names) - n)  # outside the walls, out of view
        self.data.qpos[:] = np.concatenate([pos[0], blocks.ravel()])
        mujoco.mj_forward(self.model, self.data)
        return self._observe()

    def _direction(self) -> np.ndarray:
        angle = self.np_random.uniform(-np.pi, np.pi)
        return np.array([np.cos(angle), np.sin(angle)])

    def _draw_layout(self, objects) -> None:
        """This episode's blocks: how many are on the table, their colours and sizes (drawn only when varied)."""
        K = len(self.point_names)
        if objects is not None:
            if not _is_int(objects) or not 1 <= objects <= K:
                raise ForesightError(f"options['objects']: expected an int from 1 to {K}, got {objects!r}")
            self.present = int(objects)
        else:
            self.present = int(self.np_random.integers(self.min_objects, K + 1)) if self.min_objects < K else K
        if self.colors == "random":
            names = self.np_random.choice(list(PALETTE), size=K, replace=False)
            self.object_colors = np.round(np.array([PALETTE[n] for n in names]) * 255).astype(np.uint8)
            self.model.geom_rgba[self._geom_ids, :3] = self.object_colors / 255
        lo, hi = self.block_sizes
        self.half = self.np_random.uniform(lo, hi, K) if lo < hi else np.full(K, lo)
        if lo < hi or lo != BLOCK:
            for g, h in zip(self._geom_ids, self.half):
                self.model.geom_size[g, :2] = h  # the height stays: every block's top face at the same level
                self.model.geom_rbound[g] = np.sqrt(2 * h**2 + BLOCK**2)
                self.model.geom_aabb[g, 3:5] = h

    def _simulate(self, action) -> None:
        """One control step of physics, no rendering (step, and the oracle's rollouts), of an action already checked
        (``check_action``: ``step`` and ``rollout_points`` check theirs)."""
        self.data.ctrl[:] = np.clip(np.asarray(action, dtype=np.float64), -1, 1) * MAX_SPEED
        mujoco.mj_step(self.model, self.data, nstep=FRAME_SKIP * self.action_repeat)
        # mj_step leaves the kinematics one substep behind qpos; bring them level so the image,
        # the points and a state restored with set_sim_state all agree
        mujoco.mj_forward(self.model, self.data)

    def _points(self) -> np.ndarray:
        return self.camera.project(self.data, self.data.xpos[self._block_ids])  # (K, 2)

    def step(self, action):
        self._simulate(check_action(self.env_id, action, self.action_space))
        obs, info = self._observe()
        return obs, 0.0, False, False, info

    def render(self) -> np.ndarray:
        return self.camera.render(self.data)

    agent_pixels = staticmethod(pusher_pixels)

    def agent_path(self, actions) -> np.ndarray:
        """The pusher's (row, col) camera pixel after each action of each sequence (N, T, 2) -> (N, T, 2), from the
        current state by its kinematics alone (``pusher_path``): what the robot knows of its own body."""
        state = np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float32)  # as info["state"]
        return pusher_path(state, actions, self.height, self.width, self.action_repeat)

    def steer_toward(self, k: int) -> np.ndarray:
        """Full speed from the pusher toward block `k`'s centre: an exploration policy's way to push it."""
        direction = self.data.xpos[self._block_ids[k], :2] - self.data.xpos[self.model.body("pusher").id, :2]
        return (direction / max(np.linalg.norm(direction), 1e-9)).astype(np.float32)

    def push_along(self, k: int, angle: float) -> np.ndarray:
        """An action that pushes block `k` along `angle` (radians, world x/y): get behind the block, going round
        it at a clear radius, then drive through its centre. What a planner does to move an object to a goal;
        an exploration policy's way to show a model those manoeuvres (near misses included) and aimed pushes."""
        block = self.data.xpos[self._block_ids[k], :2]
        pusher = self.data.xpos[self.model.body("pusher").id, :2]
        d = np.array([np.cos(angle), np.sin(angle)])
        rel = pusher - block
        half = self.half[k]
        clear = half * np.sqrt(2) + PUSHER + 0.01  # the pusher's centre this far out never touches the block
        along, across = rel @ d, rel[0] * d[1] - rel[1] * d[0]
        if along < -(half + PUSHER) * 0.9 and abs(across) < half * 0.5:  # behind it and lined up: push
            target = block + 2 * MAX_SPEED * self.dt * d
        elif np.linalg.norm(rel) < clear * 1.05 or (along > -clear and abs(across) < clear):
            # in the way: step round the block at the clear radius, the shorter way to its back, at most 60 degrees
            phi = np.arctan2(rel[1], rel[0])
            turn = (angle + np.pi - phi + np.pi) % (2 * np.pi) - np.pi
            heading = phi + np.clip(turn, -np.pi / 3, np.pi / 3)
            target = block + clear * 1.15 * np.array([np.cos(heading), np.sin(heading)])
        else:  # a clear path to the start of the push
            target = block - clear * d
        step = (target - pusher) / (MAX_SPEED * self.dt)  # the action that reaches the target in one step
        return (step / max(1.0, np.linalg.norm(step))).astype(np.float32)

    def close(self) -> None:
        self.camera.close()


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)
