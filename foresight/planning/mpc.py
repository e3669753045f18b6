"""The MPC loop: any planner on any task, replanning every ``replan_every`` steps, judged by the true scene.

    obs = reset(task)
    until the task's steps are done:
        actions = planner.act(obs, info, steps)     # a replan
        for each action: obs = step(action); planner.observe(obs, info, action); judge(obs)

The outcome (``Outcome``) holds the true distance to the goal after every step, whether the scene was in the
goal region after each, timing, and when asked the video and the episode in the dataset layout. ``run_suite``
runs every task of a suite with each planner, in worker processes when asked, and writes the videos and
``summary.json``; it records each task as it finishes (``<out>/<planner>/task-XXX.json`` after its GIF, both
atomically, under ``<out>/<planner>/run.json``, the run's settings), so that a killed suite resumes where it
stopped (``resume``; ``foresight plan`` resumes unless given ``--fresh``).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from foresight import evaluation, recipes, viz
from foresight.envs import make_env
from foresight.errors import ForesightError
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
    final_state: list[float] | None = None  # the true state at the end (info["state"])
    video: list[np.ndarray] = field(default_factory=list, repr=False)
    episode: dict | None = field(default=None, repr=False)

    @property
    def percent_in_goal(self) -> float:
        return 100.0 * float(np.mean(self.in_goal)) if self.in_goal else 0.0

    def summary(self) -> dict:
        return {"task": self.task.index, "seed": self.task.seed, "designated": self.task.designated.tolist(),
                "goals": self.task.goals.tolist(), "start_distance": round(self.start_distance, 3),
                "final_distance": round(self.final_distance, 3), "success": self.success,
                "success_any_step": bool(any(self.in_goal)),
                "percent_in_goal": round(self.percent_in_goal, 2),
                "seconds_per_replan": round(self.seconds_per_replan, 4),
                "distance_per_step": [round(d, 2) for d in self.distances], "final_state": self.final_state,
                **({"episode": self.task.episode, "start_step": self.task.start_step,
                    "goal_state": self.task.goal_state.tolist()} if self.task.episode is not None else {})}


def run_task(env: gym.Env, task: Task, suite, planner: str, model=None, record: bool = True,
             keep_episode: bool = False, on_step=None, stop=None) -> Outcome:
    """Run one task with one planner; record a video of it when asked, and with ``keep_episode`` the episode in the
    dataset layout (``Outcome.episode``: frames, actions, states, points; a planner's own data for training,
    ``collect`` policy kind 'planner'). ``on_step(step, panel, distance, inside, cost)`` is told each executed
    step as it happens (``foresight ui``: the panel is the video's frame, ``cost`` the plan's, None for random);
    ``stop()`` returning True ends the task before its next step."""
    planners.check(suite, [planner], model, "planner")
    obs, info = env.reset(seed=task.seed, options=task.reset_options)
    agent = planners.make(planner, suite, env, task, obs, model)
    scale = max(1, 256 // obs.shape[1])
    episode = {"frames": [obs], "actions": [], "states": [info["state"]], "points": [info["points"]]} \
        if keep_episode else None
    video, distances, inside, plan_seconds, t = [], [], [], 0.0, 0
    halted = lambda: stop is not None and stop()  # noqa: E731
    while t < suite.steps and not (suite.until_success and inside and inside[-1]) and not (distances and halted()):
        n = min(suite.replan_every, suite.steps - t)
        start = time.perf_counter()
        actions = agent.act(obs, info, n)
        plan_seconds += time.perf_counter() - start
        for j, action in enumerate(actions):
            obs, _, _, _, info = env.step(action)
            agent.observe(obs, info, action)
            distance, now_inside = suites.judge(suite, task, info, env)
            distances.append(distance), inside.append(now_inside)
            if episode is not None:
                for key, value in (("frames", obs), ("actions", action), ("states", info["state"]),
                                   ("points", info["points"])):
                    episode[key].append(value)
            if record or on_step is not None:
                panel = _panel(obs, info, task, now_inside, agent.pictures(j, scale), scale)
                if record:
                    video.append(panel)
                if on_step is not None:
                    on_step(len(distances), panel, distance, now_inside, getattr(agent, "last_cost", None))
            if (now_inside and suite.until_success) or halted():
                break
        t += n
    replans = max(agent.replans, 1)
    return Outcome(
        task=task, planner=planner,
        start_distance=float(np.linalg.norm(task.designated - task.goals, axis=-1).mean()),
        final_distance=distances[-1], success=inside[-1], replans=agent.replans,
        seconds_per_replan=plan_seconds / replans, model_seconds_per_replan=agent.model_seconds / replans,
        distances=distances, in_goal=inside, final_state=[float(x) for x in info["state"]], video=video,
        episode={k: np.stack(v) for k, v in episode.items()} if episode is not None else None)


def _panel(frame, info, task: Task, inside: bool, pictures: list[np.ndarray], scale: int) -> np.ndarray:
    """camera frame (goal: cross, true object: circle; a green border in the goal region) | the goal image, for
    goal-image tasks | the planner's own pictures (goals crossed)."""
    now = viz.mark(viz.draw_points(frame, task.goals, scale, marker="cross"), info["points"][task.indices], scale)
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
        # in the goal region at any step, as DINO-WM counts success (``success`` is the last step's)
        "success_any_step": round(float(np.mean([any(o.in_goal) for o in outcomes])), 4),
        "final_over_start": round(float(ratio.mean()), 4), "final_over_start_ci95": ci(ratio),
        "mean_final_distance": round(float(np.mean([o.final_distance for o in outcomes])), 3),
        "mean_start_distance": round(float(np.mean([o.start_distance for o in outcomes])), 3),
        "percent_in_goal": round(float(percent.mean()), 2), "percent_in_goal_std": round(float(percent.std()), 2),
        "seconds_per_replan": round(float(np.mean([o.seconds_per_replan for o in replans])), 4) if replans else 0.0,
        "model_seconds_per_replan": round(float(np.mean([o.model_seconds_per_replan for o in replans])), 4)
        if replans else 0.0,
    }


