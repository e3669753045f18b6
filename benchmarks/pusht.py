"""PushT by DINO-WM's protocol (plan/pusht.toml's held-out twin): the model planner with goal pixels and with a goal
image, random targets and the oracle (the same CEM and cost on the true simulator), beside the published figures.

Writes benchmarks/results/pusht.json. Steps:
  1. data/pusht.toml (training), data/pusht_heldout.toml (the reported pairs) and data/pusht_tune.toml (the pairs
     the settings were chosen on) collected, and train/pusht.toml trained, if missing (--reuse keeps a trained run);
  2. the held-out twin of plan/pusht.toml (pairs from data/pusht_heldout) with the model, random and the oracle,
     goal given as the goal state's designated pixels (the T's two keypoints and the agent);
  3. the model again with the goal image instead (cost: goal_image only);
  4. per pair: gym-pusht's coverage of the goal pose at the end, and the pair's difficulty (the block's
     displacement and rotation from start to goal);
  5. gym-pusht's own task (plan/pusht_gym.toml's held-out twin: its random start, its fixed goal pose, 300 steps,
     success when the block covers 95% of the goal region) with the model and the oracle.

Success counts a pair reached at any step (DINO-WM's and stable-worldmodel's count) and, separately, at the last.

    python benchmarks/pusht.py [--reuse] [--workers 2] [--tasks N] [--gym-tasks N] [--runs points,image,gym]

Each run keeps its finished tasks (foresight plan resumes), so an interrupted benchmark picks up where it stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from runs import EXE, REPO, collect_if_incomplete, sh, trained_run  # noqa: E402

PUBLISHED = {  # PushT success, 50 pairs, the goal 25 steps along a held-out trajectory
    "DINO-WM (Zhou et al., ICML 2025), MPC with CEM, budget unlimited": 0.90,
    "DINO-WM re-run by stable-worldmodel, budget 50 steps": 0.74,
    "PLDM, stable-worldmodel, budget 50 steps": 0.78,
    "LeWM, stable-worldmodel, budget 50 steps": 0.96,
}
SUITE = REPO / "plan" / "pusht.toml"
GYM_SUITE = REPO / "plan" / "pusht_gym.toml"


def spread(x) -> dict:
    x = np.asarray(x, dtype=np.float64)
    q = np.percentile(x, [25, 50, 75])
    return {"mean": round(float(x.mean()), 2), "q25": round(float(q[0]), 2), "median": round(float(q[1]), 2),
            "q75": round(float(q[2]), 2)}


def difficulty(tasks, image_size: int) -> dict:
    """The block's displacement (camera pixels at ``image_size`` and world units) and rotation, start to goal."""
    start = np.array([t.reset_options["state"] for t in tasks])
    goal = np.array([t.goal_state for t in tasks])
    moved = np.linalg.norm(goal[:, 2:4] - start[:, 2:4], axis=1)
    turn = np.abs((goal[:, 4] - start[:, 4] + math.pi) % (2 * math.pi) - math.pi)
    return {"goal_displacement_px": spread(moved * image_size / 512), "goal_displacement_world": spread(moved),
            "goal_rotation_deg": spread(np.degrees(turn))}


def coverage(env, summary: dict, tasks) -> list[float]:
    """gym-pusht's coverage of each pair's goal pose by the block's final pose."""
    out = []
    for record, task in zip(summary["per_task"], tasks):
        env.reset(options={"state": record["final_state"]})
        out.append(env.unwrapped.coverage(task.goal_state))
    return out


def figures(summary: dict, env, tasks) -> dict:
    cov = coverage(env, summary, tasks)
    return {"success": summary["success_any_step"], "success_final": summary["success"],
            "success_final_ci95": summary["success_ci95"], "coverage": round(float(np.mean(cov)), 4),
            "mean_final_distance_px": summary["mean_final_distance"],
            "mean_start_distance_px": summary["mean_start_distance"],
            "seconds_per_replan": summary["seconds_per_replan"],
            "model_seconds_per_replan": summary["model_seconds_per_replan"]}


