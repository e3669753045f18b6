"""PushT's frame time: foresight/PushT-v0 beside gym-pusht's own pixel observations, measured in one run.

Writes benchmarks/results/pusht_env.json. One process, one thread. foresight's step is gym-pusht's physics from a
space rebuilt from the exact sim state (what makes restores exact), the 512 x 512 drawing area-averaged to 64 x 64,
and the points; gym-pusht's is `gym.make("gym_pusht/PushT-v0", obs_type="pixels")` at 64 x 64 (its drawing
resized bilinearly), whose physics carries on in one space. Also: the rebuild's share, save / restore, and an
oracle replan's simulator cost (rollout_points of 100 sequences of 8 actions).

    python benchmarks/pusht_env.py [--steps 2000]
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import foresight  # noqa: F401  (registers the environments)
from foresight import evaluation

HERE = Path(__file__).resolve().parent


def actions(rng, steps: int) -> np.ndarray:
    """Targets that wander near the block's start region, so that about half the steps push it."""
    return np.clip(256 + np.cumsum(rng.normal(0, 25, (steps, 2)), axis=0), 20, 492)


def timed(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", default=str(HERE / "results" / "pusht_env.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    targets = actions(np.random.default_rng(0), args.steps)

    ours = gym.make("foresight/PushT-v0", image_size=64).unwrapped
    theirs = gym.make("gym_pusht/PushT-v0", obs_type="pixels", observation_width=64, observation_height=64)
    results = {}
    for name, env in (("foresight", ours), ("gym_pusht", theirs)):
        env.reset(seed=0)
        it = iter(targets)
        results[name] = 1 / timed(lambda: env.step(next(it)), args.steps)

    ours.reset(seed=0)
    it = iter(targets)
    simulate = timed(lambda: ours._simulate(next(it)), args.steps)
    raw_sim = ours.sim
    it = iter(targets)
    physics_only = timed(lambda: raw_sim.step(next(it)), args.steps)  # gym-pusht's step: physics and coverage
    render = timed(ours.render, 500)
    saved = ours.get_sim_state()
    save = timed(ours.get_sim_state, 2000)
    restore = timed(lambda: ours.set_sim_state(saved), 2000)
    ours.reset(seed=1)
    plans = np.clip(ours.state()[2:4] + np.random.default_rng(1).normal(0, 60, (100, 8, 2)), 0, 512)
    rollout = timed(lambda: ours.rollout_points(plans), 3)

    result = {
        "date": date.today().isoformat(), "machine": evaluation.machine(), "image": "64x64", "steps": args.steps,
        "foresight_fps": round(results["foresight"], 1),
        "gym_pusht_pixels_fps": round(results["gym_pusht"], 1),
        "ratio": round(results["foresight"] / results["gym_pusht"], 2),
        "render_ms": round(render * 1e3, 3),
        "step_physics_ms": round(simulate * 1e3, 3),
        "step_physics_without_rebuild_ms": round(physics_only * 1e3, 3),
        "get_sim_state_us": round(save * 1e6, 1), "set_sim_state_us": round(restore * 1e6, 1),
        "oracle_rollout_100x8_s": round(rollout, 3),
    }
    ours.close(), theirs.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
