"""Visual MPC: plan with CEM from the latest frames, execute, carry the designated pixels, replan.

A task: from a start state, move each designated pixel (an object's pixel in the first frame) to its
goal pixel. Three planners share the loop and the CEM settings:

    model    scores samples with the video model's predicted designated-pixel distributions
    oracle   scores samples with the true simulator's object pixels (``rollout_points``): the bound
             a perfect model would reach
    random   executes random actions, each held ``repeat`` steps

Success and distances are always measured with the simulator's true object pixels.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from foresight import evaluation, pixels, viz
from foresight.errors import ForesightError
from foresight.planning.cem import CEM, CEMConfig, repeat_actions
from foresight.planning.costs import DISTANCES, DesignatedPixelCost, action_cost, approach_cost, step_weights
from foresight.planning.tracking import ColorTracker
from foresight.recipes import spec

PLANNERS = ("model", "oracle", "random")
TRACKING = ("model", "registration", "true")


@dataclass(frozen=True)
class MPCSettings:
    replan_every: int = spec(3, min=1, help="environment steps executed between plans")
    track: str = spec("model", choices=TRACKING,
                      help="how the model planner knows where each designated pixel is after executing: 'model' "
                           "carries the model's predicted distribution (visual foresight); 'registration' re-finds "
                           "it in the camera frame (planning.tracking, images only); 'true' restarts it at the "
                           "simulator's object pixel (for comparison)")
    last_weight: float = spec(10.0, min=0.0, help="weight of the plan's last step in the cost")
    until_end: bool = spec(False, help="when the task ends before the plan does, the cost stops there: the task's "
                                       "last step takes last_weight and the plan's steps after it count for "
                                       "nothing (the task is judged where the object is at its end)")
    spread_weight: float = spec(0.0, min=0.0, help="weight of each designated-pixel distribution's spread (std, "
                                                   "pixels) in the cost: makes leaked mass cost more than it gains")
    sharpen: float = spec(1.0, min=1.0, help="the designated-pixel cost takes its expectation under P^sharpen "
                                             "(renormalised): follows the object's blob, not mass leaked along the "
                                             "pusher's path; 1 = visual foresight's expected distance")
    distance: str = spec("expected", choices=DISTANCES,
                         help="the designated-pixel cost per step: 'expected' distance to the goal under the "
                              "predicted distribution (visual foresight), or the distance of its 'mean' (centre of "
                              "mass), which a blurred prediction at the goal does not inflate")
    action_weight: float = spec(0.0, min=0.0, help="weight of the plan's effort, the sum over its steps of "
                                                   "|action|^2, added to the cost (model and oracle): when no plan "
                                                   "is predicted to move the object, keep still rather than "
                                                   "wander into it")
    approach_weight: float = spec(0.0, min=0.0, help="weight of the agent's approach term (costs.approach_cost; "
                                                     "model and oracle): the agent's distance, along its own "
                                                     "kinematic path, from the point approach_px behind each "
                                                     "designated object, away from its goal, so that the planner "
                                                     "goes round an object whose goal lies on the agent's side")
    approach_px: float = spec(9.0, min=0.1, help="how far behind the object's centre the push point lies (camera "
                                                 "pixels): a little more than the agent's and the object's "
                                                 "half-widths, so that waiting there does not push")
    amp: str = spec("off", choices=("off", "bf16"), help="bf16 autocast for the model's predictions")


@dataclass(frozen=True)
class SuiteRecipe:
    name: str = spec(help="suite name; results land in <suite folder>/results/<name>/")
    env: str = spec(help="a registered environment id")
    tasks: int = spec(50, min=1)
    seed: int = spec(0, min=0)
    steps: int = spec(45, min=1, help="environment steps per task")
    designated: int = spec(1, min=1, help="how many objects (the first ones) are designated")
    goal: str = spec("offset", choices=("offset", "env"),
                     help="'offset': goal pixels goal_min_px..goal_max_px from the start; 'env': info['goal_pixel']")
    goal_min_px: float = spec(8.0, min=0.0)
    goal_max_px: float = spec(20.0, min=0.0)
    goal_margin_px: float = spec(10.0, min=0.0, help="offset goals stay this far inside the image border")
    success_px: float = spec(3.0, min=0.0)
    baselines: tuple[str, ...] = spec(("random", "oracle"), help="planners run beside the model")
    env_kwargs: dict = spec({})
    reset_options: dict = spec({}, help="options for env.reset, e.g. {pusher_near = 0.03} in PointPush")
    cem: CEMConfig = spec(CEMConfig())
    mpc: MPCSettings = spec(MPCSettings())


@dataclass
class Task:
    index: int
    seed: int  # the environment's reset seed
    designated: np.ndarray  # (K, 2) (row, col)
    goals: np.ndarray  # (K, 2)


@dataclass
class Outcome:
    task: Task
    planner: str
    start_distance: float  # mean over designated pixels, true object pixels
    final_distance: float
    success: bool
    replans: int
    seconds_per_replan: float
    model_seconds_per_replan: float
    distances: list[float] = field(default_factory=list)  # mean true distance to the goals after each step
    video: list[np.ndarray] = field(default_factory=list, repr=False)
    episode: dict | None = field(default=None, repr=False)

    def summary(self) -> dict:
        return {"task": self.task.index, "seed": self.task.seed, "designated": self.task.designated.tolist(),
                "goals": self.task.goals.tolist(), "start_distance": round(self.start_distance, 3),
                "final_distance": round(self.final_distance, 3), "success": self.success,
                "seconds_per_replan": round(self.seconds_per_replan, 4),
                "distance_per_step": [round(d, 2) for d in self.distances]}


def make_tasks(suite: SuiteRecipe, env: gym.Env, source: str = "suite") -> list[Task]:
    """The seeded tasks of a suite: start states, designated pixels and goal pixels."""
    return [make_task(suite, env, i, np.random.default_rng([suite.seed, i]), source) for i in range(suite.tasks)]


def make_task(suite: SuiteRecipe, env: gym.Env, index: int, rng: np.random.Generator, source: str = "suite") -> Task:
    """One task drawn with ``rng``: its reset seed, then (for offset goals) its goal pixels."""
    if suite.goal_min_px > suite.goal_max_px:
        raise ForesightError(f"{source}: key 'goal_min_px': must be <= goal_max_px ({suite.goal_max_px}), "
                             f"got {suite.goal_min_px}")
    seed = int(rng.integers(2**31))
    obs, info = env.reset(seed=seed, options=suite.reset_options)
    H, W = obs.shape[:2]
    if suite.designated > len(info["points"]):
        raise ForesightError(f"{source}: key 'designated': {suite.env} tracks {len(info['points'])} object(s), "
                             f"got {suite.designated}")
    designated = info["points"][:suite.designated].astype(np.float64)
    if suite.goal == "env":
        if "goal_pixel" not in info:
            raise ForesightError(f"{source}: key 'goal': {suite.env} has no goal pixel; use goal = 'offset'")
        goals = np.asarray(info["goal_pixel"], dtype=np.float64).reshape(1, 2).repeat(suite.designated, 0)
    else:
        goals = np.stack([_offset_goal(p, suite, H, W, rng, source) for p in designated])
    return Task(index, seed, designated, goals)


def _offset_goal(point, suite: SuiteRecipe, H: int, W: int, rng, source: str) -> np.ndarray:
    m = suite.goal_margin_px
    for _ in range(1000):
        angle, radius = rng.uniform(0, 2 * math.pi), rng.uniform(suite.goal_min_px, suite.goal_max_px)
        goal = point + radius * np.array([math.sin(angle), math.cos(angle)])
        if m <= goal[0] <= H - 1 - m and m <= goal[1] <= W - 1 - m:
            return goal
    raise ForesightError(f"{source}: no goal {suite.goal_min_px}..{suite.goal_max_px} px from {point.round(1).tolist()} "
                         f"lies {m} px inside the {H}x{W} image; lower goal_margin_px or the goal distances")


class VideoPredictor:
    """The video model as the planner uses it: from the latest real frames, predict the frames and
    designated-pixel distributions that action sequences lead to, batched, in inference mode.

    The model may work on smaller images than the camera's (``image_size``): camera frames are then
    area-averaged to it and pixels scaled (``pixels.resize_frames`` / ``scale_points``, as in training).
    ``trained_env`` is the training data's environment ({"id", "kwargs"}, from the run), when known: a suite
    must run the environment at the same time scale (``action_repeat``).
    """

    def __init__(self, model, context: int = 2, trained_env: dict | None = None):
        if not hasattr(model, "config") or not hasattr(model.config, "transform"):
            raise ForesightError("--model: this model predicts no pixel distributions (a video prediction "
                                 "model, CDNA / DNA / SNA, is needed for designated pixels)")
        self.model, self.context = model.eval(), context
        self.image_size = tuple(model.config.image_size)
        self.trained_env = trained_env
        self.seconds = 0.0

    def check_env(self, env_id: str, env_kwargs: dict, env: gym.Env, source: str) -> None:
        """The model must read this environment's images and actions, at the time scale it was trained on."""
        cfg = self.model.config
        shape = env.observation_space.shape
        if shape[-1] != cfg.channels or cfg.action_dim != env.action_space.shape[0]:
            raise ForesightError(f"--model: predicts {cfg.channels}-channel images with {cfg.action_dim}-d actions, "
                                 f"{env_id} gives {shape} images with {env.action_space.shape[0]}-d actions")
        if self.trained_env:
            trained = self.trained_env.get("kwargs", {}).get("action_repeat", 1)
            if self.trained_env.get("id") == env_id and trained != env_kwargs.get("action_repeat", 1):
                raise ForesightError(f"{source}: key 'env_kwargs.action_repeat': the model was trained with "
                                     f"action_repeat = {trained}, the suite runs {env_kwargs.get('action_repeat', 1)}")

    def frames(self, frames: list[np.ndarray]) -> torch.Tensor:
        """Camera frames [(H, W, C) uint8] -> the model's input (T, C, h, w) float in [0, 1]."""
        x = pixels.resize_frames(np.stack(frames), self.image_size)
        return torch.as_tensor(x, dtype=torch.float32).permute(0, 3, 1, 2) / 255

    def __call__(self, frames: torch.Tensor, past: torch.Tensor, actions: torch.Tensor, dists: torch.Tensor,
                 amp: str = "off"):
        """frames (Tc, C, H, W) float, past (Tc-1, A), actions (N, T, A), dists (K, H, W) ->
        predicted frames (N, T, C, H, W) and distributions (N, T, K, H, W) after each action.
        amp = "bf16": bf16 autocast (the suite's ``mpc.amp``)."""
        start = time.perf_counter()
        N = actions.shape[0]
        f = frames[None].expand(N, *frames.shape)
        a = torch.cat([past[None].expand(N, *past.shape), actions], 1)
        p = dists[None].expand(N, *dists.shape)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            out = self.model(f, a, pixels=p, num_context=self.context)
        self.seconds += time.perf_counter() - start
        return out.frames[:, self.context - 1:].float(), out.pixels.float()


