"""PushT: a disc pushes a T-shaped block to a pose on a table (Diffusion Policy's task), seen as a camera image.

gym-pusht (PyPI; pymunk physics, pygame drawing) is wrapped, not copied: its environment builds the space, steps
the physics (its PD controller, 10 substeps of 0.01 s per 0.1 s step), draws the 512 x 512 scene (its green goal
region included, always at gym-pusht's own goal pose) and measures coverage; this module adds foresight's
environment contract (ARCHITECTURE.md).

World: 512 x 512 units, y down. A world point (x, y) is pixel (row, col) = (y H / 512 - 0.5, x W / 512 - 0.5) of an
H x W image (the scene is drawn at 512 x 512 and area-averaged down).
Action: with actions = "target" (gym-pusht's), (2,) in [0, 512], the agent's target position (its PD controller pulls
    it there); with actions = "relative" (DINO-WM's), (2,) in [-1, 1], the target's offset from the agent's position
    in units of RELATIVE_REACH: a command whose effect does not depend on where the agent is, which a model learns
    from pixels as it learns a velocity. Targets are clipped to the table.
info["state"]: float32 (5,) = gym-pusht's state [agent x, agent y, block x, block y, block angle in [0, 2 pi)]; the
    block's position is its body origin, the middle of the bar's outer edge.
info["points"]: float32 (3, 2), the (row, col) pixels of `point_names`: two points of the T (the middle of its bar,
    and of the square at its stem's end; the T's pose follows from them) and the agent.
info["goal_pixel"]: float32 (2, 2), the T's two points at gym-pusht's own goal pose (its fixed green region).
Reward: gym-pusht's (its goal region's coverage / 0.95, at most 1); info["coverage"] beside it, and
    info["is_success"] its success (coverage above 0.95). An episode never terminates: foresight's tasks set their
    own goals and budgets (``pose_success``, ``coverage``).

Exact sim state: gym-pusht's state leaves out the velocities and the solver's memory (the contact impulses Chipmunk
carries from step to step to warm-start its solver, and each body's position-correction velocity, which the next
step's positions add), and Chipmunk's collision tree keeps an order the solver depends on. ``get_sim_state``
stores all but the tree, and every step starts from a space rebuilt from that state, so a restored copy runs the
very numbers the original runs (tested bit for bit). The rebuild costs about 0.2 ms a step; restoring a cached
contact allocates one Chipmunk arbiter that is never freed (pymunk's own pickling does the same), ~0.2 kB.
"""
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame draws off screen: no display
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import cv2  # noqa: E402
import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pygame  # noqa: E402
import pymunk  # noqa: E402
from gym_pusht.envs.pusht import PushTEnv as GymPushT  # noqa: E402
from pymunk._chipmunk_cffi import ffi, lib as cp  # noqa: E402
from pymunk.arbiter import _arbiter_from_dict, _arbiter_to_dict  # noqa: E402

from foresight.envs.actions import check_action  # noqa: E402
from foresight.envs.camera import image_shape  # noqa: E402
from foresight.envs.sim_state import PointRollouts  # noqa: E402
from foresight.errors import ForesightError  # noqa: E402

WORLD = 512  # the table's side in world units (gym-pusht's window)
T_POINTS = {"t_bar": (0.0, 15.0), "t_stem": (0.0, 105.0)}  # in the block's frame (add_tee at scale 30: bar 120 x 30,
# from y = 0 to 30, and stem 30 x 90 below it, to y = 120)
T_CORNERS = [(-60, 0), (60, 0), (60, 30), (-60, 30), (-15, 30), (15, 30), (15, 120), (-15, 120)]  # bar, then stem
WALL_LOW, WALL_HIGH = 7, 504  # the walls' inner faces
RESET_AGENT, RESET_BLOCK = (50, 450), (100, 400)  # gym-pusht's reset draws integer positions in these, angle U(-pi, pi)
RELATIVE_REACH = 100.0  # world units of a relative action of 1: its PD controller covers ~26% of it in a step from rest
ACTIONS = ("target", "relative")
SUCCESS_DISTANCE, SUCCESS_ANGLE = 20.0, np.pi / 9  # DINO-WM's success: positions and angle close to the goal's

