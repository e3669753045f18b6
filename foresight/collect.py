"""Collect image datasets: exploration policies, worker processes, atomic shard writing.

Episode ``i`` of a dataset is a pure function of ``(recipe, i)``: its environment seed and its
policy's random numbers come from ``numpy.random.default_rng([seed, i])``. Shard ``j`` holds
episodes ``j * shard_size ...``, so any number of workers writes byte-identical shards, and a
killed collection resumes by regenerating exactly the shards the manifest does not list.
"""
from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import queue
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from tqdm import tqdm

import foresight  # noqa: F401  (registers environments, picks the EGL backend)
from foresight import datasets
from foresight.envs import make_env
from foresight.errors import ForesightError
from foresight.recipes import field_defaults, spec, to_dict

MOVED_PX = 2.0  # an episode "moved an object" when some object got at least this far from its start


@dataclass(frozen=True)
class PolicyRecipe:
    kind: str = spec("random", choices=("random", "push", "planner"),
                     help="'random': smooth random actions; 'push': also steers toward an object part of the time; "
                          "'planner': the visual MPC of a planning suite, each episode a fresh task of the suite")
    repeat: int = spec(3, min=1, help="each sampled action is held for this many steps")
    smoothing: float = spec(0.5, min=0.0, max=0.99, help="correlation between successive sampled actions")
    scale: float = spec(1.0, min=0.0, max=1.0, help="fraction of the action range that random actions span")
    push_fraction: float = spec(0.7, min=0.0, max=1.0, help="share of episodes that steer toward an object")
    steer_prob: float = spec(0.6, min=0.0, max=1.0, help="in a steering episode, chance that an action segment steers")
    aim_fraction: float = spec(0.0, min=0.0, max=1.0,
                               help="share of steering episodes that push the object along a random direction, going "
                                    "round it first (a planner's manoeuvres), instead of driving straight at it")
    suite: str = spec("", help="kind 'planner': the planning suite (relative to the recipe) whose goals, CEM and MPC "
                               "settings the episodes use")
    planner: str = spec("oracle", choices=("oracle", "model"),
                        help="kind 'planner': 'oracle' plans with the simulator (what a model should learn to "
                             "predict), 'model' with a trained video model (the plans it gets wrong)")
    model: str = spec("", help="kind 'planner' with planner 'model': the training run (relative to the recipe)")
    replan_every: int = spec(0, min=0, help="kind 'planner': steps executed between plans (0 = the suite's "
                                            "mpc.replan_every); fewer plans, cheaper data")


@dataclass(frozen=True)
class CollectRecipe:
    name: str = spec(help="dataset name; the dataset lands in <recipe folder>/<name>/")
    env: str = spec(help="a registered environment id, e.g. foresight/PointPush-v0")
    episodes: int = spec(min=1)
    steps: int = spec(30, min=1, help="actions per episode (an episode has steps + 1 frames)")
    seed: int = spec(0, min=0)
    shard_size: int = spec(50, min=1, help="episodes per shard file")
    env_kwargs: dict = spec({}, help="options passed to the environment")
    reset_options: dict = spec({}, help="options for env.reset, e.g. {pusher_near = 0.02} in PointPush")
    reset_fraction: float = spec(1.0, min=0.0, max=1.0, help="share of episodes reset with reset_options "
                                                             "(the others reset plainly)")
    policy: PolicyRecipe = spec(PolicyRecipe())