def oracle_score(sim, cem: CEM, goals: np.ndarray, last_weight: float, end: int | None = None, approach=None):
    """The oracle's score of CEM's decisions (N, H, A) -> (N,): the designated-pixel cost on the simulator's true
    object pixels after each step (``sim.rollout_points`` from the current state), goals (K, 2) camera pixels;
    ``end``: see ``costs.step_weights``; ``approach``: the approach term (``_approach``), added when given."""
    goals = torch.as_tensor(goals, dtype=torch.float32)
    weights = step_weights(cem.config.horizon * cem.config.repeat, last_weight, end)

    def score(actions):
        expanded = cem.expand(actions)
        points = torch.as_tensor(sim.rollout_points(expanded.numpy()))[:, :, :len(goals)]  # (N, T, K, 2)
        cost = ((points - goals).norm(dim=-1).sum(-1) * weights).sum(-1)
        return cost + approach(points, expanded) if approach else cost
    return score


def _with_effort(score, cem: CEM, weight: float, end: int | None):
    """score plus the plan's effort (``costs.action_cost``) over the steps the cost counts."""
    return lambda actions: score(actions) + action_cost(cem.expand(actions), weight, end)


def _approach(path, state, goals, current, mpc: MPCSettings, end: int | None, camera=None, model=None):
    """The approach term as a function (object pixels (N, T, K, 2), expanded actions (N, T, A)) -> (N,), in the
    pixels of ``model`` (h, w) (camera pixels (H, W) = ``camera`` scaled), or camera pixels when ``model`` is None;
    ``path``: the agent's kinematic path (``envs.agent_path``) from the current ``state``."""
    scale = (lambda p: pixels.scale_points(p, camera, model)) if model else (lambda p: p)  # noqa: E731
    goals, current = scale(np.asarray(goals, np.float32)), scale(np.asarray(current, np.float32))
    offset = mpc.approach_px * (model[0] / camera[0] if model else 1.0)

    def term(objects, actions):
        agent = torch.as_tensor(scale(path(state, actions.numpy())), dtype=torch.float32)
        return approach_cost(agent, objects, goals, current, offset, mpc.approach_weight, mpc.last_weight, end)
    return term