# A body as Chipmunk's cpBody holds it, doubles from index 8: p (the centre of gravity), v, f, a, w, t, the transform
# (6), and after the user-data pointer v_bias, w_bias, which pymunk does not expose. Checked on first use.
BODY_FIELDS = [*range(8, 23), 24, 25, 26]
MAX_CONTACTS = 2  # Chipmunk's CP_MAX_CONTACTS_PER_ARBITER
# the agent with the T's two shapes, and each T shape with the four walls (kinematic agent and static walls never meet)
MAX_ARBITERS = 10
ARBITER_SIZE = 12 + 13 * MAX_CONTACTS  # see _encode_arbiter
STATE_SIZE = 2 * len(BODY_FIELDS) + 3 + MAX_ARBITERS * ARBITER_SIZE


def world_to_pixels(xy, height: int, width: int) -> np.ndarray:
    """World points (..., 2) as (x, y) -> (row, col) pixels (..., 2) float32 of an (height, width) image."""
    xy = np.asarray(xy, dtype=np.float64)
    return np.stack([xy[..., 1] * height / WORLD - 0.5, xy[..., 0] * width / WORLD - 0.5], axis=-1).astype(np.float32)


def t_points(states) -> np.ndarray:
    """States (..., 5) -> the T's points (..., 2, 2) as world (x, y): its origin plus the block-frame points rotated
    by its angle (as pymunk's local_to_world)."""
    states = np.asarray(states, dtype=np.float64)
    c, s = np.cos(states[..., 4:5]), np.sin(states[..., 4:5])  # (..., 1)
    local = np.array(list(T_POINTS.values()))  # (2, 2)
    x = states[..., 2:3] + c * local[:, 0] - s * local[:, 1]  # (..., 2)
    y = states[..., 3:4] + s * local[:, 0] + c * local[:, 1]
    return np.stack([x, y], axis=-1)


def on_table(state, margin: float = 0.0) -> bool:
    """Is the whole T inside the walls (gym-pusht's segments at 5 and 506, 2 units thick), or at most `margin` units
    into them? state (5,)."""
    c, s = np.cos(state[4]), np.sin(state[4])
    local = np.array(T_CORNERS)  # (8, 2)
    xy = np.asarray(state[2:4]) + local @ np.array([[c, s], [-s, c]])
    return bool((xy > WALL_LOW - margin).all() and (xy < WALL_HIGH + margin).all())


def agent_pixels(states, height: int, width: int) -> np.ndarray:
    """States (..., 5) -> the agent's (row, col) pixel (..., 1, 2) float32 (train.track_agent's target)."""
    return world_to_pixels(np.asarray(states, dtype=np.float64)[..., None, :2], height, width)


def pose_success(state, goal) -> bool:
    """DINO-WM's PushT success: agent and block positions within 20 units of the goal state's (the distance of
    the 4-vector), and the block's angle within pi / 9 of it."""
    state, goal = np.asarray(state, dtype=np.float64), np.asarray(goal, dtype=np.float64)
    turn = abs(state[4] - goal[4]) % (2 * np.pi)
    return bool(np.linalg.norm(state[:4] - goal[:4]) < SUCCESS_DISTANCE and min(turn, 2 * np.pi - turn) < SUCCESS_ANGLE)


def _check_body_layout() -> None:
    """BODY_FIELDS reads cpBody's memory: check it against pymunk's accessors once, before any state is saved."""
    body = pymunk.Body(2.0, 3.0)
    body.center_of_gravity, body.position, body.velocity = (0.5, 0.25), (10.0, 20.0), (3.0, 4.0)
    body.angle, body.angular_velocity = 0.7, 0.9
    raw = ffi.cast("double *", body._body)
    seen = [raw[i] for i in (2, 4, 8, 10, 11, 14, 15)]
    p = body.local_to_world(body.center_of_gravity)
    want = [2.0, 3.0, p.x, 3.0, 4.0, 0.7, 0.9]
    if not np.allclose(seen, want) or raw[24] != 0.0 or raw[26] != 0.0:
        raise ForesightError(f"foresight/PushT-v0: pymunk {pymunk.version} lays out its bodies unlike pymunk 6 "
                             f"(expected gym-pusht's pymunk >=6.6,<7): its exact sim state cannot be read")


