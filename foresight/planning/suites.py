"""Task suites: what a planner is asked to do, seeded, and how it is judged.

Two kinds of suite, each a TOML file under plan/ (``kind`` picks one; ``load`` reads either):

    designated_pixels  move each designated pixel (an object's pixel in the first frame) to its goal pixel,
                       judged by the simulator's object pixels (success: every object within success_px)
    goal_image         reach the scene of a goal image (Embed to Control's tasks, PCC / PC3's protocol), judged
                       by the true state's distance to the goal's (the percentage of steps in the goal region)

Both make ``Task``s: a reset seed and options, the designated objects' start and goal pixels and, for goal
images, the goal image and state. Task i is a pure function of (suite, i).
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np

from foresight import recipes
from foresight.errors import ForesightError
from foresight.planning.cem import CEMConfig
from foresight.planning.costs import CostSettings
from foresight.planning.ilqr import ILQRSettings
from foresight.planning.tracking import TRACKING
from foresight.recipes import spec


# the planners of each kind of suite (planners.py makes them): those that need a model first
PLANNERS = {"designated_pixels": ("model", "oracle", "random"),
            "goal_image": ("cem", "ilqr", "model", "random", "oracle")}


def _unknown_planners(suite):
    for name in suite.baselines:
        if name not in PLANNERS[suite.kind]:
            yield "baselines", f"planners of {', '.join(PLANNERS[suite.kind])} (unknown planner {name!r})"
            return


def _heldout_seed(suite):
    if suite.heldout_seed and suite.heldout_seed == suite.seed:
        yield "heldout_seed", f"a seed other than seed = {suite.seed} (the twin's tasks must be other tasks)"


def heldout(suite, source: str = "suite"):
    """The suite's held-out twin: the same settings on the tasks of ``heldout_seed``, named <name>_heldout. Its
    figures are the ones to report: the settings were chosen looking at the suite's own tasks, never at these."""
    if not suite.heldout_seed:
        raise ForesightError(f"{source}: key 'heldout_seed': this suite has no held-out twin (set heldout_seed to a "
                             f"seed other than seed = {suite.seed})")
    twin = dataclasses.replace(suite, name=f"{suite.name}_heldout", seed=suite.heldout_seed)
    if getattr(suite, "goal", None) == "trajectory":
        twin = dataclasses.replace(twin, goal_data=suite.heldout_goal_data)
    return twin


@dataclass(frozen=True)
class MPCSettings:
    replan_every: int = spec(3, min=1, help="environment steps executed between plans")
    track: str = spec("model", choices=TRACKING,
                      help="how the model planner knows where each designated pixel is after executing: 'model' "
                           "carries the model's predicted distribution (visual foresight); 'registration' re-finds "
                           "it in the camera frame (planning.tracking, images only); 'true' restarts it at the "
                           "simulator's object pixel (for comparison)")
    amp: str = spec("off", choices=("off", "bf16"), help="bf16 autocast for the model's predictions")
    latent_samples: int = spec(4, min=1, help="a stochastic video model: its latent draws (once per task) that every "
                                              "plan is predicted under, the cost aggregated over them (cost.spread)")
    until_success: bool = spec(False, help="end a task at its first step in the goal, as gym-pusht's episode ends "
                                           "there (success is then success at any step; the remaining steps are "
                                           "not run)")