class ExplorationPolicy:
    """Smooth random actions held for ``repeat`` steps; in pushing scenes, sometimes steer at an object.

    Steering asks the environment: ``env.unwrapped.steer_toward(k)`` returns an action that moves the
    pusher (or the arm's tip) toward object ``k``; driving through the object's centre pushes it. Aiming
    episodes (``aim_fraction``) ask ``env.unwrapped.push_along(k, angle)`` instead: round the object, then
    push it along a direction, as a planner moving it to a goal would.
    """

    def __init__(self, recipe: PolicyRecipe, action_space: gym.spaces.Box, rng: np.random.Generator, env: gym.Env):
        self.r, self.rng, self.env = recipe, rng, env.unwrapped
        self.low, self.high = action_space.low.astype(np.float64), action_space.high.astype(np.float64)
        self.noise = np.zeros(action_space.shape)
        self.steering = recipe.kind == "push" and rng.random() < recipe.push_fraction
        # drawn only when asked for, so datasets of recipes without aiming keep their bytes
        self.aiming = self.steering and recipe.aim_fraction > 0 and rng.random() < recipe.aim_fraction
        self.angle = rng.uniform(-math.pi, math.pi) if self.aiming else 0.0
        self.target = 0
        self.held, self.left = None, 0

    def __call__(self) -> np.ndarray:
        if self.left == 0:
            self.left = self.r.repeat
            rho = self.r.smoothing
            self.noise = rho * self.noise + np.sqrt(1 - rho**2) * self.rng.standard_normal(self.noise.shape)
            # The normal CDF maps the correlated Gaussian noise to actions uniform over the range.
            unit = self.r.scale * np.array([math.erf(x / math.sqrt(2)) for x in self.noise.ravel()]).reshape(self.noise.shape)
            action = self.low + (unit + 1) / 2 * (self.high - self.low)
            if self.steering and self.rng.random() < self.r.steer_prob:
                if self.rng.random() < 0.2:
                    # an object on the table (PointPush may park some outside the walls)
                    self.target = int(self.rng.integers(getattr(self.env, "present", len(self.env.point_names))))
                if self.aiming:
                    if self.rng.random() < 0.1:  # now and then a new direction: pushes of a planner's length
                        self.angle = self.rng.uniform(-math.pi, math.pi)
                    steer = np.asarray(self.env.push_along(self.target, self.angle), dtype=np.float64)
                else:
                    steer = np.asarray(self.env.steer_toward(self.target), dtype=np.float64)
                action = np.clip(steer + 0.3 * (action - (self.low + self.high) / 2), self.low, self.high)
            self.held = action.astype(np.float32)
        self.left -= 1
        return self.held


def run_episode(env: gym.Env, recipe: CollectRecipe, index: int) -> dict[str, np.ndarray]:
    """Episode ``index`` of the dataset, as arrays in the dataset layout."""
    rng = np.random.default_rng([recipe.seed, index])
    if recipe.policy.kind == "planner":
        return run_planner_episode(env, recipe, index, rng)
    seed = int(rng.integers(2**31))
    options = recipe.reset_options if recipe.reset_options and rng.random() < recipe.reset_fraction else None
    obs, info = env.reset(seed=seed, options=options)
    policy = ExplorationPolicy(recipe.policy, env.action_space, rng, env)
    frames, actions, states, points = [obs], [], [info["state"]], [info["points"]]
    for _ in range(recipe.steps):
        action = policy()
        obs, _, _, _, info = env.step(action)
        frames.append(obs), actions.append(action), states.append(info["state"]), points.append(info["points"])
    return {"frames": np.stack(frames).astype(np.uint8), "actions": np.stack(actions).astype(np.float32),
            "states": np.stack(states).astype(np.float32), "points": np.stack(points).astype(np.float32)}


def run_planner_episode(env: gym.Env, recipe: CollectRecipe, index: int, rng: np.random.Generator) -> dict:
    """A planner's episode: a fresh task of the policy's suite (its reset seed and goal drawn from ``rng``),
    planned and executed by the suite's visual MPC for ``recipe.steps`` steps, with a CEM seed of its own.
    Data of the plans a planner makes, which random exploration seldom shows (going round the block,
    pushes aimed at a goal) and, from a model's planner, the plans its errors led to."""
    from foresight.planning import mpc, suites

    suite, predictor = _planner(recipe.policy)
    near = bool(recipe.reset_options) and rng.random() < recipe.reset_fraction
    mpc_settings = suite.mpc if not recipe.policy.replan_every else \
        dataclasses.replace(suite.mpc, replan_every=recipe.policy.replan_every)
    suite = dataclasses.replace(suite, steps=recipe.steps, reset_options=recipe.reset_options if near else {},
                                cem=dataclasses.replace(suite.cem, seed=int(rng.integers(2**31))), mpc=mpc_settings)
    task = suites.make_task(suite, env, index, rng)
    outcome = mpc.run_task(env, task, suite, recipe.policy.planner, predictor, record=False, keep_episode=True)
    e = outcome.episode
    return {"frames": e["frames"].astype(np.uint8), "actions": e["actions"].astype(np.float32),
            "states": e["states"].astype(np.float32), "points": e["points"].astype(np.float32)}


_PLANNERS: dict = {}  # (suite, model) -> (suite recipe, predictor): loaded once per process


def _planner(policy: PolicyRecipe):
    from foresight.planning import planners, suites

    key = (policy.suite, policy.model if policy.planner == "model" else "")
    if key not in _PLANNERS:
        suite = suites.load(policy.suite)
        predictor = None
        if policy.planner == "model":
            import torch

            # one thread: a convolution's float sums depend on the thread count, CEM's choices on those
            # sums, and a dataset must be the same bytes for any number of worker processes
            torch.set_num_threads(1)
            predictor = planners.load_model(policy.model)
        _PLANNERS[key] = (suite, predictor)
    return _PLANNERS[key]


