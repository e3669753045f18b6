"""Why a pendulum latent model fails the swing-up: its map and its dynamics along a true swing-up.

For each trained pendulum run (E2C, PCC or PC3), starting at rest hanging down (theta = 2.9) under full torque
(0.65, the protocol's limit; the rod goes straight up):
  map       the squared latent distance of each true observation (two stacked frames) to the goal image's latent
            (upright, at rest); ``barrier`` = its largest value before the rod first enters the goal region,
            divided by its value at the start. Above 1, every plan that pushes looks worse than waiting until it
            sees the top, which the 15-step horizon does not.
  dynamics  one-step predictions along the same path: |F(z_t, u) - z_t| / |E(x_t+1) - z_t|, the first 5 steps
            (from rest) and the rest of the way up (moving).
Writes benchmarks/results/pendulum_maps.json (one entry per run, and the run's plan summaries where
benchmarks/e2c.py left them).

    python benchmarks/pendulum_maps.py train/runs/pc3_pendulum_seed0 train/runs/pc3_pendulum_seed1 ...
"""
from __future__ import annotations

import argparse
import json
import math
from datetime import date
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
START, TORQUE, STEPS = 2.9, 0.65, 30
GOAL_RADIUS = math.pi / 6


def swing_up(run: Path) -> dict:
    from foresight.envs.pendulum import PendulumEnv
    from foresight.planning import planners

    latent = planners.load_model(run)
    env = PendulumEnv(max_torque=TORQUE)
    latent.check_env(env.env_id, {}, env, str(run))
    goal = latent.encode([env.reset(options={"state": [0.0, 0.0]})[0]] * latent.stack)
    obs, info = env.reset(options={"state": [START, 0.0]})
    frames = [obs] * latent.stack
    u = torch.tensor([[TORQUE]])
    distance, theta, predicted, true = [], [], [], []
    for _ in range(STEPS):
        z = latent.encode(frames)
        distance.append(float(((z - goal) ** 2).sum()))
        theta.append(float(info["state"][0]))
        with torch.no_grad():
            predicted.append(float((latent.model.transition(z[None], u).mean[0] - z).norm()))
        obs, _, _, _, info = env.step(np.array([TORQUE], np.float32))
        frames = (frames + [obs])[-latent.stack:]
        true.append(float((latent.encode(frames) - z).norm()))
    up = next((i for i, th in enumerate(theta) if abs(th) <= GOAL_RADIUS), STEPS)
    ratio = np.array(predicted) / np.maximum(np.array(true), 1e-9)
    return {"barrier": round(max(distance[:up]) / distance[0], 3), "steps_to_goal_region": up,
            "distance": [round(d, 3) for d in distance], "theta": [round(t, 3) for t in theta],
            "step_ratio_from_rest": round(float(np.mean(ratio[:5])), 3),
            "step_ratio_moving": round(float(np.mean(ratio[5:up])), 3)}


def plans(run: Path) -> dict:
    """The swing-up and balance figures benchmarks/e2c.py wrote for this run (per planner, mean % in goal)."""
    out = {}
    for suite in ("swingup", "balance"):
        for folder in sorted((REPO / "plan" / "results" / "e2c_benchmark" / suite).glob(f"{run.name}*")):
            summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else {}
            key = suite + ("_heldout" if folder.name.endswith("_heldout") else "")
            if folder.name.removesuffix("_heldout") == run.name:
                out[key] = {p: round(float(np.mean([t["percent_in_goal"] for t in s["per_task"]])), 1)
                            for p, s in summary.items() if isinstance(s, dict) and "per_task" in s}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="trained pendulum runs")
    ap.add_argument("--out", default=str(HERE / "results" / "pendulum_maps.json"))
    args = ap.parse_args()
    import foresight  # noqa: F401  (environments)

    torch.set_num_threads(1)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    for name in args.runs:
        run = Path(name).resolve()
        if not (run / "checkpoint").is_dir():
            raise SystemExit(f"{name}: not a trained run (no checkpoint/ folder)")
        entry = {**swing_up(run), "plans": plans(run), "date": date.today().isoformat()}
        result[run.name] = entry
        print(f"{run.name}: barrier {entry['barrier']}, one-step ratio from rest {entry['step_ratio_from_rest']}, "
              f"moving {entry['step_ratio_moving']}; plans {entry['plans']}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