def _encode_arbiter(d: dict, shapes: list) -> list[float]:
    """A cached contact (pymunk's dict of a cpArbiter) as ARBITER_SIZE floats; shapes as their index in the space."""
    out = [d["e"], d["u"], *d["surface_vr"], shapes.index(d["a"]), shapes.index(d["b"]), d["count"], *d["n"],
           float(d["swapped"]), d["stamp"], d["state"]]
    for c in d["contacts"]:
        h = int(c["hash"])  # 64 bits: two exact halves
        out += [*c["r1"], *c["r2"], c["nMass"], c["tMass"], c["bounce"], c["jnAcc"], c["jtAcc"], c["jBias"],
                c["bias"], h >> 32, h & 0xFFFFFFFF]
    return out + [0.0] * (ARBITER_SIZE - len(out))


def _decode_arbiter(v: np.ndarray, shapes: list) -> dict:
    count = int(v[6])
    contacts = [dict(r1=(c[0], c[1]), r2=(c[2], c[3]), nMass=c[4], tMass=c[5], bounce=c[6], jnAcc=c[7], jtAcc=c[8],
                     jBias=c[9], bias=c[10], hash=(int(c[11]) << 32) | int(c[12]))
                for c in v[12:12 + 13 * count].reshape(count, 13).tolist()]
    return dict(e=v[0], u=v[1], surface_vr=(v[2], v[3]), a=shapes[int(v[4])], b=shapes[int(v[5])], count=count,
                contacts=contacts, n=(v[7], v[8]), swapped=bool(v[9]), stamp=int(v[10]), state=int(v[11]))


