"""Planning models beyond one block, side by side: the deterministic clutter model, an ensemble of such models
(PETS-style cost over members), and the stochastic (SV2P-style) model, on every PointPush suite and its
held-out twin.

Writes benchmarks/results/models.json: per model kind, the validation figures (``foresight eval`` on the clutter
data: PSNR / SSIM gain over copy-last, designated-pixel tracking error ÷ static) and per suite (keyed by its name)
``success``, ``success_oracle``, ``final_over_start``, ``seconds_per_replan`` on the suite's tasks (the ones its
settings were chosen on) and, under ``heldout``, the same on its held-out twin (``foresight plan --heldout``:
other seeds, never looked at while tuning; the figures to report).

Steps (every planning run is a `foresight plan` into benchmarks/results/models/, which resumes finished tasks):
  1. the models each kind needs: the ones shipped in pretrained/ (`make pretrained-clutter` makes them), or with
     --retrain trained into train/runs (--reuse keeps existing runs): deterministic plan_point_push_clutter
     (train/plan_point_push_clutter.toml); ensemble that model and --members - 1 more with other seeds
     (train.seed = 1, 2, ...: other data order; <name>_seed<k>); stochastic sv2p_point_push_clutter
     (train/sv2p_point_push_clutter.toml);
  2. the oracle and random actions once per suite and twin (they need no model);
  3. each kind's model planner on each suite and twin, --tasks tasks (the first ones), --workers processes
     (the baselines run --baseline-tasks: they cost little).

    python benchmarks/models.py [--retrain [--reuse]] [--kinds deterministic,ensemble,stochastic] [--suites ...]
                                [--twins tuning,heldout] [--tasks 50] [--baseline-tasks 50]
                                [--workers 2] [--members 3]
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from runs import EXE, REPO, collect_if_incomplete, sh  # noqa: E402

RECIPES = {"deterministic": "train/plan_point_push_clutter.toml", "stochastic": "train/sv2p_point_push_clutter.toml"}
KINDS = ("deterministic", "ensemble", "stochastic")
DATA = "data/point_push_clutter.toml"
SUITES = ("point_push", "point_push_2obj", "point_push_clutter")
OUT = HERE / "results" / "models"


def model_run(recipe: str, name: str, args, *sets: str) -> Path:
    """The shipped model pretrained/<name> (unless --retrain), else train/runs/<name>: ``recipe`` trained under
    that name with ``sets`` (kept when --reuse finds a checkpoint), its dataset collected first if incomplete."""
    from foresight import recipes, training
    from foresight.checkpoints import checkpoint_dir

    shipped = REPO / "pretrained" / name
    if not args.retrain and checkpoint_dir(shipped):
        return shipped
    path = REPO / recipe
    data_dir, run = training.resolve_paths(recipes.load(training.TrainRecipe, path, [f"name='{name}'"]), path)
    if not (args.reuse and checkpoint_dir(run)):
        collect_if_incomplete(DATA, data_dir, args.workers)
        sh(EXE, "train", str(path), "--set", f"name='{name}'", *sets, "--no-progress")
    return run


def models_of(kind: str, args) -> list[Path]:
    """deterministic: the clutter model; ensemble: it and --members - 1 more trained with train.seed = 1, 2, ...
    (other data order; <name>_seed<k>); stochastic: the SV2P-style model; single_block (not run by default): the
    model the clutter model starts from, pretrained/plan_point_push, for reference."""
    if kind == "single_block":
        return [REPO / "pretrained" / "plan_point_push"]
    if kind == "stochastic":
        return [model_run(RECIPES[kind], "sv2p_point_push_clutter", args)]
    runs = [model_run(RECIPES["deterministic"], "plan_point_push_clutter", args)]
    if kind == "ensemble":
        runs += [model_run(RECIPES["deterministic"], f"plan_point_push_clutter_seed{k}", args,
                           "--set", f"train.seed={k}") for k in range(1, args.members)]
    return runs


def plan(suite: str, twin: str, out: Path, planners: str, models: list[Path], tasks: int, args) -> dict:
    """One `foresight plan` of a suite's first ``tasks`` tasks (or its held-out twin's); its summary.json."""
    cmd = [EXE, "plan", str(REPO / "plan" / f"{suite}.toml"), "--planners", planners, "--out", str(out),
           "--workers", str(args.workers), "--videos", "4", "--no-progress", "--set", f"tasks={tasks}"]
    if twin == "heldout":
        cmd.append("--heldout")
    if models:
        cmd += ["--model", *(str(m.relative_to(REPO)) for m in models)]  # as results record them
    sh(*cmd)
    return json.loads((out / "summary.json").read_text())


def evaluate(models: list[Path], out: Path, windows: int) -> dict:
    """Validation figures on the clutter data; an ensemble's are its members' means."""
    keys = ("psnr_gain_db", "psnr_gain_min_db", "tracking_error", "tracking_error_static", "tracking_ratio")
    rows = []
    for k, run in enumerate(models):
        where = out / f"eval{k}"
        sh(EXE, "eval", str(run), "--data", str(REPO / "data" / "point_push_clutter"), "--out", str(where),
           "--max-windows", str(windows))
        e = json.loads((where / "eval.json").read_text())
        ssim_gain = sum(e["ssim"]) / len(e["ssim"]) - sum(e["ssim_copy_last"]) / len(e["ssim_copy_last"])
        last = {k: e[k][-1] if isinstance(e[k], list) else e[k] for k in keys}  # per-step lists: the last step
        rows.append({**last, "ssim_gain": ssim_gain})  # SSIM per step: their mean
    return {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0]}


def figures(summary: dict, planner: str) -> dict:
    s = summary[planner]
    return {"tasks": s["tasks"], "success": s["success"], "success_ci95": s["success_ci95"],
            "final_over_start": s["final_over_start"], "seconds_per_replan": s["seconds_per_replan"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--retrain", action="store_true", help="train every model instead of using pretrained/'s")
    ap.add_argument("--reuse", action="store_true", help="with --retrain: keep trained runs that exist")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"of {KINDS} and single_block")
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--twins", default="tuning,heldout", help="tuning: the suite's own tasks; heldout: its twin's")
    ap.add_argument("--tasks", type=int, default=50, help="tasks per suite for the model planners")
    ap.add_argument("--baseline-tasks", type=int, default=50, help="tasks per suite for the oracle and random actions")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--members", type=int, default=3, help="ensemble members")
    ap.add_argument("--eval-windows", type=int, default=600)
    ap.add_argument("--out", default=str(HERE / "results" / "models.json"))
    args = ap.parse_args()

    import foresight  # noqa: F401
    from foresight import evaluation

    kinds, suites, twins = ([x for x in a.split(",") if x] for a in (args.kinds, args.suites, args.twins))
    path = Path(args.out)
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update({"date": date.today().isoformat(), "machine": evaluation.machine(1),
                   "command": "python " + " ".join(sys.argv), "data": DATA})
    baselines = result.setdefault("baselines", {})
    for suite in suites:
        for twin in twins:
            name = suite if twin == "tuning" else f"{suite}_heldout"
            summary = plan(suite, twin, OUT / "baselines" / name, "oracle,random", [], args.baseline_tasks, args)
            baselines[name] = {p: figures(summary, p) for p in ("oracle", "random")}
            evaluation.write_json(path, result)
    for kind in kinds:
        models = models_of(kind, args)
        entry = result.setdefault("kinds", {}).setdefault(kind, {})
        entry["runs"] = [str(m.relative_to(REPO)) for m in models]
        entry["eval"] = evaluate(models, OUT / kind, args.eval_windows)
        for suite in suites:
            row = entry.setdefault("suites", {}).setdefault(suite, {})
            for twin in twins:
                name = suite if twin == "tuning" else f"{suite}_heldout"
                fig = figures(plan(suite, twin, OUT / kind / name, "model", models, args.tasks, args), "model")
                fig["success_oracle"] = baselines[name]["oracle"]["success"]
                fig["success_random"] = baselines[name]["random"]["success"]
                if twin == "tuning":
                    row.update(fig)
                else:
                    row["heldout"] = fig
                evaluation.write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
