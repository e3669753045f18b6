"""Do two planning runs give the same outcome on every task? For a change that must keep every figure (a
refactoring), compare a suite's summary.json before and after it, task by task.

    python benchmarks/same_outcomes.py BEFORE.json AFTER.json [--planners model,oracle] [--name point_push]

BEFORE / AFTER: `foresight plan` summaries (`plan/results/<suite>/summary.json`) or files that hold one per planner
(`benchmarks/results/*.json`). For each planner in both: tasks compared, how many have the same success, the same
final distance and percentage of steps in the goal region, the same distance after every step (to the summary's
0.01 px; where both record it), and the figures of each side.
Merges its result under --name into benchmarks/results/same_outcomes.json.
"""
from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIGURES = ("success", "final_over_start", "percent_in_goal")


def compare(before: dict, after: dict) -> dict:
    """One planner's summaries (with per_task) -> how many tasks agree, and each side's figures."""
    a = {t["task"]: t for t in before["per_task"]}
    b = {t["task"]: t for t in after["per_task"]}
    common = sorted(set(a) & set(b))

    def known(i, key):  # both sides record it
        return a[i].get(key) not in (None, []) and b[i].get(key) not in (None, [])

    def same(key):  # tasks on which both sides record the key and agree; None when a side never records it
        both = [i for i in common if known(i, key)]
        return sum(a[i][key] == b[i][key] for i in both) if both else None

    keys = ("success", "final_distance", "percent_in_goal", "distance_per_step")
    return {"tasks": len(common), **{f"same_{k}": same(k) for k in keys},
            "differ": [i for i in common if any(known(i, k) and a[i][k] != b[i][k] for k in keys)],
            "before": {k: before.get(k) for k in FIGURES if k in before},
            "after": {k: after.get(k) for k in FIGURES if k in after}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--planners", help="comma-separated (default: every planner in both)")
    ap.add_argument("--name", default="comparison", help="the key this comparison is stored under")
    ap.add_argument("--out", default=str(HERE / "results" / "same_outcomes.json"))
    args = ap.parse_args()
    before, after = json.loads(Path(args.before).read_text()), json.loads(Path(args.after).read_text())
    names = args.planners.split(",") if args.planners else \
        [k for k in before if isinstance(before[k], dict) and "per_task" in before[k] and k in after]
    result = {"date": date.today().isoformat(), "before": args.before, "after": args.after,
              **{p: compare(before[p], after[p]) for p in names}}
    out = Path(args.out)
    stored = json.loads(out.read_text()) if out.exists() else {}
    stored[args.name] = result
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stored, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
