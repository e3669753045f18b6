"""Collect image datasets: exploration policies, worker processes, atomic shard writing.

Episode ``i`` of a dataset is a pure function of ``(recipe, i)``: its environment seed and its
policy's random numbers come from ``numpy.random.default_rng([seed, i])``. Shard ``j`` holds
episodes ``j * shard_size ...``, so any number of workers writes byte-identical shards, and a
killed collection resumes by regenerating exactly the shards the manifest does not list.
"""
from __future__ import annotations

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
from foresight.errors import ForesightError
from foresight.recipes import field_defaults, spec, to_dict

MOVED_PX = 2.0  # an episode "moved an object" when some object got at least this far from its start


@dataclass(frozen=True)
class PolicyRecipe:
    kind: str = spec("random", choices=("random", "push"),
                     help="'random': smooth random actions; 'push': also steers toward an object part of the time")
    repeat: int = spec(3, min=1, help="each sampled action is held for this many steps")
    smoothing: float = spec(0.5, min=0.0, max=0.99, help="correlation between successive sampled actions")
    scale: float = spec(1.0, min=0.0, max=1.0, help="fraction of the action range that random actions span")
    push_fraction: float = spec(0.7, min=0.0, max=1.0, help="share of episodes that steer toward an object")
    steer_prob: float = spec(0.6, min=0.0, max=1.0, help="in a steering episode, chance that an action segment steers")


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


def make_env(env_id: str, env_kwargs: dict, source: str = "recipe") -> gym.Env:
    """``gym.make`` with errors that name the recipe key at fault."""
    if env_id not in gym.registry:
        known = ", ".join(k for k in gym.registry if k.startswith("foresight/"))
        raise ForesightError(f"{source}: key 'env': unknown environment {env_id!r} (foresight offers: {known})")
    try:
        return gym.make(env_id, render_mode="rgb_array", disable_env_checker=True, **env_kwargs)
    except TypeError as e:
        raise ForesightError(f"{source}: key 'env_kwargs': {env_id} rejected the options {env_kwargs} ({e})") from None
    except ForesightError as e:
        raise ForesightError(f"{source}: key 'env_kwargs': {e}") from None


class ExplorationPolicy:
    """Smooth random actions held for ``repeat`` steps; in pushing scenes, sometimes steer at an object.

    Steering asks the environment: ``env.unwrapped.steer_toward(k)`` returns an action that moves the
    pusher (or the arm's tip) toward object ``k``; driving through the object's centre pushes it.
    """

    def __init__(self, recipe: PolicyRecipe, action_space: gym.spaces.Box, rng: np.random.Generator, env: gym.Env):
        self.r, self.rng, self.env = recipe, rng, env.unwrapped
        self.low, self.high = action_space.low.astype(np.float64), action_space.high.astype(np.float64)
        self.noise = np.zeros(action_space.shape)
        self.steering = recipe.kind == "push" and rng.random() < recipe.push_fraction
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
                    self.target = int(self.rng.integers(len(self.env.point_names)))
                steer = np.asarray(self.env.steer_toward(self.target), dtype=np.float64)
                action = np.clip(steer + 0.3 * (action - (self.low + self.high) / 2), self.low, self.high)
            self.held = action.astype(np.float32)
        self.left -= 1
        return self.held


def run_episode(env: gym.Env, recipe: CollectRecipe, index: int) -> dict[str, np.ndarray]:
    """Episode ``index`` of the dataset, as arrays in the dataset layout."""
    rng = np.random.default_rng([recipe.seed, index])
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


def object_moved(points: np.ndarray, threshold: float = MOVED_PX) -> bool:
    """Did any tracked point get ``threshold`` pixels from where it started? points: (T+1, K, 2)."""
    return bool(np.linalg.norm(points - points[:1], axis=-1).max() >= threshold)


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
    if recipe.reset_options:
        try:
            env.reset(seed=0, options=recipe.reset_options)
        except ForesightError as e:
            raise ForesightError(f"{source}: key 'reset_options': {e}") from None
    header = _header(recipe, env)
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
    moved = 0
    try:
        with datasets.ShardWriter(out / datasets.shard_name(j)) as writer:
            for i in episodes:
                episode = run_episode(env, recipe, i)
                moved += object_moved(episode["points"])
                writer.add(i, episode)
                if on_episode is not None:
                    on_episode()
    finally:
        env.close()
    return {"index": j, "file": datasets.shard_name(j), "first_episode": episodes.start, "episodes": len(episodes),
            "sha256": writer.sha256, "moved": moved}


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
        # a key added to the recipe format since the dataset was made reads as its default
        if old.get(key, defaults.get(key)) != new.get(key):
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
