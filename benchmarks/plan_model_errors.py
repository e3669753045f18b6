"""How much of a planning model's promise comes true: the first replan of each task, model vs simulator.

A planner exploits its model: among hundreds of scored action sequences, CEM keeps those the model thinks
are best, and a model's errors are over-represented among them. This measures that gap in a minute or two,
without running whole MPC episodes, so a new planning model can be judged before a full benchmarks/plan.py:
at the start of each of the first --tasks tasks of plan/point_push.toml,

  model plan   CEM with the suite's settings scoring the model planner's cost (the suite's cost terms)
  oracle plan  the same CEM and cost on the simulator's rollouts

Both planners are made as `foresight plan` makes them (planning.planners.make), so "model cost" is the planner's.

and for each plan, the designated object's progress toward its goal over the plan (start distance minus
final distance, camera pixels) as the model predicts it (expected position of the carried distribution) and
as the simulator gives it. A model that plans well promises about what it delivers on its own plans; the
"hallucinated" share counts model plans promising >= 2 px of progress that deliver < 0.5 px. And a search
question: "oracle_plan_above_rest" is the share of tasks in which the model's cost of the oracle's plan is above
its cost of resting (zero actions): there no amount of sampling finds the oracle's plan, the model is the limit.

    python benchmarks/plan_model_errors.py [--model RUN [RUN ...]] [--suite plan/x.toml] [--tasks 20] [--set cem.samples=50]

Writes benchmarks/results/plan_model_errors.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def first_replan(suite, env, task, predictor):
    """The model and oracle planners of a task, as `foresight plan` makes them, ready for their first replan."""
    from foresight.planning import planners

    obs, info = env.reset(seed=task.seed, options=task.reset_options)
    model = planners.make("model", suite, env, task, obs, predictor)
    oracle = planners.make("oracle", suite, env, task, obs)
    model.rollouts.begin(obs, info)
    oracle.rollouts.begin(obs, info)
    return model, oracle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["pretrained/plan_point_push"],
                    help="a run folder (relative to the repository); several plan as an ensemble")
    ap.add_argument("--suite", default=str(REPO / "plan" / "point_push.toml"))
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a suite key, e.g. cem.samples=50")
    ap.add_argument("--out", default=str(HERE / "results" / "plan_model_errors.json"))
    args = ap.parse_args()

    import foresight  # noqa: F401
    from foresight import evaluation, pixels
    from foresight.envs import make_env
    from foresight.planning import planners, suites

    torch.set_num_threads(args.threads)
    predictor = planners.load_model([REPO / m for m in args.model])
    suite = suites.load(args.suite, args.set)
    env = make_env(suite.env, suite.env_kwargs, args.suite)
    predictor.check_env(suite.env, suite.env_kwargs, env, args.suite)
    tasks = suites.make_tasks(suite, env, args.suite)[:args.tasks]
    h, w = predictor.image_size
    per_task = []
    for task in tqdm(tasks, desc="first replans", dynamic_ncols=True):
        model, oracle = first_replan(suite, env, task, predictor)
        H, W = model.rollouts.camera_size
        goals = torch.as_tensor(task.goals, dtype=torch.float32)
        start = float(np.linalg.norm(task.designated - task.goals, axis=-1).mean())
        row = {"task": task.index, "start_distance": round(start, 3)}
        rest = torch.zeros(1, model.cem.horizon, *env.action_space.shape)
        row["rest_model_cost"] = round(float(model.score(rest)[0]), 3)
        for name, planner in (("model_plan", model), ("oracle_plan", oracle)):
            plan = planner.cem.expand(planner.cem.plan(planner.score).best)[None]  # a fresh search each: no warm start
            rollout = model.rollouts(plan)
            particles = rollout if isinstance(rollout, list) else [rollout]  # an ensemble's members, latent draws
            centre = torch.stack([pixels.centre_of_mass(r.dists[0, -1]) for r in particles]).mean(0)  # (K, 2)
            predicted = torch.as_tensor(pixels.scale_points(centre.numpy(), (h, w), (H, W)))
            true = torch.as_tensor(env.unwrapped.rollout_points(plan.numpy()))[0, -1, :len(goals)]
            row[name] = {"promised_px": round(start - float((predicted - goals).norm(dim=-1).mean()), 3),
                         "delivered_px": round(start - float((true - goals).norm(dim=-1).mean()), 3),
                         "final_error_px": round(float((predicted - true).norm(dim=-1).mean()), 3),
                         "model_cost": round(float(model.cost(rollout)[0]), 3)}
        per_task.append(row)
    env.close()

    def mean(plan, key):
        return round(float(np.mean([r[plan][key] for r in per_task])), 3)

    result = {"date": date.today().isoformat(),
              "machine": evaluation.machine(args.threads),
              "model": args.model[0] if len(args.model) == 1 else args.model,
              "suite": str(Path(args.suite).name), "overrides": args.set, "tasks": len(per_task)}
    for plan in ("model_plan", "oracle_plan"):
        result[plan] = {k: mean(plan, k) for k in ("promised_px", "delivered_px", "final_error_px")}
    result["model_plan"]["hallucinated"] = round(float(np.mean(
        [r["model_plan"]["promised_px"] >= 2 and r["model_plan"]["delivered_px"] < 0.5 for r in per_task])), 3)
    result["oracle_plan_above_rest"] = round(float(np.mean(
        [r["oracle_plan"]["model_cost"] > r["rest_model_cost"] for r in per_task])), 3)
    result["per_task"] = per_task
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_task"}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