def save_task(out, suite, outcome: Outcome, resolved: dict | None = None) -> Path:
    """One task's outcome saved as ``run_suite`` saves a suite's (``<out>/<planner>/``: the task's GIF and record,
    ``run.json``; ``<out>/summary.json``, beside the other planners' already there); returns the GIF's path."""
    out, planner = Path(out), outcome.planner
    folder = out / planner
    _clear(folder)
    settings = _jsonable(resolved if resolved is not None else {**recipes.to_dict(suite), "model": None})
    evaluation.write_json(folder / RUN_FILE, {**settings, "planner": planner})
    _record(folder, outcome)
    path = out / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        summary = {}
    task = {k: v for k, v in outcome.summary().items() if k in ("seed", "designated", "goals")}
    others = [v["per_task"][0] for v in summary.values() if isinstance(v, dict) and v.get("per_task")]
    if summary.get("recipe") != settings or any({k: o.get(k) for k in task} != task for o in others):
        summary = {}  # another task's or other settings': start the summary over
    summary.update({"suite": suite.name, "env": suite.env, "tasks": 1, "recipe": settings,
                    planner: {**aggregate([outcome]), "resumed": 0, "per_task": [outcome.summary()]}})
    evaluation.write_json(path, summary)
    return folder / f"{_task_name(outcome.task.index)}.gif"


def run_suite(suite, out, model, planner_names: list[str], source: str = "suite", videos: int = 10,
              progress: bool = True, resolved: dict | None = None, workers: int = 1, resume: bool = False) -> dict:
    """Every task of ``suite`` with each planner; videos of the first ``videos`` tasks per planner and
    ``summary.json`` under ``out``. ``model``: a ``video.VideoPredictor`` or a ``latent.LatentModel`` (or None
    for the oracle and random planners). ``workers`` > 1 runs tasks in that many processes of one thread each
    (tasks are independent; each process has its own environment and model copy).

    Each finished task is recorded as it finishes (``<out>/<planner>/task-XXX.json``, written atomically after its
    GIF), under the run's settings (``<out>/<planner>/run.json``: ``resolved`` and the planner). With ``resume``
    a rerun into the same folder skips the recorded tasks (their outcomes, timing included, come from the
    records; ``resumed`` in the summary counts them) and refuses settings that differ from the records'; without
    it the folder's old records are cleared first."""
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
    settings = _jsonable(resolved if resolved is not None else {**recipes.to_dict(suite), "model": None})
    done = {}  # planner -> {task index: Outcome} from the records of an earlier run
    for planner in planner_names:  # every planner's records are checked before anything runs
        done[planner] = _finished(out / planner, {**settings, "planner": planner}, tasks, videos) if resume else {}
    for planner in planner_names:
        folder = out / planner
        if not done[planner]:  # nothing to keep: no stale record may be mistaken for this run's later
            _clear(folder)
        for path in folder.glob("*.tmp"):  # half-written files of a killed run
            path.unlink(missing_ok=True)
        evaluation.write_json(folder / RUN_FILE, {**settings, "planner": planner})
    summary = {"suite": suite.name, "env": suite.env, "tasks": len(tasks), "recipe": resolved}
    with _TaskRunner(suite, model, source, workers) as runner:
        for planner in planner_names:
            folder, outcomes = out / planner, dict(done[planner])
            jobs = [(task, planner, task.index < videos) for task in tasks if task.index not in outcomes]
            bar = tqdm(total=len(tasks), initial=len(outcomes), desc=f"plan {suite.name} [{planner}]",
                       disable=not progress, dynamic_ncols=True)
            with bar:
                for o in runner.map(jobs):  # as each task finishes, in any order
                    _record(folder, o)
                    outcomes[o.task.index] = o
                    bar.update(1)
            ordered = [outcomes[task.index] for task in tasks]
            summary[planner] = {**aggregate(ordered), "resumed": len(done[planner]),
                                "per_task": [o.summary() for o in ordered]}
            evaluation.write_json(out / "summary.json", summary)  # after each planner: nothing lost on a kill
    return summary