@dataclass(frozen=True)
class DesignatedPixelSuite:
    name: str = spec(help="suite name; results land in <suite folder>/results/<name>/")
    env: str = spec(help="a registered environment id")
    kind: str = spec("designated_pixels", choices=("designated_pixels",), help="the kind of task")
    tasks: int = spec(50, min=1)
    seed: int = spec(0, min=0)
    heldout_seed: int = spec(0, min=0, help="the held-out twin's seed (0 = none): `foresight plan --heldout` runs the "
                                            "same suite on these other tasks, which no setting was tuned on")
    steps: int = spec(45, min=1, help="environment steps per task")
    designated: int = spec(1, min=1, help="how many objects (the first ones) are designated")
    goal: str = spec("offset", choices=("offset", "env", "trajectory"),
                     help="'offset': goal pixels goal_min_px..goal_max_px from the start; 'env': info['goal_pixel'], "
                          "the environment's own goal (one pixel for all, or one per designated object); "
                          "'trajectory': a start state of a recorded episode (goal_data) and its state goal_after "
                          "steps later (DINO-WM's protocol)")
    goal_data: str = spec("", help="goal = 'trajectory': the dataset whose episodes give the start-goal pairs "
                                   "(relative to the suite file); the held-out twin reads heldout_goal_data")
    heldout_goal_data: str = spec("", help="goal = 'trajectory': the held-out twin's dataset (other episodes)")
    goal_after: int = spec(25, min=1, help="goal = 'trajectory': environment steps from the start state to the goal")
    success: str = spec("pixels", choices=("pixels", "state", "env"),
                        help="'pixels': every designated object within success_px of its goal pixel; 'state': the "
                             "environment's own criterion for a goal state (goal_reached, e.g. PushT's pose); "
                             "'env': its own task's (info['is_success'], e.g. gym-pusht's coverage above 0.95)")
    goal_min_px: float = spec(8.0, min=0.0)
    goal_max_px: float = spec(20.0, min=0.0)
    goal_margin_px: float = spec(10.0, min=0.0, help="offset goals stay this far inside the image border")
    success_px: float = spec(3.0, min=0.0)
    baselines: tuple[str, ...] = spec(("random", "oracle"), help="planners run beside the model")
    env_kwargs: dict = spec({})
    reset_options: dict = spec({}, help="options for env.reset, e.g. {pusher_near = 0.03} in PointPush")
    cem: CEMConfig = spec(CEMConfig())
    mpc: MPCSettings = spec(MPCSettings())
    cost: CostSettings = spec(CostSettings(designated_pixels=1.0), help="the planner's cost terms and weights")

    def checks(self):
        yield from _heldout_seed(self)
        if self.goal_min_px > self.goal_max_px:
            yield "goal_min_px", f"at most goal_max_px ({self.goal_max_px})"
        if self.goal == "trajectory" and not self.goal_data:
            yield "goal_data", "a dataset of episodes for goal = 'trajectory'"
        if self.goal == "trajectory" and self.heldout_seed and self.heldout_goal_data in ("", self.goal_data):
            yield "heldout_goal_data", "the held-out twin's own dataset, not goal_data's episodes"
        if self.success == "state" and self.goal != "trajectory":
            yield "success", "'pixels' unless goal = 'trajectory' (only it gives goal states)"
        yield from _unknown_planners(self)

    @property
    def replan_every(self) -> int:
        return self.mpc.replan_every

    @property
    def until_success(self) -> bool:
        return self.mpc.until_success


@dataclass(frozen=True)
class GoalImageSuite:
    until_success = False  # a goal-image task runs all its steps (mpc.run_task reads this)
    name: str = spec(help="suite name; results land in <suite folder>/results/<name>/")
    env: str = spec(help="a registered environment id")
    kind: str = spec("goal_image", choices=("goal_image",), help="the kind of task")
    tasks: int = spec(10, min=1, help="start-goal pairs")
    seed: int = spec(0, min=0)
    heldout_seed: int = spec(0, min=0, help="the held-out twin's seed (0 = none): `foresight plan --heldout` runs the "
                                            "same suite on these other tasks, which no setting was tuned on")
    steps: int = spec(40, min=1, help="environment steps per task")
    env_kwargs: dict = spec({})
    start_low: tuple[float, ...] = spec((), help="start states uniform in [start_low, start_high]; "
                                                 "empty: the environment's own random reset")
    start_high: tuple[float, ...] = spec(())
    reset_options: dict = spec({}, help="options for env.reset when start_low is empty")
    goal_states: tuple[tuple[float, ...], ...] = spec((), help="goal states; task i takes goal_states[i % n]")
    goal_push_steps: int = spec(0, min=0, help="without goal_states: the goal image is the scene after this many "
                                               "steps of steering the pusher at the first object (PointPush)")
    region: str = spec("state", choices=("state", "points"),
                       help="goal region in the true state ('state') or around the first tracked pixel ('points')")
    region_dims: tuple[int, ...] = spec((0, 1), help="'state': the state entries compared with the goal's")
    region_radius: float = spec(2.0, min=0.0, help="in the goal region when the distance is at most this")
    region_wrap: bool = spec(False, help="'state': compare angles modulo 2 pi")
    baselines: tuple[str, ...] = spec(("random",), help="planners run beside cem and ilqr by default")
    replan_every: int = spec(1, min=1, help="environment steps executed between plans")
    cost: CostSettings = spec(CostSettings(goal_distance=1.0, effort=0.01, last_weight=1.0),
                              help="the planner's cost terms and weights")
    cem: CEMConfig = spec(CEMConfig(samples=100, elites=10, iterations=4, horizon=10, repeat=1, init_std=0.5))
    ilqr: ILQRSettings = spec(ILQRSettings())

    def checks(self):
        yield from _heldout_seed(self)
        if len(self.start_low) != len(self.start_high):
            yield "start_high", f"as many numbers as start_low ({len(self.start_low)})"
        elif any(lo > hi for lo, hi in zip(self.start_low, self.start_high)):
            yield "start_low", "at most start_high in every entry"
        if not self.goal_states and not self.goal_push_steps:
            yield "goal_states", "goal states, or goal_push_steps > 0 for pushed goals"
        if self.region == "state" and not self.goal_states:
            yield "region", "'points' for pushed goals ('state' needs goal_states)"
        if self.region == "state" and not self.region_dims:
            yield "region_dims", "at least one state entry"
        yield from _unknown_planners(self)