def _resolve_planner(recipe: CollectRecipe, env: gym.Env, source: str) -> CollectRecipe:
    """Kind 'planner': the suite and model paths made absolute (relative to the recipe file) and checked
    against the recipe's environment, so workers anywhere load the same planner."""
    from foresight.planning import suites

    p = recipe.policy
    base = Path(source).resolve().parent if Path(source).is_file() else Path.cwd()
    if not p.suite:
        raise ForesightError(f"{source}: key 'policy.suite': kind 'planner' needs a planning suite, e.g. "
                             f"suite = \"../plan/point_push.toml\"")
    suite_path = (base / p.suite).resolve()
    suite = suites.load(suite_path)
    if suite.kind != "designated_pixels":
        raise ForesightError(f"{source}: key 'policy.suite': {suite_path} is a {suite.kind} suite; the planner "
                             f"policy runs designated-pixel suites")
    if (suite.env, suite.env_kwargs) != (recipe.env, recipe.env_kwargs):
        raise ForesightError(f"{source}: key 'policy.suite': {suite_path} plans in {suite.env} {suite.env_kwargs}, "
                             f"the recipe collects {recipe.env} {recipe.env_kwargs}; they must be the same")
    model = ""
    if p.planner == "model":
        if not p.model:
            raise ForesightError(f"{source}: key 'policy.model': planner 'model' needs a training run, e.g. "
                                 f"model = \"../train/runs/plan_point_push\"")
        model = str((base / p.model).resolve())
        _PLANNERS.pop((str(suite_path), model), None)  # the run may have been retrained since this process loaded it
        _, predictor = _planner(dataclasses.replace(p, suite=str(suite_path), model=model))
        predictor.check_env(recipe.env, recipe.env_kwargs, env, f"{source}: key 'policy.model'")
    elif not hasattr(env.unwrapped, "rollout_points"):
        raise ForesightError(f"{source}: key 'policy.planner': the oracle needs an environment that can roll out "
                             f"its objects' pixels, and {recipe.env} cannot (use 'model')")
    try:
        suites.check(suite, env)
    except ForesightError as e:
        raise ForesightError(f"{source}: key 'policy.suite': {suite_path}: {e}") from None
    return dataclasses.replace(recipe, policy=dataclasses.replace(p, suite=str(suite_path), model=model))


def objects_moved(points: np.ndarray, threshold: float = MOVED_PX) -> int:
    """How many tracked points got ``threshold`` pixels from where they started? points: (T+1, K, 2)."""
    return int((np.linalg.norm(points - points[:1], axis=-1).max(0) >= threshold).sum())


def shard_plan(recipe: CollectRecipe) -> list[range]:
    """The episode indices of each shard."""
    return [range(s, min(s + recipe.shard_size, recipe.episodes)) for s in range(0, recipe.episodes, recipe.shard_size)]


def collect(recipe: CollectRecipe, out: str | Path, workers: int = 1, source: str = "recipe",
            progress: bool = True) -> Path:
    """Collect (or finish collecting) the dataset of ``recipe`` into ``out``; return ``out``."""
    out = Path(out)
    if workers < 1:
        raise ForesightError(f"--workers: expected an integer >= 1, got {workers}")
    env = make_env(recipe.env, recipe.env_kwargs, source)
    if recipe.policy.kind == "push" and not hasattr(env.unwrapped, "steer_toward"):
        raise ForesightError(f"{source}: key 'policy.kind': 'push' needs an environment that can steer toward objects, "
                             f"and {recipe.env} cannot (use 'random')")
    if recipe.policy.kind == "push" and recipe.policy.aim_fraction > 0 and not hasattr(env.unwrapped, "push_along"):
        raise ForesightError(f"{source}: key 'policy.aim_fraction': aimed pushes need an environment that can push an "
                             f"object along a direction (PointPush), and {recipe.env} cannot (use 0)")
    if recipe.reset_options:
        try:
            env.reset(seed=0, options=recipe.reset_options)
        except ForesightError as e:
            raise ForesightError(f"{source}: key 'reset_options': {e}") from None
    header = _header(recipe, env)  # the recipe as written: the manifest holds no paths of this machine
    if recipe.policy.kind == "planner":
        recipe = _resolve_planner(recipe, env, source)
    env.close()

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.tmp"):  # left by a killed run; never referenced by the manifest
        stale.unlink()
    manifest = datasets.read_manifest(out) if (out / datasets.MANIFEST).exists() else None
    if manifest is not None:
        _check_same_recipe(manifest, header, out)
    plan = shard_plan(recipe)
    done = {}
    for entry in (manifest or {}).get("shards", []):
        j = entry["index"]
        if j < len(plan) and entry["episodes"] == len(plan[j]) and (out / entry["file"]).exists():
            done[j] = entry
    todo = [j for j in range(len(plan)) if j not in done]

    def publish():
        shards = [done[j] for j in sorted(done)]
        datasets.write_manifest(out, {**header, "shards": shards, "complete": len(done) == len(plan)})

    publish()
    frames_per_episode = recipe.steps + 1
    bar = tqdm(total=recipe.episodes * frames_per_episode, unit="frame", unit_scale=True, disable=not progress,
               initial=sum(len(plan[j]) for j in done) * frames_per_episode, desc=f"collect {recipe.name}",
               dynamic_ncols=True, smoothing=0.1)
    try:
        if workers == 1 or len(todo) <= 1:
            ticks = lambda: bar.update(frames_per_episode)  # noqa: E731
            for j in todo:
                done[j] = write_shard(recipe, j, out, ticks)
                publish()
        else:
            ctx = mp.get_context("spawn")  # MuJoCo's GL context does not survive fork
            q = ctx.Queue()
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx, initializer=_init_worker,
                                     initargs=(q,)) as pool:
                pending = {pool.submit(_worker_shard, recipe, j, str(out)): j for j in todo}
                while pending:
                    finished, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(q, bar, frames_per_episode)
                    for fut in finished:
                        j = pending.pop(fut)
                        done[j] = fut.result()
                        publish()
                _drain(q, bar, frames_per_episode)
    finally:
        bar.close()
    return out


