"""What the quality benchmarks share: a dataset collected and a recipe trained when missing."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXE = str(Path(sys.executable).parent / "foresight")


def sh(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=REPO)


def trained_run(recipe: str, data_recipe: str, reuse: bool, workers: int) -> tuple[Path, float]:
    """(run folder, training minutes) of ``recipe`` (relative to the repository): its dataset collected
    from ``data_recipe`` if incomplete, the run trained afresh unless ``reuse`` finds a checkpoint (then
    the minutes are the run's own log)."""
    from foresight import recipes, training

    recipe_path = REPO / recipe
    data_dir, run = training.resolve_paths(recipes.load(training.TrainRecipe, recipe_path), recipe_path)
    manifest = data_dir / "manifest.json"
    if not manifest.exists() or not json.loads(manifest.read_text())["complete"]:
        sh(EXE, "collect", str(REPO / data_recipe), "--workers", str(workers), "--no-progress")
    if reuse and training.checkpoint_dir(run):
        seconds = [r["seconds"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "seconds" in r]
        # a resumed run restarts its clock: add up the segments
        return run, sum(a for a, b in zip(seconds, seconds[1:] + [0.0]) if b < a) / 60
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    sh(EXE, "train", str(recipe_path), "--no-progress")
    return run, (time.perf_counter() - start) / 60