SUITES = {"designated_pixels": DesignatedPixelSuite, "goal_image": GoalImageSuite}
Suite = DesignatedPixelSuite | GoalImageSuite


def load(path, overrides=()) -> Suite:
    """Read a suite file of either kind (its ``kind`` key, designated_pixels by default); its dataset paths are
    taken relative to the file."""
    try:
        kind = tomllib.loads(Path(path).read_text()).get("kind", "designated_pixels")
    except (OSError, tomllib.TOMLDecodeError):
        kind = "designated_pixels"  # recipes.load names the problem
    for item in overrides:
        if item.replace(" ", "").startswith("kind="):
            kind = item.split("=", 1)[1].strip().strip("'\"")
    if kind not in SUITES:
        raise ForesightError(f"{path}: key 'kind': expected one of {list(SUITES)}, got {kind!r}")
    suite = recipes.load(SUITES[kind], path, overrides)
    if kind == "designated_pixels":
        suite = dataclasses.replace(suite, **{key: str(Path(path).parent / getattr(suite, key))
                                              for key in ("goal_data", "heldout_goal_data") if getattr(suite, key)})
    return suite


@dataclass
class Task:
    index: int
    seed: int  # the environment's reset seed
    designated: np.ndarray  # (K, 2) the designated objects' pixels at the start, (row, col)
    goals: np.ndarray  # (K, 2) their goal pixels
    reset_options: dict = field(default_factory=dict)  # with the seed, puts the environment at the start state
    goal_frame: np.ndarray | None = field(default=None, repr=False)  # (H, W, C) uint8, goal-image tasks
    goal_state: np.ndarray | None = None  # (S,) the true goal state, when the goal was given as one
    episode: int | None = None  # goal = 'trajectory': the goal dataset's episode and the start's step in it
    start_step: int | None = None
    objects: tuple[int, ...] = ()  # the tracked object (info["points"] index) each designated pixel is on; () = 0..K-1

    @property
    def indices(self) -> list[int]:
        return list(self.objects) if self.objects else list(range(len(self.goals)))


def nearest_objects(points: np.ndarray, designated: np.ndarray) -> tuple[int, ...]:
    """The tracked object nearest each designated pixel: points (M, 2), designated (K, 2) -> K indices."""
    d = np.linalg.norm(np.asarray(designated, np.float64)[:, None] - np.asarray(points, np.float64)[None], axis=-1)
    return tuple(int(i) for i in d.argmin(1))


