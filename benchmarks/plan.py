"""Visual MPC: success on the PointPush suite beside random actions and the oracle, the other suites,
and the planner's speed with its levers.

Writes benchmarks/results/plan.json. Steps:
  1. the planning dataset (data/point_push_plan.toml) collected and the default planning model (--recipe)
     trained, after the runs it fine-tunes (each recipe's train.init: train/plan_point_push_stage1.toml, then
     _stage2.toml), if missing (--reuse keeps existing runs);
  2. plan/point_push.toml with the model, random actions and the oracle (CEM on the true simulator),
     its tasks spread over --workers processes of one thread each;
  2b. the model planner again with each other way of knowing where the designated pixel is after executing
     (mpc.track: 'model' carries the model's prediction, 'registration' re-finds it in the camera image,
     'true' restarts it at the simulator's pixel), on --tasks-tracking tasks;
  3. plan/point_push_2obj.toml with the same model (it has seen one block only) and plan/arm_push.toml
     with the oracle and random actions (no ArmPush video model is trained here), on fewer tasks;
  4. seconds per replanning step in one process with all cores, at visual foresight's CEM settings
     (3 x 200 samples, 5 actions) and at the suite's, with the share spent in the model, for the levers:
     the Train issue's model at the environment's time scale (15 predicted 64x64 frames per sample),
     the planning model (5 predicted 32x32 frames per sample), bf16 autocast, fewer samples.

    python benchmarks/plan.py [--reuse] [--workers 2] [--tasks N] [--tasks-other 10] [--tasks-tracking 20]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from runs import EXE, REPO, sh, trained_run  # noqa: E402
VF_CEM = {"samples": 200, "elites": 10, "iterations": 3, "horizon": 5}  # visual foresight's defaults


def suite_figures(summary: dict, planners: list[str]) -> dict:
    keep = ("tasks", "success", "success_ci95", "final_over_start", "final_over_start_ci95",
            "mean_start_distance", "mean_final_distance", "seconds_per_replan", "model_seconds_per_replan")
    return {p: {k: summary[p][k] for k in keep} for p in planners}


def replan_seconds(suite, predictor, replans: int = 3) -> dict:
    """Seconds per replanning step of the model planner on the suite's first task (the first replan,
    which warms oneDNN's caches, is left out)."""
    from foresight import recipes
    from foresight.envs import make_env
    from foresight.planning import mpc, suites

    per = suite.mpc.replan_every
    suite = recipes.from_dict(type(suite), {**recipes.to_dict(suite), "steps": per * (replans + 1)}, "bench")
    env = make_env(suite.env, suite.env_kwargs, "bench")
    try:
        task = suites.make_tasks(suite, env)[0]
        warm = recipes.from_dict(type(suite), {**recipes.to_dict(suite), "steps": per}, "bench")
        mpc.run_task(env, task, warm, "model", predictor, record=False)
        o = mpc.run_task(env, task, suite, "model", predictor, record=False)
    finally:
        env.close()
    frames = suite.cem.samples * suite.cem.iterations * suite.cem.horizon * suite.cem.repeat
    return {"seconds_per_replan": round(o.seconds_per_replan, 3),
            "model_seconds_per_replan": round(o.model_seconds_per_replan, 3),
            "model_share": round(o.model_seconds_per_replan / o.seconds_per_replan, 3),
            "frames_per_replan": frames, "cem": {k: getattr(suite.cem, k) for k in ("samples", "iterations",
                                                                                      "horizon", "repeat")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse", action="store_true", help="keep an existing dataset / trained run")
    ap.add_argument("--recipe", default="train/plan_point_push.toml")
    ap.add_argument("--env-scale-run", default="train/runs/sna_point_push",
                    help="the Train issue's default run, for the time-scale lever (skipped if missing)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tasks", type=int, default=None, help="tasks of plan/point_push.toml (default: the suite's 50)")
    ap.add_argument("--tasks-other", type=int, default=10, help="tasks of the two-object and ArmPush suites")
    ap.add_argument("--tasks-tracking", type=int, default=20,
                    help="tasks of plan/point_push.toml for each other mpc.track mode (0: skip)")
    ap.add_argument("--skip-suites", action="store_true",
                    help="only the speed measurements; the suites' figures are read from their last run")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads for the speed measurements (all cores; on a quiet machine)")
    ap.add_argument("--out", default=str(HERE / "results" / "plan.json"))
    args = ap.parse_args()

    import foresight  # noqa: F401
    from foresight import checkpoints, evaluation, recipes
    from foresight.planning import planners, suites
    from foresight.planning.tracking import TRACKING

    run, chain_minutes = trained_run(args.recipe, "data/point_push_plan.toml", args.reuse, args.workers)
    known = [m for m in chain_minutes.values() if m is not None]
    sh(EXE, "eval", str(run))
    quality = json.loads((run / "eval.json").read_text())
    result = {"date": date.today().isoformat(),
              "machine": evaluation.machine(f"speed with {args.threads}"),
              "model_run": str(run.relative_to(REPO)), "model_train_minutes": round(sum(known), 2) if len(known) == len(chain_minutes) else None,
              "model_train_minutes_by_run": {k: m if m is None else round(m, 2) for k, m in chain_minutes.items()},
              "model_psnr_gain_db": round(quality["psnr_gain_db"], 2),
              "model_tracking_ratio": round(quality.get("tracking_ratio", float("nan")), 3)}
    results_dir = REPO / "plan" / "results"
    runs = [("point_push", ["model", "random", "oracle"], args.tasks),
              ("point_push_2obj", ["model", "random", "oracle"], args.tasks_other),
              ("arm_push", ["random", "oracle"], args.tasks_other)]
    for name, names, tasks in runs:
        if not args.skip_suites:
            cmd = [EXE, "plan", str(REPO / "plan" / f"{name}.toml"), "--planners", ",".join(names),
                   "--workers", str(args.workers), "--videos", "5", "--no-progress"]
            cmd += ["--model", str(run)] if "model" in names else []
            cmd += ["--set", f"tasks={tasks}"] if tasks else []
            sh(*cmd)
        summary_file = results_dir / name / "summary.json"  # with --skip-suites: the last run's
        if summary_file.exists():
            result[name] = suite_figures(json.loads(summary_file.read_text()), names)
    suite = suites.load(REPO / "plan" / "point_push.toml")
    if args.tasks_tracking:
        result["tracking"] = {"suite_default": suite.mpc.track}
        for track in TRACKING:
            if track == suite.mpc.track:
                continue
            out = results_dir / f"point_push_track_{track}"
            if not args.skip_suites:
                sh(EXE, "plan", str(REPO / "plan" / "point_push.toml"), "--planners", "model", "--model", str(run),
                   "--workers", str(args.workers), "--videos", "3", "--no-progress", "--out", str(out),
                   "--set", f"tasks={args.tasks_tracking}", "--set", f"mpc.track={track!r}")
            if (out / "summary.json").exists():
                result["tracking"][track] = suite_figures(json.loads((out / "summary.json").read_text()), ["model"])["model"]
    if "point_push" in result:
        pp = result["point_push"]
        result.update({"success": pp["model"]["success"], "success_random": pp["random"]["success"],
                       "success_oracle": pp["oracle"]["success"], "final_over_start": pp["model"]["final_over_start"],
                       "final_over_start_oracle": pp["oracle"]["final_over_start"]})

    # speed, one process
    torch.set_num_threads(args.threads)
    predictor = planners.load_model(run)
    with_cem = lambda s, **cem: recipes.from_dict(  # noqa: E731
        type(s), {**recipes.to_dict(s), "cem": {**recipes.to_dict(s)["cem"], **cem}}, "bench")
    with_amp = lambda s: recipes.from_dict(  # noqa: E731
        type(s), {**recipes.to_dict(s), "mpc": {**recipes.to_dict(s)["mpc"], "amp": "bf16"}}, "bench")
    levers = {}
    env_run = REPO / args.env_scale_run
    if checkpoints.checkpoint_dir(env_run):  # the Train issue's model: 64x64 at the control rate, actions repeated 3x
        fine = recipes.from_dict(type(suite), {**recipes.to_dict(suite), "steps": 45,
                                               "env_kwargs": {**suite.env_kwargs, "action_repeat": 1},
                                               "cem": {**recipes.to_dict(suite)["cem"], "repeat": 3},
                                               "mpc": {"replan_every": 3}}, "bench")
        levers["env_time_scale_64px"] = replan_seconds(with_cem(fine, **VF_CEM), planners.load_model(env_run),
                                                       replans=1)
    levers["planning_scale_32px"] = replan_seconds(with_cem(suite, **VF_CEM), predictor)
    levers["planning_scale_32px_bf16"] = replan_seconds(with_amp(with_cem(suite, **VF_CEM)), predictor, replans=1)
    levers["suite_cem"] = replan_seconds(suite, predictor)
    result["levers"] = levers
    result["seconds_per_replan"] = levers["suite_cem"]["seconds_per_replan"]
    result["model_share"] = levers["suite_cem"]["model_share"]
    result["seconds_per_replan_vf_cem"] = levers["planning_scale_32px"]["seconds_per_replan"]
    result["targets"] = {"success": ">= 0.7", "success_random": "<= 0.1", "final_over_start": "<= 0.35",
                         "seconds_per_replan": "<= 2"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
