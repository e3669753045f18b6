"""The MPC loop: any planner on any task, replanning every ``replan_every`` steps, judged by the true scene.

    obs = reset(task)
    until the task's steps are done:
        actions = planner.act(obs, info, steps)     # a replan
        for each action: obs = step(action); planner.observe(obs, info, action); judge(obs)

The outcome (``Outcome``) holds the true distance to the goal after every step, whether the scene was in the
goal region after each, timing, and when asked the video and the episode in the dataset layout. ``run_suite``
runs every task of a suite with each planner, in worker processes when asked, and writes the videos and
``summary.json``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from foresight import evaluation, viz
from foresight.envs import make_env
from foresight.planning import planners, suites
from foresight.planning.suites import Task


@dataclass
class Outcome:
    task: Task
    planner: str
    start_distance: float  # mean over designated objects, true object pixels
    final_distance: float
    success: bool  # in the goal region at the end
    replans: int
    seconds_per_replan: float
    model_seconds_per_replan: float
    distances: list[float] = field(default_factory=list)  # mean true distance to the goals after each step
    in_goal: list[bool] = field(default_factory=list)  # in the goal region after each step
    video: list[np.ndarray] = field(default_factory=list, repr=False)
    episode: dict | None = field(default=None, repr=False)

    @property
    def percent_in_goal(self) -> float:
        return 100.0 * float(np.mean(self.in_goal)) if self.in_goal else 0.0

    def summary(self) -> dict:
        return {"task": self.task.index, "seed": self.task.seed, "designated": self.task.designated.tolist(),
                "goals": self.task.goals.tolist(), "start_distance": round(self.start_distance, 3),
                "final_distance": round(self.final_distance, 3), "success": self.success,
                "percent_in_goal": round(self.percent_in_goal, 2),
                "seconds_per_replan": round(self.seconds_per_replan, 4),
                "distance_per_step": [round(d, 2) for d in self.distances]}


def run_task(env: gym.Env, task: Task, suite, planner: str, model=None, record: bool = True,
             keep_episode: bool = False) -> Outcome:
    """Run one task with one planner; record a video of it when asked, and with ``keep_episode`` the episode in the
    dataset layout (``Outcome.episode``: frames, actions, states, points; a planner's own data for training,
    ``collect`` policy kind 'planner')."""
    planners.check(suite, [planner], model, "planner")
    obs, info = env.reset(seed=task.seed, options=task.reset_options)
    agent = planners.make(planner, suite, env, task, obs, model)
    scale = max(1, 256 // obs.shape[1])
    episode = {"frames": [obs], "actions": [], "states": [info["state"]], "points": [info["points"]]} \
        if keep_episode else None
    video, distances, inside, plan_seconds, t = [], [], [], 0.0, 0
    while t < suite.steps:
        n = min(suite.replan_every, suite.steps - t)
        start = time.perf_counter()
        actions = agent.act(obs, info, n)
        plan_seconds += time.perf_counter() - start
        for j, action in enumerate(actions):
            obs, _, _, _, info = env.step(action)
            agent.observe(obs, info, action)
            distance, now_inside = suites.judge(suite, task, info)
            distances.append(distance), inside.append(now_inside)
            if episode is not None:
                for key, value in (("frames", obs), ("actions", action), ("states", info["state"]),
                                   ("points", info["points"])):
                    episode[key].append(value)
            if record:
                video.append(_panel(obs, info, task, now_inside, agent.pictures(j, scale), scale))
        t += n
    replans = max(agent.replans, 1)
    return Outcome(
        task=task, planner=planner,
        start_distance=float(np.linalg.norm(task.designated - task.goals, axis=-1).mean()),
        final_distance=distances[-1], success=inside[-1], replans=agent.replans,
        seconds_per_replan=plan_seconds / replans, model_seconds_per_replan=agent.model_seconds / replans,
        distances=distances, in_goal=inside, video=video,
        episode={k: np.stack(v) for k, v in episode.items()} if episode is not None else None)


def _panel(frame, info, task: Task, inside: bool, pictures: list[np.ndarray], scale: int) -> np.ndarray:
    """camera frame (goal: cross, true object: circle; a green border in the goal region) | the goal image, for
    goal-image tasks | the planner's own pictures (goals crossed)."""
    K = len(task.goals)
    now = viz.mark(viz.draw_points(frame, task.goals, scale, marker="cross"), info["points"][:K], scale)
    if inside:
        now[:2], now[-2:], now[:, :2], now[:, -2:] = (0, 200, 0), (0, 200, 0), (0, 200, 0), (0, 200, 0)
    panels = [now]
    if task.goal_frame is not None:
        panels.append(viz.draw_points(task.goal_frame, task.goals, scale, marker="cross"))
    panels += [viz.mark(p, task.goals, scale, marker="cross") for p in pictures]
    return viz.grid([panels])


def aggregate(outcomes: list[Outcome]) -> dict:
    """Success rate and mean final / start distance, each with a 95% confidence interval, and the percentage of
    steps in the goal region (mean and std over tasks)."""
    success = np.array([o.success for o in outcomes], dtype=np.float64)
    ratio = np.array([o.final_distance / max(o.start_distance, 1e-6) for o in outcomes])
    percent = np.array([o.percent_in_goal for o in outcomes])
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
        "percent_in_goal": round(float(percent.mean()), 2), "percent_in_goal_std": round(float(percent.std()), 2),
        "seconds_per_replan": round(float(np.mean([o.seconds_per_replan for o in replans])), 4) if replans else 0.0,
        "model_seconds_per_replan": round(float(np.mean([o.model_seconds_per_replan for o in replans])), 4)
        if replans else 0.0,
    }


def run_suite(suite, out, model, planner_names: list[str], source: str = "suite", videos: int = 10,
              progress: bool = True, resolved: dict | None = None, workers: int = 1) -> dict:
    """Every task of ``suite`` with each planner; videos of the first ``videos`` tasks per planner and
    ``summary.json`` under ``out``. ``model``: a ``video.VideoPredictor`` or a ``latent.LatentModel`` (or None
    for the oracle and random planners). ``workers`` > 1 runs tasks in that many processes of one thread each
    (tasks are independent; each process has its own environment and model copy)."""
    from tqdm import tqdm

    out = Path(out)
    planners.check(suite, planner_names, model)
    env = make_env(suite.env, suite.env_kwargs, source)
    try:
        if model is not None:
            model.check_env(suite.env, suite.env_kwargs, env, source)
        tasks = suites.make_tasks(suite, env, source)
    finally:
        env.close()
    summary = {"suite": suite.name, "env": suite.env, "tasks": len(tasks), "recipe": resolved}
    with _TaskRunner(suite, model, source, workers) as runner:
        for planner in planner_names:
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


_WORKER = None  # (env, suite, model) in a task process


def _init_worker(suite, model, source):
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = (make_env(suite.env, suite.env_kwargs, source), suite, model)


def _run_job(job):
    env, suite, model = _WORKER
    task, planner, record = job
    return run_task(env, task, suite, planner, model, record)


class _TaskRunner:
    """Runs (task, planner, record) jobs in order: here, or in a pool of spawned processes."""

    def __init__(self, suite, model, source, workers: int):
        self.args, self.workers, self.pool = (suite, model, source), workers, None

    def __enter__(self):
        global _WORKER
        if self.workers > 1:
            import multiprocessing as mp

            self.pool = mp.get_context("spawn").Pool(self.workers, _init_worker, self.args)
        else:
            suite, model, source = self.args
            _WORKER = (make_env(suite.env, suite.env_kwargs, source), suite, model)
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
