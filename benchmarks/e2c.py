"""E2C, PCC and PC3 on the PCC / PC3 protocol: percentage of steps in the goal region, Planar and swing-up.

Writes benchmarks/results/e2c.json. For each system (planar: data/planar.toml, plan/planar.toml; swingup:
data/pendulum.toml, plan/pendulum.toml; balance: the swing-up's models on plan/balance.toml; cartpole:
data/cartpole.toml, plan/cartpole.toml):
  1. the dataset, collected from its recipe if missing;
  2. --seeds models of each of the --kinds, E2C (train/e2c_<system>.toml), the VAE baseline (train/vae_<system>.toml),
     PCC (train/pcc_<system>.toml) and PC3 (train/pc3_<system>.toml), trained with train.seed = 0 .. N-1 into
     train/runs/<kind>_<system>_seed<k>, timed in minutes;
  3. each model planned on the suite's first --pairs start-goal pairs: E2C, PCC and PC3 with CEM and with iLQR,
     the VAE with CEM (and, once per system, random actions and the oracle: the same CEM on the true state, the
     bound of this protocol for any latent space), results under plan/results/e2c_benchmark/;
  4. the percentage of steps in the goal region, mean and std over the N x M (model, pair) trajectories,
     beside the PC3 paper's figures for PCC and PC3 on the same protocol.
Then PointPush toward goal images (data/point_push.toml, train/e2c_point_push.toml, plan/point_push_goal.toml):
one E2C model, the block's final pixel distance to its place in the goal image.

    python benchmarks/e2c.py [--seeds 10] [--pairs 10] [--reuse] [--systems planar,swingup,point_push] [--set K=V]
    python benchmarks/e2c.py --systems planar --kinds pcc,pc3 --reuse   # some kinds; the others' figures stay
    python benchmarks/e2c.py --baselines-only --systems planar,swingup   # random and oracle only, kept beside
    python benchmarks/e2c.py --systems planar --seeds 3 --tag lam64 --set model.lam=64   # a recipe variant
    python benchmarks/e2c.py --systems swingup --kinds pc3 --reuse --tag starts --plan-set ilqr.extreme_starts=3
                                                                    # a planner variant on the default models

The issue's protocol is --seeds 10 --pairs 10 (the defaults).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# PC3 (Shu et al., ICML 2020), Table 1: percentage of steps in the goal region, all models, mean +- its spread
REFERENCE = {"planar": {"pcc": [56.6, 3.15], "pc3": [74.35, 0.76]}, "swingup": {"pcc": [26.41, 2.64], "pc3": [58.4, 3.53]},
             "balance": {"pcc": [91.9, 1.72], "pc3": [99.12, 0.66]}, "cartpole": {"pcc": [94.44, 1.34], "pc3": [96.26, 0.95]}}
SYSTEMS = {  # benchmark key: (recipe stem, data recipe, suite)
    "planar": ("planar", "data/planar.toml", "plan/planar.toml"),
    "swingup": ("pendulum", "data/pendulum.toml", "plan/pendulum.toml"),
    "balance": ("pendulum", "data/pendulum.toml", "plan/balance.toml"),  # the swing-up's models, another suite
    "cartpole": ("cartpole", "data/cartpole.toml", "plan/cartpole.toml"),
}
PLANS = {"e2c": ("cem", "ilqr"), "vae": ("cem",), "pcc": ("cem", "ilqr"), "pc3": ("cem", "ilqr")}


THREADS = {"n": 1}  # torch / BLAS threads of every training and planning run (--threads)


def sh(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    n = str(THREADS["n"])
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}  # what torch's thread pool sizes itself by
    subprocess.run(args, check=True, cwd=REPO, env=env)


def exe() -> str:
    return str(Path(sys.executable).parent / "foresight")


def ensure_data(recipe: str) -> None:
    """Collect the dataset of a data recipe unless it is complete already."""
    from foresight import collect, recipes

    r = recipes.load(collect.CollectRecipe, REPO / recipe)
    manifest = REPO / Path(recipe).parent / r.name / "manifest.json"
    if not manifest.exists() or not json.loads(manifest.read_text()).get("complete"):
        sh(exe(), "collect", str(REPO / recipe), "--workers", str(THREADS["n"]), "--no-progress")


def train(recipe: str, name: str, seed: int, reuse: bool, overrides: list[str]) -> tuple[Path, float, bool]:
    """Train one model (or keep a finished run with --reuse); return its run folder, training minutes and whether
    the run was kept."""
    from foresight import recipes, training
    from foresight.checkpoints import checkpoint_dir

    path = REPO / recipe
    sets = [*overrides, f"name={name}", f"train.seed={seed}"]
    r = recipes.load(training.TrainRecipe, path, sets)
    run = training.resolve_paths(r, path)[1]
    ckpt = checkpoint_dir(run)
    if reuse and ckpt and json.loads((ckpt / "state.json").read_text())["step"] >= r.train.steps:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return run, max(row.get("seconds", 0.0) for row in rows) / 60, True
    data = training.resolve_paths(r, path)[0]
    if data.with_suffix(".toml").exists():  # a kind may train on its own data (PC3's pendulum: data/pendulum_rest)
        ensure_data(str(data.with_suffix(".toml").relative_to(REPO)))
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    sh(exe(), "train", str(path), *[a for item in sets for a in ("--set", item)], "--no-progress")
    return run, (time.perf_counter() - start) / 60, False


def plan(run: Path | None, suite_path: str, pairs: int, planners: list[str], out: Path, heldout: bool = False,
         plan_sets: list[str] = (), reuse: bool = False) -> dict:
    """Plan the suite's first `pairs` tasks (or its held-out twin's) with a trained run; each planner's summary.
    ``plan_sets`` override the suite's keys (--plan-set); with ``reuse`` the tasks already planned in ``out`` under
    the same settings are kept (``mpc.run_suite``'s resume)."""
    from foresight import recipes
    from foresight.errors import ForesightError
    from foresight.planning import mpc, planners as planning, suites

    suite = suites.load(REPO / suite_path, [*plan_sets, f"tasks={pairs}"])
    if heldout:
        suite = suites.heldout(suite, suite_path)
    model = planning.load_model(run) if run is not None else None
    print(f"plan {suite_path} with {run.name if run else 'no model'}: {', '.join(planners)}", flush=True)
    resolved = {**recipes.to_dict(suite), "model": str(run)}
    try:
        return mpc.run_suite(suite, out, model, planners, suite_path, videos=2, progress=False, resolved=resolved,
                             resume=reuse)
    except ForesightError as e:  # planned before under other settings: those plans are another run's
        if not reuse or "different run" not in str(e):
            raise
        print(f"{out}: planned under other settings before; planning again", flush=True)
        return mpc.run_suite(suite, out, model, planners, suite_path, videos=2, progress=False, resolved=resolved)


def mean_std(values) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    return [round(float(v.mean()), 2), round(float(v.std()), 2)]


def baselines(key: str, pairs: int, out: Path, heldout: bool = False, reuse: bool = False) -> dict:
    """Random actions and the oracle (CEM on the true state) on a system's suite (or its held-out twin); with
    ``reuse`` the tasks planned before under the same settings are kept."""
    summary = plan(None, SYSTEMS[key][2], pairs, ["random", "oracle"],
                   out / key / ("baselines_heldout" if heldout else "baselines"), heldout, reuse=reuse)
    return {p: mean_std([t["percent_in_goal"] for t in summary[p]["per_task"]]) for p in ("random", "oracle")}


def suffix(tag: str) -> str:
    """What a --tag adds to run and folder names."""
    return f"_{tag}" if tag else ""


def map_score(run: Path) -> float:
    """A planar run's latent map rank correlation (learners.e2c.map_rank_correlation): the figure training
    wrote, or computed from the model for runs trained before it did."""
    from foresight.learners import load_run
    from foresight.learners.e2c import map_rank_correlation, planar_latent_means

    saved = run / "latent_map.json"
    if saved.exists():
        return json.loads(saved.read_text())["map_rank_correlation"]
    return map_rank_correlation(*planar_latent_means(load_run(run)[0]))


def system_benchmark(key: str, seeds: int, pairs: int, reuse: bool, out: Path, overrides: list[str],
                     tag: str = "", kinds: tuple[str, ...] = tuple(PLANS), first_seed: int = 0,
                     plan_sets: list[str] = ()) -> dict:
    from foresight.planning import suites

    stem, data, suite = SYSTEMS[key]
    ensure_data(data)
    goals = suites.load(REPO / suite).goal_states  # task i aims at goals[i % len]
    percent = {f"{kind}_{p}": [] for kind in kinds for p in PLANS[kind]}  # every (model, pair) trajectory
    per_model = {k: [] for k in percent}  # each model's mean over its pairs
    per_goal = {k: {str(g): [] for g in goals} for k in percent}
    minutes = {kind: [] for kind in kinds}
    final_in_goal = {k: [] for k in percent}
    maps = {kind: [] for kind in kinds}
    twin = {k: [] for k in percent}  # the same models on the held-out twin's pairs
    twin_per_model = {k: [] for k in percent}
    for kind in kinds:
        planners = PLANS[kind]
        for seed in range(first_seed, first_seed + seeds):
            name = f"{kind}_{stem}{suffix(tag)}_seed{seed}"  # the plans' folder; the run's name when --set
            run_name = name if overrides else f"{kind}_{stem}_seed{seed}"  # only --plan-set: the default models
            run, m, kept = train(f"train/{kind}_{stem}.toml", run_name, seed, reuse, overrides)
            minutes[kind].append(round(m, 2))
            if key == "planar":
                maps[kind].append(round(map_score(run), 3))
            summary = plan(run, suite, pairs, list(planners), out / key / name, plan_sets=plan_sets, reuse=kept)
            for p in planners:
                values = [t["percent_in_goal"] for t in summary[p]["per_task"]]
                percent[f"{kind}_{p}"] += values
                per_model[f"{kind}_{p}"].append(float(np.mean(values)))
                final_in_goal[f"{kind}_{p}"].append(summary[p]["success"])
                for t in summary[p]["per_task"]:
                    per_goal[f"{kind}_{p}"][str(goals[t["task"] % len(goals)])].append(t["percent_in_goal"])
            summary = plan(run, suite, pairs, list(planners), out / key / f"{name}_heldout", True, plan_sets, kept)
            for p in planners:
                values = [t["percent_in_goal"] for t in summary[p]["per_task"]]
                twin[f"{kind}_{p}"] += values
                twin_per_model[f"{kind}_{p}"].append(round(float(np.mean(values)), 1))
    result = {k: mean_std(v) for k, v in percent.items()}
    if len(goals) > 1:  # which goals a model loses
        result["per_goal"] = {k: {g: mean_std(v) for g, v in by.items()} for k, by in per_goal.items()}
    if key == "planar":  # 1: a flat map like the E2C paper's; folded ones 0.65-0.88 lose pairs
        result["map_rank_correlation"] = maps
    result["per_model"] = {k: [round(v, 1) for v in vs] for k, vs in per_model.items()}
    # a variant (--tag) plans the same suites: its file holds the models' figures, e2c.json the baselines'
    result.update({
        **({} if tag else baselines(key, pairs, out, reuse=reuse)),
        "heldout": {**{k: mean_std(v) for k, v in twin.items()},
                    **({} if tag else baselines(key, pairs, out, heldout=True, reuse=reuse))},
        "heldout_per_model": twin_per_model,
        "reference": REFERENCE[key],
        "std_over_model_means": {k: round(float(np.std(v)), 2) for k, v in per_model.items()},
        "in_goal_at_the_end": {k: round(float(np.mean(v)), 3) for k, v in final_in_goal.items()},
        "train_minutes": minutes,
        "train_minutes_mean": {k: round(float(np.mean(v)), 2) for k, v in minutes.items()},
        "models": {kind: seeds for kind in kinds}, "first_seed": first_seed,
        "date": {kind: date.today().isoformat() for kind in kinds},
        "pairs": pairs, "data": data, "suite": suite,
        "recipes": {kind: f"train/{kind}_{stem}.toml" for kind in kinds},
    })
    return result


def point_push_benchmark(pairs: int, reuse: bool, out: Path, overrides: list[str], tag: str = "") -> dict:
    ensure_data("data/point_push.toml")
    run, minutes, _ = train("train/e2c_point_push.toml", f"e2c_point_push{suffix(tag)}_seed0", 0, reuse, overrides)
    summary = plan(run, "plan/point_push_goal.toml", pairs, ["cem", "ilqr", "random"],
                   out / f"point_push{suffix(tag)}")

    def figures(s):
        return {"final_distance_px": s["mean_final_distance"], "start_distance_px": s["mean_start_distance"],
                "final_over_start": s["final_over_start"], "percent_in_goal": s["percent_in_goal"],
                "in_goal_at_the_end": s["success"]}

    return {"e2c_cem": figures(summary["cem"]), "e2c_ilqr": figures(summary["ilqr"]),
            "random": figures(summary["random"]), "train_minutes": round(minutes, 2), "pairs": pairs,
            "metric": "the block's pixel distance to where the goal image shows it (goal region: 3 px)",
            "recipe": "train/e2c_point_push.toml", "suite": "plan/point_push_goal.toml"}


def save(out: Path, result: dict) -> None:
    """Merge this run's keys into the results file as it is now, two levels deep (a system's per-kind tables
    keep the kinds this run did not train): two runs on different --systems or --kinds (one per core) may write
    it in turn, and neither loses the other's figures."""
    merged = json.loads(out.read_text()) if out.exists() else {}
    for key, value in result.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            value = {**old, **{k: {**old[k], **v} if isinstance(v, dict) and isinstance(old.get(k), dict) else v
                               for k, v in value.items()}}
        merged[key] = value
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=1) + "\n")
    tmp.replace(out)  # whole or not at all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10, help="models trained per kind and system (issue: 10)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds first-seed .. first-seed + seeds - 1 (a variant tried on some of the models)")
    ap.add_argument("--pairs", type=int, default=10, help="start-goal pairs per model (issue: 10)")
    ap.add_argument("--systems", default="planar,swingup,point_push")
    ap.add_argument("--kinds", default=",".join(PLANS), help=f"model kinds to train and plan ({', '.join(PLANS)})")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs of the same names, and their finished "
                    "plans under the same settings (two runs on disjoint --first-seed ranges, then one on all seeds, "
                    "share the cores)")
    ap.add_argument("--baselines-only", action="store_true",
                    help="planar / swingup: run only random and the oracle, keeping the models' figures in the file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of every training recipe (a quick check: --tag quick --set train.steps=20)")
    ap.add_argument("--plan-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of every suite the models plan (with --tag: a planner change tried on the "
                    "default models, e.g. --plan-set ilqr.extreme_starts=3)")
    ap.add_argument("--tag", default="", help="a variant's name: its figures go to results/e2c_<tag>.json; with --set "
                    "(a recipe change tried beside the default) its runs are <kind>_<system>_<tag>_seed<k>")
    ap.add_argument("--out", default=None, help="results file (default results/e2c.json, or e2c_<tag>.json)")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads of each run; runs go one at a time (default 1: the other core stays free)")
    args = ap.parse_args()
    systems = args.systems.split(",")
    kinds = tuple(args.kinds.split(","))
    unknown = sorted(set(systems) - {*SYSTEMS, "point_push"})
    if unknown or args.seeds < 1 or args.pairs < 1 or args.first_seed < 0:
        ap.error(f"--systems: unknown {unknown}" if unknown else "--seeds and --pairs must be >= 1, --first-seed >= 0")
    if (args.set or args.plan_set) and not args.tag:
        ap.error("--set and --plan-set make a variant: name it with --tag (its figures stay out of e2c.json)")
    if set(kinds) - set(PLANS):
        ap.error(f"--kinds: unknown {sorted(set(kinds) - set(PLANS))} (expected some of {', '.join(PLANS)})")

    import foresight  # noqa: F401  (environments, EGL)
    from foresight import evaluation

    THREADS["n"] = max(1, args.threads)
    torch.set_num_threads(THREADS["n"])  # the planning in this process

    plans = REPO / "plan" / "results" / "e2c_benchmark"
    out = Path(args.out or HERE / "results" / (f"e2c_{args.tag}.json" if args.tag else "e2c.json"))
    result = {  # this run's keys; save() merges them into the file, keeping the other systems' figures
        "date": date.today().isoformat(),
        "machine": evaluation.machine(torch.get_num_threads()),
        "protocol": "percentage of steps in the goal region; mean and std over models x start-goal pairs",
        "targets": {"planar": "the best kind at or above PC3's 74.35 with a std at most half of E2C's 2026-12-02 18.1",
                    "swingup": "the best kind at or above PC3's 58.4 with a std at most half of E2C's 34.1",
                    "balance": "the best kind at or above PC3's 99.12",
                    "cartpole": "the best kind at or above PC3's 96.26",
                    "train_minutes": "<= 10 per model on 2 cores"},
    }
    for key in systems:
        if args.baselines_only:
            if key in SYSTEMS:
                old = json.loads(out.read_text()).get(key, {}) if out.exists() else {}
                result[key] = {**old, **baselines(key, args.pairs, plans), "reference": REFERENCE[key]}
                save(out, result)
            continue
        result[key] = (point_push_benchmark(args.pairs, args.reuse, plans, args.set, args.tag) if key == "point_push"
                       else system_benchmark(key, args.seeds, args.pairs, args.reuse, plans, args.set, args.tag, kinds,
                                             args.first_seed, args.plan_set))
        result[key]["train_overrides"] = args.set
        result[key]["plan_overrides"] = args.plan_set
        save(out, result)  # after each system: nothing lost on a kill
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