def check(suite: Suite, env: gym.Env) -> None:
    """What a suite asks of its environment, checked once before any task runs (errors name the key)."""
    u = env.unwrapped
    _, info = _reset(env, 0, suite.reset_options or None, "reset_options")
    if suite.cost.approach > 0 and not hasattr(u, "agent_path"):
        raise ForesightError(f"key 'cost.approach': environment {suite.env!r} offers no agent_path (its "
                             f"agent's pixels along a plan)")
    if isinstance(suite, DesignatedPixelSuite):
        if suite.designated > len(info["points"]):
            raise ForesightError(f"key 'designated': {suite.env} tracks {len(info['points'])} object(s), "
                                 f"got {suite.designated}")
        if suite.goal == "env":
            if "goal_pixel" not in info:
                raise ForesightError(f"key 'goal': {suite.env} has no goal pixel; use goal = 'offset'")
            n = len(np.reshape(info["goal_pixel"], (-1, 2)))
            if n not in (1, suite.designated):
                raise ForesightError(f"key 'designated': {suite.env} gives {n} goal pixels (goal = 'env'), "
                                     f"got {suite.designated} designated")
        if suite.success == "env" and "is_success" not in info:
            raise ForesightError(f"key 'success': {suite.env} has no task of its own (info['is_success']); "
                                 f"use success = 'pixels'")
        if suite.success == "state" and not hasattr(u, "goal_reached"):
            raise ForesightError(f"key 'success': {suite.env} has no goal_reached (its own success criterion); "
                                 f"use success = 'pixels'")
        return
    S = len(info["state"])
    if suite.start_low and len(suite.start_low) != S:
        raise ForesightError(f"key 'start_low': {suite.env} has states of {S} numbers, "
                             f"got {len(suite.start_low)}")
    for g in suite.goal_states:
        if len(g) != S:
            raise ForesightError(f"key 'goal_states': {suite.env} has states of {S} numbers, got {list(g)}")
    if suite.goal_push_steps and not suite.goal_states and not hasattr(u, "steer_toward"):
        raise ForesightError(f"key 'goal_push_steps': {suite.env} has no pusher to steer; give goal_states")
    if suite.region == "state" and any(d < 0 or d >= S for d in suite.region_dims):
        raise ForesightError(f"key 'region_dims': expected state entries in 0..{S - 1}, "
                             f"got {list(suite.region_dims)}")


def make_tasks(suite: Suite, env: gym.Env, source: str = "suite") -> list[Task]:
    """The seeded tasks of a suite; a mistake names ``source`` (the suite file) and the key."""
    try:
        check(suite, env)
        if getattr(suite, "goal", None) == "trajectory":
            return trajectory_tasks(suite, env)
        return [make_task(suite, env, i, np.random.default_rng([suite.seed, i])) for i in range(suite.tasks)]
    except ForesightError as e:
        raise ForesightError(f"{source}: {e}") from None


def make_task(suite: Suite, env: gym.Env, index: int, rng: np.random.Generator) -> Task:
    """One task drawn with ``rng``: its reset seed, then its goal."""
    if isinstance(suite, GoalImageSuite):
        return _goal_image_task(suite, env, index, rng)
    seed = int(rng.integers(2**31))
    obs, info = env.reset(seed=seed, options=suite.reset_options)
    H, W = obs.shape[:2]
    designated = info["points"][:suite.designated].astype(np.float64)
    if suite.goal == "env":
        goals = np.asarray(info["goal_pixel"], dtype=np.float64).reshape(-1, 2)
        goals = goals.repeat(suite.designated, 0) if len(goals) == 1 else goals
    else:
        goals = np.stack([_offset_goal(p, suite, H, W, rng) for p in designated])
    return Task(index, seed, designated, goals, dict(suite.reset_options))


def trajectory_tasks(suite: DesignatedPixelSuite, env: gym.Env) -> list[Task]:
    """DINO-WM's start-goal pairs: task i starts at a state of one of goal_data's episodes (each episode used at
    most once, in an order drawn with the suite's seed) and its goal is the state goal_after steps later."""
    from foresight.datasets import EpisodeStore

    try:
        store = EpisodeStore(suite.goal_data)
    except ForesightError as e:
        raise ForesightError(f"key 'goal_data': {e}") from None
    if store.manifest["env"]["id"] != suite.env:
        raise ForesightError(f"key 'goal_data': {suite.goal_data} holds {store.manifest['env']['id']} episodes, "
                             f"the suite runs {suite.env}")
    steps = store.shapes["actions"][0]
    if steps < suite.goal_after:
        raise ForesightError(f"key 'goal_after': {suite.goal_data}'s episodes have {steps} steps, fewer than "
                             f"goal_after = {suite.goal_after}")
    if suite.tasks > len(store):
        raise ForesightError(f"key 'tasks': {suite.goal_data} has {len(store)} episodes, fewer than "
                             f"tasks = {suite.tasks}")
    rng = np.random.default_rng(suite.seed)
    episodes = rng.permutation(len(store))[:suite.tasks]
    tasks = []
    for i, e in enumerate(episodes):
        t = int(rng.integers(steps - suite.goal_after + 1))
        states = store.read(int(e), "states")
        start, goal = states[t].astype(np.float64), states[t + suite.goal_after].astype(np.float64)
        goal_frame, goal_info = _reset(env, 0, {"state": goal.tolist()}, "goal_data")
        _, info = _reset(env, 0, {"state": start.tolist()}, "goal_data")
        K = suite.designated
        tasks.append(Task(i, 0, info["points"][:K].astype(np.float64), goal_info["points"][:K].astype(np.float64),
                          {"state": start.tolist()}, goal_frame, goal, episode=int(e), start_step=t))
    return tasks