def run_task(env: gym.Env, task: Task, suite: SuiteRecipe, planner: str, predictor: VideoPredictor | None = None,
             record: bool = True, keep_episode: bool = False) -> Outcome:
    """Run one task with one planner; record a video of it when asked, and with ``keep_episode`` the
    episode in the dataset layout (``Outcome.episode``: frames, actions, states, points; a planner's
    own data for training, ``collect`` policy kind 'planner')."""
    if planner not in PLANNERS:
        raise ForesightError(f"planner: expected one of {PLANNERS}, got {planner!r}")
    if planner == "model" and predictor is None:
        raise ForesightError("planner 'model' needs --model RUN")
    obs, info = env.reset(seed=task.seed, options=suite.reset_options)
    u = env.unwrapped
    H, W = obs.shape[:2]
    K = len(task.designated)
    low, high = env.action_space.low, env.action_space.high
    cem = CEM(suite.cem, low, high)
    rng = np.random.default_rng([suite.seed, task.index, 7])
    context = predictor.context if predictor else 2
    frames = [obs] * context  # before the first step the scene is at rest: repeat the first frame
    past = [np.zeros(env.action_space.shape, np.float32)] * (context - 1)
    # the model's pixels: the camera's, scaled to the model's image size
    h, w = predictor.image_size if predictor else (H, W)
    to_model_pixels = lambda p: torch.as_tensor(pixels.scale_points(p, (H, W), (h, w)), dtype=torch.float32)  # noqa: E731
    dist = pixels.delta_distribution(to_model_pixels(task.designated)[None], h, w)[0]  # (K, h, w)
    tracker = ColorTracker(obs, task.designated) if planner == "model" and suite.mpc.track == "registration" else None
    known = task.designated  # where the model planner knows the designated pixels are (camera pixels)
    path = (lambda state, actions: u.agent_path(actions)) \
        if suite.mpc.approach_weight > 0 and planner != "random" else None
    cost = DesignatedPixelCost(to_model_pixels(task.goals), (h, w), last_weight=suite.mpc.last_weight,
                               spread_weight=suite.mpc.spread_weight, sharpen=suite.mpc.sharpen,
                               distance=suite.mpc.distance)
    video, plan_seconds, model_before, replans = [], 0.0, predictor.seconds if predictor else 0.0, 0
    episode = {"frames": [obs], "actions": [], "states": [info["state"]], "points": [info["points"]]} \
        if keep_episode else None
    predicted_frames, per_step = None, []
    t = 0
    while t < suite.steps:
        n = min(suite.mpc.replan_every, suite.steps - t)
        start = time.perf_counter()
        if planner == "random":
            decisions = rng.uniform(low, high, (math.ceil(n / suite.cem.repeat), *low.shape)).astype(np.float32)
            executed = repeat_actions(torch.as_tensor(decisions), suite.cem.repeat)[:n].numpy()
        else:
            end = suite.steps - t if suite.mpc.until_end else None
            approach = None
            if suite.mpc.approach_weight > 0:  # from where the object is seen now: the planner's own knowledge
                now = info["points"][:K] if planner == "oracle" else known
                approach = _approach(path, info["state"], task.goals, now, suite.mpc, end, (H, W),
                                     None if planner == "oracle" else (h, w))
            if planner == "oracle":
                score = oracle_score(u, cem, task.goals, suite.mpc.last_weight, end, approach)
            else:
                ctx, past_t = predictor.frames(frames[-context:]), torch.as_tensor(np.stack(past[-(context - 1):]))

                def score(actions):
                    expanded = cem.expand(actions)
                    dists = predictor(ctx, past_t, expanded, dist, suite.mpc.amp)[1]
                    c = cost(dists, end)
                    return c + approach(pixels.centre_of_mass(dists), expanded) if approach else c
            if suite.mpc.action_weight > 0:
                score = _with_effort(score, cem, suite.mpc.action_weight, end)
            result = cem.plan(score)
            plan = cem.expand(result.best)  # (H * repeat, A)
            executed = plan[:n].numpy()
            if planner == "model":  # the chosen plan's prediction: for the video, and to carry the pixels
                predicted_frames, predicted_dists = predictor(ctx, past_t, plan[None], dist, suite.mpc.amp)
            cem.shift(max(1, n // suite.cem.repeat))
            replans += 1
        plan_seconds += time.perf_counter() - start
        for j, action in enumerate(executed):
            obs, _, _, _, info = env.step(action)
            frames.append(obs), past.append(np.asarray(action, np.float32))
            if episode is not None:
                for key, value in (("frames", obs), ("actions", action), ("states", info["state"]),
                                   ("points", info["points"])):
                    episode[key].append(value)
            per_step.append(float(np.linalg.norm(info["points"][:K] - task.goals, axis=-1).mean()))
            tracked = tracker.update(obs) if tracker is not None else None
            if record:
                shown = predicted_dists[0, j] if planner == "model" else None
                video.append(_panel(obs, info["points"][:K], task.goals, shown,
                                    predicted_frames[0, j] if planner == "model" else None))
        t += n
        if planner == "model":
            if suite.mpc.track == "model":
                dist = predicted_dists[0, len(executed) - 1]
                known = pixels.scale_points(pixels.centre_of_mass(dist).numpy(), (h, w), (H, W))
            else:
                known = tracked if suite.mpc.track == "registration" else info["points"][:K]
                dist = pixels.delta_distribution(to_model_pixels(known)[None], h, w)[0]
    final = info["points"][:K].astype(np.float64)
    distances = np.linalg.norm(final - task.goals, axis=-1)
    return Outcome(
        task=task, planner=planner,
        start_distance=float(np.linalg.norm(task.designated - task.goals, axis=-1).mean()),
        final_distance=float(distances.mean()), success=bool((distances <= suite.success_px).all()),
        replans=replans, seconds_per_replan=plan_seconds / max(replans, 1),
        model_seconds_per_replan=((predictor.seconds - model_before) / max(replans, 1)) if predictor else 0.0,
        distances=per_step, video=video,
        episode={k: np.stack(v) for k, v in episode.items()} if episode is not None else None)


def _panel(frame, points, goals, dist, predicted) -> np.ndarray:
    """camera frame (goal: cross, true object: circle) | designated-pixel heat map | predicted frame."""
    import cv2

    scale = 4
    H, W = frame.shape[:2]
    panels = [viz.mark(viz.draw_points(frame, goals, scale, marker="cross"), points, scale)]
    if dist is not None:  # the model's (h, w) maps, shown at the camera's size
        heat = cv2.resize(dist.sum(0).numpy(), (W, H), interpolation=cv2.INTER_NEAREST)
        panels.append(viz.mark(viz.heatmap(frame, heat, scale), goals, scale, marker="cross"))
        pred = (predicted.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        pred = cv2.resize(pred, (W, H), interpolation=cv2.INTER_NEAREST).reshape(H, W, -1)
        panels.append(viz.draw_points(pred, goals, scale, marker="cross"))
    return viz.grid([panels])


def aggregate(outcomes: list[Outcome]) -> dict:
    """Success rate and mean final / start distance, each with a 95% confidence interval."""
    success = np.array([o.success for o in outcomes], dtype=np.float64)
    ratio = np.array([o.final_distance / max(o.start_distance, 1e-6) for o in outcomes])
    n = len(outcomes)

    def ci(x):  # normal approximation; Wilson would be kinder near 0 and 1 but this is what papers report
        half = 1.96 * x.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
        return [round(float(x.mean() - half), 4), round(float(x.mean() + half), 4)]

    replans = [o for o in outcomes if o.replans]
    return {
        "tasks": n, "success": round(float(success.mean()), 4), "success_ci95": ci(success),
        "final_over_start": round(float(ratio.mean()), 4), "final_over_start_ci95": ci(ratio),
        "mean_final_distance": round(float(np.mean([o.final_distance for o in outcomes])), 3),
        "mean_start_distance": round(float(np.mean([o.start_distance for o in outcomes])), 3),
        "seconds_per_replan": round(float(np.mean([o.seconds_per_replan for o in replans])), 4) if replans else 0.0,
        "model_seconds_per_replan": round(float(np.mean([o.model_seconds_per_replan for o in replans])), 4)
        if replans else 0.0,
    }


def run_suite(suite: SuiteRecipe, out, predictor: VideoPredictor | None, planners: list[str], source: str = "suite",
              videos: int = 10, progress: bool = True, resolved: dict | None = None, workers: int = 1) -> dict:
    """Every task of ``suite`` with each planner; videos of the first ``videos`` tasks per planner and
    ``summary.json`` under ``out``. ``workers`` > 1 runs tasks in that many processes of one thread each
    (tasks are independent; each process has its own environment and model copy)."""
    from pathlib import Path

    from tqdm import tqdm

    from foresight.envs import make_env

    out = Path(out)
    env = make_env(suite.env, suite.env_kwargs, source)
    try:
        tasks = make_tasks(suite, env, source)
        if suite.mpc.approach_weight > 0:  # fail here, not in every task process
            if not hasattr(env.unwrapped, "agent_path"):
                raise ForesightError(f"{source}: key 'mpc.approach_weight': environment {suite.env!r} offers no "
                                     f"agent_path (its agent's pixels along a plan)")
        if predictor is not None:
            predictor.check_env(suite.env, suite.env_kwargs, env, source)
    finally:
        env.close()
    summary = {"suite": suite.name, "env": suite.env, "tasks": len(tasks), "recipe": resolved}
    with _TaskRunner(suite, predictor, source, workers) as runner:
        for planner in planners:
            jobs = [(task, planner, task.index < videos) for task in tasks]
            outcomes = []
            for o in tqdm(runner.map(jobs), total=len(jobs), desc=f"plan {suite.name} [{planner}]",
                          disable=not progress, dynamic_ncols=True):
                if o.video:
                    viz.write_gif(out / planner / f"task-{o.task.index:03d}.gif", o.video, fps=10)
                    o.video = []
                outcomes.append(o)
            summary[planner] = {**aggregate(outcomes), "per_task": [o.summary() for o in outcomes]}
            evaluation.write_json(out / "summary.json", summary)  # after each planner: nothing lost on a kill
    return summary


_WORKER = None  # (env, suite, predictor) in a task process


def _init_worker(suite, predictor, source):
    global _WORKER
    from foresight.envs import make_env

    torch.set_num_threads(1)
    _WORKER = (make_env(suite.env, suite.env_kwargs, source), suite, predictor)


def _run_job(job):
    env, suite, predictor = _WORKER
    task, planner, record = job
    return run_task(env, task, suite, planner, predictor, record)


class _TaskRunner:
    """Runs (task, planner, record) jobs in order: here, or in a pool of spawned processes."""

    def __init__(self, suite, predictor, source, workers: int):
        self.args, self.workers, self.pool = (suite, predictor, source), workers, None

    def __enter__(self):
        global _WORKER
        if self.workers > 1:
            import multiprocessing as mp

            self.pool = mp.get_context("spawn").Pool(self.workers, _init_worker, self.args)
        else:
            from foresight.envs import make_env

            suite, predictor, source = self.args
            _WORKER = (make_env(suite.env, suite.env_kwargs, source), suite, predictor)
        return self

    def map(self, jobs):
        return self.pool.imap(_run_job, jobs) if self.pool else map(_run_job, jobs)

    def __exit__(self, *exc):
        global _WORKER
        if self.pool:
            self.pool.terminate() if exc[0] else self.pool.close()
            self.pool.join()
        elif _WORKER is not None:
            _WORKER[0].close()
            _WORKER = None