class PushTEnv(PointRollouts, gym.Env):
    """image_size: int (square) or (H, W). `reset` draws gym-pusht's start distribution from `self.np_random`, or
    takes `options={"state": [agent x, agent y, block x, block y, angle]}` (at rest) exactly as given, angle first
    (gym-pusht's own reset sets the position first, which moves the block when the angle turns it about its centre
    of gravity, and then steps the physics)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    env_id = "foresight/PushT-v0"  # as registered in envs/__init__.py: ENVS (named in errors)
    point_names = [*T_POINTS, "agent"]
    dt = 0.1  # seconds per step (gym-pusht's control rate)

    def __init__(self, render_mode: str | None = "rgb_array", image_size=64, actions: str = "target"):
        if render_mode not in (None, "rgb_array"):
            raise ForesightError(f"render_mode: expected 'rgb_array', got {render_mode!r}")
        if actions not in ACTIONS:
            raise ForesightError(f"actions: expected one of {', '.join(ACTIONS)}, got {actions!r}")
        _check_body_layout()
        self.render_mode = render_mode
        self.height, self.width = image_shape(image_size)
        self.relative = actions == "relative"
        self.sim = GymPushT(obs_type="state", render_mode="rgb_array")
        self.observation_space = gym.spaces.Box(0, 255, (self.height, self.width, 3), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32) if self.relative else \
            gym.spaces.Box(0.0, float(WORLD), (2,), np.float32)
        self._coverage = 0.0
        self._restore(self._resting([256, 400, 256, 300, 0]))  # gym-pusht's layout before its reset
        self._goal_pixel = world_to_pixels(t_points(np.r_[0.0, 0.0, self.sim.goal_pose]), self.height, self.width)

    # -- the contract --------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        unknown = sorted(set(options) - {"state"})
        if unknown:
            raise ForesightError(f"options[{unknown[0]!r}]: unknown reset option (expected state)")
        if "state" in options:
            state = np.asarray(options["state"], dtype=np.float64) if _numbers(options["state"]) else None
            if state is None or state.shape != (5,) or not np.isfinite(state).all():
                raise ForesightError(f"options['state']: expected 5 finite numbers [agent x, agent y, block x, "
                                     f"block y, angle], got {options['state']!r}")
        else:  # gym-pusht's draw, redrawn while the T would start in a wall (4% of its draws; the first step
            # would shoot it through)
            r = self.np_random
            while True:
                state = np.array([*r.integers(*RESET_AGENT, size=2), *r.integers(*RESET_BLOCK, size=2),
                                  r.uniform(-np.pi, np.pi)], dtype=np.float64)
                if on_table(state):
                    break
        self._restore(self._resting(state))
        self._coverage = self.sim._get_coverage()
        return self._observe()

    def step(self, action):
        self._coverage = self._simulate(check_action(self.env_id, action, self.action_space))
        reward = float(np.clip(self._coverage / self.sim.success_threshold, 0.0, 1.0))
        obs, info = self._observe()
        return obs, reward, False, False, info

    def render(self) -> np.ndarray:
        frame = np.transpose(pygame.surfarray.pixels3d(self.sim._draw()), (1, 0, 2))  # (512, 512, 3), rows = y
        return cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_AREA)

    def state(self) -> np.ndarray:
        """gym-pusht's state, float64 (5,)."""
        return self.sim.get_obs()

    def _observe(self):
        return self.render(), {"state": self.state().astype(np.float32), "points": self._points(),
                               "goal_pixel": self._goal_pixel.copy(), "coverage": self._coverage,
                               "is_success": self._coverage > self.sim.success_threshold}

    def _points(self) -> np.ndarray:
        state = self.state()
        world = np.concatenate([t_points(state), state[None, :2]])  # (3, 2): t_bar, t_stem, agent
        return world_to_pixels(world, self.height, self.width)

    def _simulate(self, action) -> float:
        """One step of gym-pusht's physics from a space rebuilt from the current sim state (see the module); returns
        the coverage of gym-pusht's goal that its step measures."""
        self._restore(self.get_sim_state())
        return float(self.sim.step(self.target(action))[4]["coverage"])

    def target(self, action, position=None) -> np.ndarray:
        """The agent's target position (..., 2) in world units for actions (..., 2) with the agent at ``position``
        (default: where it is): the action itself, or (relative) the position plus the action's offset; on the
        table."""
        action = np.asarray(action, dtype=np.float64)
        if self.relative:
            position = np.asarray(self.sim.agent.position) if position is None else position
            action = position + RELATIVE_REACH * np.clip(action, -1.0, 1.0)
        return np.clip(action, 0.0, WORLD)

    def coverage(self, goal) -> float:
        """gym-pusht's coverage (the fraction of the goal pose's T that the block covers) for a goal state (5,)."""
        default, self.sim.goal_pose = self.sim.goal_pose, np.asarray(goal, dtype=np.float64)[2:5]
        try:
            return float(self.sim._get_coverage())
        finally:
            self.sim.goal_pose = default

    def goal_reached(self, goal) -> bool:
        """DINO-WM's success (``pose_success``) of the current state for a goal state (5,)."""
        return pose_success(self.state(), goal)

    # -- what the robot knows of its own body ---------------------------------------------------------------------
    agent_pixels = staticmethod(agent_pixels)

    def rest_action(self) -> np.ndarray:
        """The action that holds the agent where it is: an offset of 0, or its own position as the target (a target
        of 0 would send it to the table's corner). A planner's prior and the model's past action before the first
        step."""
        return np.zeros(2, np.float32) if self.relative else np.asarray(self.sim.agent.position, dtype=np.float32)

    def agent_path(self, actions) -> np.ndarray:
        """The agent's (row, col) pixel after each action of each sequence (N, T, 2) -> (N, T, 2), from its position
        and velocity by gym-pusht's PD law alone: the agent is kinematic, so nothing it touches changes its path."""
        actions = np.asarray(actions, dtype=np.float64)
        sim = self.sim
        p = np.broadcast_to(np.array(sim.agent.position), actions.shape[:-2] + (2,)).copy()
        v = np.broadcast_to(np.array(sim.agent.velocity), p.shape).copy()
        out = np.empty(actions.shape)
        for t in range(actions.shape[-2]):
            a = self.target(actions[..., t, :], p)
            for _ in range(round(1 / (sim.dt * sim.control_hz))):
                v = v + (sim.k_p * (a - p) + sim.k_v * (0 - v)) * sim.dt
                p = p + v * sim.dt
            out[..., t, :] = p
        return world_to_pixels(out, self.height, self.width)

    def steer_toward(self, k: int) -> np.ndarray:
        """A target 40 units beyond point `k` of the T (the agent's own point: the T's centre of gravity) on the
        agent's line toward it: an exploration policy's way to push the T there, off centre and so turning it. Kept
        150 units from the walls: the kinematic agent would press a T against a wall through it. As an action: the
        target, or (relative) its offset from the agent, as far as an action reaches."""
        state = self.state()
        block = self.sim.block
        aim = t_points(state)[k] if k < len(T_POINTS) else np.array(block.local_to_world(block.center_of_gravity))
        d = aim - state[:2]
        target = np.clip(aim + 40 * d / max(np.linalg.norm(d), 1e-9), 150, WORLD - 150)
        if self.relative:
            return np.clip((target - state[:2]) / RELATIVE_REACH, -1.0, 1.0).astype(np.float32)
        return target.astype(np.float32)

    # -- exact sim state --------------------------------------------------------------------------------------------
    def get_sim_state(self) -> np.ndarray:
        """float64 (STATE_SIZE,): both bodies as Chipmunk holds them, the space's time stamp and last time step,
        and its cached contacts (see the module's docstring)."""
        space = self.sim.space
        out = np.zeros(STATE_SIZE)
        bodies = [ffi.cast("double *", b._body) for b in (self.sim.agent, self.sim.block)]
        out[:2 * len(BODY_FIELDS)] = [raw[i] for raw in bodies for i in BODY_FIELDS]
        arbiters = sorted(_encode_arbiter(_arbiter_to_dict(a, space), space.shapes) for a in space._get_arbiters())
        if len(arbiters) > MAX_ARBITERS:  # cannot happen: MAX_ARBITERS counts the pairs that can touch
            raise RuntimeError(f"{self.env_id}: {len(arbiters)} cached contacts, room for {MAX_ARBITERS}")
        head = 2 * len(BODY_FIELDS)
        out[head:head + 3] = cp.cpSpaceGetTimestamp(space._space), cp.cpSpaceGetCurrentTimeStep(space._space), \
            len(arbiters)
        if arbiters:
            out[head + 3:head + 3 + len(arbiters) * ARBITER_SIZE] = np.ravel(arbiters)
        return out

    def set_sim_state(self, state) -> None:
        state = np.asarray(state, dtype=np.float64) if _numbers(state) else None
        if state is None or state.shape != (STATE_SIZE,) or not np.isfinite(state).all():
            raise ForesightError(f"state: expected {STATE_SIZE} finite numbers (from get_sim_state), got "
                                 f"{'shape ' + str(state.shape) if state is not None else 'no numbers'}")
        if not 0 <= state[2 * len(BODY_FIELDS) + 2] <= MAX_ARBITERS:
            raise ForesightError(f"state: entry {2 * len(BODY_FIELDS) + 2} counts cached contacts, 0 to "
                                 f"{MAX_ARBITERS}, got {state[2 * len(BODY_FIELDS) + 2]:g}")
        self._restore(state)

    def _restore(self, state: np.ndarray) -> None:
        """A new space (gym-pusht's _setup) holding `state` exactly."""
        sim = self.sim
        sim._setup()
        space = sim.space
        n = len(BODY_FIELDS)
        for body, values in zip((sim.agent, sim.block), (state[:n], state[n:2 * n])):
            raw = ffi.cast("double *", body._body)
            for i, x in zip(BODY_FIELDS, values.tolist()):
                raw[i] = x
            space.reindex_shapes_for_body(body)
        stamp, step, count = state[2 * n:2 * n + 3]
        cp.cpSpaceSetTimestamp(space._space, int(stamp))
        cp.cpSpaceSetCurrentTimeStep(space._space, float(step))
        arbiters = state[2 * n + 3:].reshape(MAX_ARBITERS, ARBITER_SIZE)[:int(count)]
        for v in arbiters:
            cp.cpSpaceAddCachedArbiter(space._space, _arbiter_from_dict(_decode_arbiter(v, space.shapes), space))

    def _resting(self, state) -> np.ndarray:
        """The sim state of gym-pusht's state (5,) at rest: set on fresh bodies, the angle before the position."""
        sim = self.sim
        sim._setup()
        sim.agent.position = (float(state[0]), float(state[1]))
        sim.block.angle = float(state[4])
        sim.block.position = (float(state[2]), float(state[3]))
        out = np.zeros(STATE_SIZE)
        out[:2 * len(BODY_FIELDS)] = [ffi.cast("double *", b._body)[i] for b in (sim.agent, sim.block)
                                      for i in BODY_FIELDS]
        return out

    def close(self) -> None:
        self.sim.close()


def _numbers(x) -> bool:
    try:
        np.asarray(x, dtype=np.float64)
        return True
    except (TypeError, ValueError):
        return False