def _offset_goal(point, suite: DesignatedPixelSuite, H: int, W: int, rng) -> np.ndarray:
    m = suite.goal_margin_px
    for _ in range(1000):
        angle, radius = rng.uniform(0, 2 * math.pi), rng.uniform(suite.goal_min_px, suite.goal_max_px)
        goal = point + radius * np.array([math.sin(angle), math.cos(angle)])
        if m <= goal[0] <= H - 1 - m and m <= goal[1] <= W - 1 - m:
            return goal
    raise ForesightError(f"key 'goal_margin_px': no goal {suite.goal_min_px}..{suite.goal_max_px} px from "
                         f"{point.round(1).tolist()} lies {m} px inside the {H}x{W} image; lower goal_margin_px or "
                         f"the goal distances")


def _goal_image_task(suite: GoalImageSuite, env: gym.Env, index: int, rng) -> Task:
    seed = int(rng.integers(2**31))
    if suite.start_low:
        options = {"state": rng.uniform(suite.start_low, suite.start_high).tolist()}
    else:
        options = dict(suite.reset_options)
    _, info = _reset(env, seed, options, "start_low")
    start_points = info["points"].astype(np.float64)
    if suite.goal_states:
        goal_state = np.asarray(suite.goal_states[index % len(suite.goal_states)], dtype=np.float64)
        goal_frame, goal_info = _reset(env, seed, {"state": goal_state.tolist()}, "goal_states")
    else:  # a reachable goal: push the first object for a while, keep that picture
        goal_state = None
        u = env.unwrapped
        for _ in range(suite.goal_push_steps):
            noise = rng.normal(0.0, 0.3, env.action_space.shape)
            action = np.clip(u.steer_toward(0) + noise, env.action_space.low, env.action_space.high)
            goal_frame, _, _, _, goal_info = env.step(action.astype(np.float32))
    return Task(index, seed, start_points[:1], goal_info["points"].astype(np.float64)[:1], options, goal_frame,
                goal_state)


def _reset(env, seed, options, key):
    try:
        return env.reset(seed=seed, options=options)
    except ForesightError as e:
        raise ForesightError(f"key {key!r}: {e}") from None


def judge(suite: Suite, task: Task, info: dict, env: gym.Env | None = None) -> tuple[float, bool]:
    """(the designated objects' mean distance to their goal pixels, inside the goal region) of the true scene;
    ``env`` judges a suite with success = 'state' (its ``goal_reached``), ``info`` one with success = 'env'."""
    distances = np.linalg.norm(info["points"][task.indices] - task.goals, axis=-1)
    if isinstance(suite, DesignatedPixelSuite) and suite.success == "state":
        return float(distances.mean()), bool(env.unwrapped.goal_reached(task.goal_state))
    if isinstance(suite, DesignatedPixelSuite) and suite.success == "env":
        return float(distances.mean()), bool(info["is_success"])
    if isinstance(suite, DesignatedPixelSuite):
        return float(distances.mean()), bool((distances <= suite.success_px).all())
    return float(distances.mean()), region_distance(suite, task, info) <= suite.region_radius


def region_distance(suite: GoalImageSuite, task: Task, info: dict) -> float:
    """The true scene's distance to the goal region's centre: the state entries' or the first tracked pixel's."""
    if suite.region == "points":
        return float(np.linalg.norm(info["points"][0] - task.goals[0]))
    dims = list(suite.region_dims)
    diff = np.asarray(info["state"], dtype=np.float64)[dims] - task.goal_state[dims]
    if suite.region_wrap:
        diff = (diff + math.pi) % (2 * math.pi) - math.pi
    return float(np.linalg.norm(diff))