RUN_FILE = "run.json"  # in <out>/<planner>/: the settings its task records were made with


def _task_name(index: int) -> str:
    return f"task-{index:03d}"


def _jsonable(data):
    """``data`` as it reads back from JSON (tuples as lists, numpy scalars as numbers), for comparing."""
    return json.loads(json.dumps(data, default=lambda x: x.item() if hasattr(x, "item") else str(x)))


def _first_difference(old, new, prefix: str = "") -> str | None:
    """The dotted key of the first difference between two JSON values (None when equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if key not in old or key not in new:
                return f"{prefix}{key}"
            found = _first_difference(old[key], new[key], f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    return None if old == new else prefix.rstrip(".") or "(settings)"


def _finished(folder: Path, settings: dict, tasks: list[Task], videos: int) -> dict[int, Outcome]:
    """The outcomes recorded in ``folder`` by an earlier run with the same ``settings``: a task counts when its
    record is there, matches the task, and (for a task with a video) its GIF is there too. Different settings (but
    the number of tasks) are refused: the records are another run's."""
    run_file = folder / RUN_FILE
    if not run_file.exists():
        return {}
    try:
        old = json.loads(run_file.read_text())
    except (OSError, ValueError):
        raise ForesightError(f"{run_file}: unreadable; pass --fresh to start the results in {folder} over") from None
    key = _first_difference({**old, "tasks": None}, {**settings, "tasks": None})  # task i is the same in a longer
    # run (tasks are pure functions of (suite, i)), so a run may be extended to more tasks
    if key is not None:
        there, now = _lookup(old, key), _lookup(settings, key)
        raise ForesightError(f"{folder}: holds results of a different run ({key} = {there} there, {now} now); "
                             f"pass --fresh to start over, or give another --out")
    outcomes = {}
    for task in tasks:
        path = folder / f"{_task_name(task.index)}.json"
        if not path.exists():
            continue
        try:
            record = json.loads(path.read_text())
            outcome = _from_record(record, task, settings["planner"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: run the task again
        if outcome is None:
            continue
        if task.index < videos and not (record.get("video") and (folder / record["video"]).exists()):
            continue  # its video is missing (or was not asked for then): run it again
        outcomes[task.index] = outcome
    return outcomes


def _lookup(data, key: str):
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return "(missing)"
        data = data[part]
    return json.dumps(data)


def _clear(folder: Path) -> None:
    """Remove the task records, their GIFs and any half-written file from a planner's results folder."""
    if not folder.is_dir():
        return
    for pattern in ("task-*.json", "task-*.gif", "*.tmp", RUN_FILE):
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)


def _record(folder: Path, o: Outcome) -> None:
    """Write a finished task: its GIF, then its record, each atomically; the record is what makes the task count
    as finished."""
    name, video = _task_name(o.task.index), None
    if o.video:
        viz.write_gif(folder / f"{name}.gif", o.video, fps=10)  # atomic: never half a GIF
        video, o.video = f"{name}.gif", []
    record = {**o.summary(), "planner": o.planner, "video": video,
              "outcome": {"start_distance": float(o.start_distance), "final_distance": float(o.final_distance),
                          "success": bool(o.success), "replans": int(o.replans),
                          "seconds_per_replan": float(o.seconds_per_replan),
                          "model_seconds_per_replan": float(o.model_seconds_per_replan),
                          "distances": [float(d) for d in o.distances], "in_goal": [bool(i) for i in o.in_goal]}}
    evaluation.write_json(folder / f"{name}.json", record)


def _from_record(record: dict, task: Task, planner: str) -> Outcome | None:
    """The outcome a task record holds (None when it is another task's)."""
    if (record["task"] != task.index or record["seed"] != task.seed or record["planner"] != planner
            or record["designated"] != _jsonable(task.designated.tolist())
            or record["goals"] != _jsonable(task.goals.tolist())):
        return None
    r = record["outcome"]
    return Outcome(task=task, planner=planner, start_distance=r["start_distance"], final_distance=r["final_distance"],
                   success=r["success"], replans=r["replans"], seconds_per_replan=r["seconds_per_replan"],
                   model_seconds_per_replan=r["model_seconds_per_replan"], distances=list(r["distances"]),
                   in_goal=list(r["in_goal"]), final_state=record.get("final_state"))


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
        return self.pool.imap_unordered(_run_job, jobs) if self.pool else map(_run_job, jobs)

    def __exit__(self, *exc):
        global _WORKER
        if self.pool:
            self.pool.terminate() if exc[0] else self.pool.close()
            self.pool.join()
        elif _WORKER is not None:
            _WORKER[0].close()
            _WORKER = None