def gym_task(summary: dict, env) -> dict:
    """gym-pusht's own task: success (coverage above 0.95) at any step, and the block's coverage at the end."""
    final = []
    for record in summary["per_task"]:
        _, info = env.reset(options={"state": record["final_state"]})
        final.append(info["coverage"])
    return {"success": summary["success_any_step"], "final_coverage": round(float(np.mean(final)), 4),
            "final_coverage_per_task": [round(c, 3) for c in final],
            "mean_final_distance_px": summary["mean_final_distance"],
            "mean_start_distance_px": summary["mean_start_distance"],
            "seconds_per_replan": summary["seconds_per_replan"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse", action="store_true", help="keep an existing trained run")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tasks", type=int, default=None, help="pairs (default: the suite's 50)")
    ap.add_argument("--image-tasks", type=int, default=None, help="the goal-image run's pairs (default: --tasks)")
    ap.add_argument("--gym-tasks", type=int, default=None, help="gym-pusht's own task: starts (default: the "
                    "suite's)")
    ap.add_argument("--runs", default="points,image,gym", help="which runs to plan (the others' last results are "
                    "summarised): points, image, gym")
    args = ap.parse_args()

    from foresight import evaluation, recipes
    from foresight.envs import make_env
    from foresight.planning import suites

    for recipe in ("data/pusht_heldout.toml", "data/pusht_tune.toml"):
        collect_if_incomplete(recipe, REPO / "data" / Path(recipe).stem, args.workers)
    run, minutes = trained_run("train/pusht.toml", "data/pusht.toml", args.reuse, args.workers)
    sh(EXE, "eval", str(run))
    quality = json.loads((run / "eval.json").read_text())

    overrides = [f"tasks={args.tasks}"] if args.tasks else []
    image_overrides = [f"tasks={args.image_tasks}"] if args.image_tasks else overrides
    gym_overrides = [f"tasks={args.gym_tasks}"] if args.gym_tasks else []
    twin = suites.heldout(suites.load(SUITE, overrides))
    gym_twin = suites.heldout(suites.load(GYM_SUITE, gym_overrides))
    results = REPO / "plan" / "results"
    runs = {"points": ("pusht_heldout_points", SUITE, ["model", "random", "oracle"], overrides),
            "image": ("pusht_heldout_image", SUITE, ["model"],
                      image_overrides + ["cost.designated_pixels=0", "cost.goal_image=1"]),
            "gym": ("pusht_gym_heldout", GYM_SUITE, ["model", "oracle"], gym_overrides)}
    unknown = set(args.runs.split(",")) - set(runs) - {""}
    if unknown:
        raise SystemExit(f"--runs: unknown {sorted(unknown)}, expected some of {list(runs)}")
    summaries = {}
    for name, (folder, suite, planners, items) in runs.items():
        out = results / folder
        if name in args.runs.split(","):
            cmd = [EXE, "plan", str(suite), "--heldout", "--model", str(run), "--planners", ",".join(planners),
                   "--workers", str(args.workers), "--videos", "10", "--no-progress", "--out", str(out)]
            for item in items:
                cmd += ["--set", item]
            sh(*cmd)
        if (out / "summary.json").exists():  # a run not yet made is reported as missing (None)
            summaries[name] = json.loads((out / "summary.json").read_text())
    if "points" not in summaries:
        raise SystemExit(f"{results / runs['points'][0]}: no results yet; run with --runs points")

    env = make_env(twin.env, twin.env_kwargs, str(SUITE))
    try:
        tasks = suites.make_tasks(twin, env, str(SUITE))
        names = list(env.unwrapped.point_names)
        per = {p: figures(summaries["points"][p], env, tasks) for p in ("model", "random", "oracle")}
        if "image" in summaries:
            per["model_goal_image"] = figures(summaries["image"]["model"], env, tasks)
        own = {p: gym_task(summaries["gym"][p], env) for p in ("model", "oracle")} if "gym" in summaries else None
    finally:
        env.close()
    trained = minutes.get("pusht")
    result = {
        "date": date.today().isoformat(), "machine": evaluation.machine(f"{args.workers} task processes of 1"),
        "suite": f"{twin.name} ({SUITE.relative_to(REPO)} --heldout: pairs from {Path(twin.goal_data).name})",
        "tasks": len(tasks), "budget_steps": twin.steps, "goal_after": twin.goal_after,
        "success": per["model"]["success"], "success_final": per["model"]["success_final"],
        "success_random": per["random"]["success"], "success_oracle": per["oracle"]["success"],
        "success_goal_image": per.get("model_goal_image", {}).get("success"),
        "goal_image_tasks": summaries["image"]["tasks"] if "image" in summaries else 0,
        "coverage": per["model"]["coverage"],
        "seconds_per_replan": per["model"]["seconds_per_replan"],
        "train_minutes": None if trained is None else round(trained, 1),
        **difficulty(tasks, twin.env_kwargs.get("image_size", 64)),
        "planners": per, "published": PUBLISHED,
        "gym_pusht_task": own and {"suite": f"{gym_twin.name} ({GYM_SUITE.relative_to(REPO)} --heldout)",
                                   "tasks": summaries["gym"]["model"]["tasks"], "budget_steps": gym_twin.steps, **own},
        "model_run": str(run.relative_to(REPO)), "model_psnr_gain_db": round(quality["psnr_gain_db"], 2),
        "model_tracking_ratio": round(quality.get("tracking_ratio", float("nan")), 3),
        "model_tracking_ratio_per_point": dict(zip(names, [
            None if r is None else round(r, 3) for r in quality.get("tracking_ratio_per_object", [])])),
        "cem": recipes.to_dict(twin)["cem"],
    }
    path = HERE / "results" / "pusht.json"
    evaluation.write_json(path, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("planners", "published", "cem")}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