def write_shard(recipe: CollectRecipe, j: int, out: Path, on_episode=None) -> dict:
    """Generate shard ``j`` into a temporary file and publish it with an atomic rename."""
    env = make_env(recipe.env, recipe.env_kwargs)
    episodes = shard_plan(recipe)[j]
    moved = several = 0  # episodes that moved an object; two or more
    try:
        with datasets.ShardWriter(out / datasets.shard_name(j)) as writer:
            for i in episodes:
                episode = run_episode(env, recipe, i)
                n = objects_moved(episode["points"])
                moved, several = moved + (n >= 1), several + (n >= 2)
                writer.add(i, episode)
                if on_episode is not None:
                    on_episode()
    finally:
        env.close()
    return {"index": j, "file": datasets.shard_name(j), "first_episode": episodes.start, "episodes": len(episodes),
            "sha256": writer.sha256, "moved": moved, "moved_several": several}


def _header(recipe: CollectRecipe, env: gym.Env) -> dict:
    obs, info = env.reset(seed=0)
    u = env.unwrapped
    t1 = recipe.steps + 1
    return {
        "format": datasets.FORMAT, "version": datasets.VERSION, "name": recipe.name,
        "env": {"id": recipe.env, "kwargs": recipe.env_kwargs},
        "recipe": to_dict(recipe),
        "episodes": recipe.episodes,
        "shapes": {"frames": [t1, *obs.shape], "actions": [recipe.steps, *env.action_space.shape],
                   "states": [t1, *np.shape(info["state"])], "points": [t1, *np.shape(info["points"])]},
        "action_space": {"low": env.action_space.low.tolist(), "high": env.action_space.high.tolist()},
        "point_names": list(getattr(u, "point_names", [f"point{k}" for k in range(len(info["points"]))])),
        "moved_threshold_px": MOVED_PX,
    }


def _check_same_recipe(manifest: dict, header: dict, out: Path) -> None:
    old, new = dict(manifest.get("recipe", {})), dict(header["recipe"])
    old.pop("episodes", None), new.pop("episodes", None)  # more (or fewer) episodes is a resume, not a change
    defaults = field_defaults(CollectRecipe)
    for key in sorted(set(old) | set(new)):
        # a key added to the recipe format since the dataset was made reads as its default (in tables too)
        was = old.get(key, defaults.get(key))
        if isinstance(was, dict) and isinstance(defaults.get(key), dict):
            was = {**defaults[key], **was}
        if was != new.get(key):
            raise ForesightError(f"{out / datasets.MANIFEST}: this dataset was collected with {key} = {old.get(key)!r}, "
                                 f"the recipe now says {new.get(key)!r}; collect into another --out or delete {out}")


_progress_queue = None


def _init_worker(q) -> None:
    global _progress_queue
    _progress_queue = q


def _worker_shard(recipe: CollectRecipe, j: int, out: str) -> dict:
    return write_shard(recipe, j, Path(out), lambda: _progress_queue.put(1))


def _drain(q, bar, n) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
        bar.update(n)
