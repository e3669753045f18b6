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


def init_recipe(recipe_path: Path) -> Path | None:
    """The recipe (beside ``recipe_path``) that trains the run ``recipe_path``'s ``train.init`` starts from."""
    from foresight import recipes, training

    recipe = recipes.load(training.TrainRecipe, recipe_path)
    if not recipe.train.init:
        return None
    init = training.relative_to(recipe_path, recipe.train.init).resolve()
    for other in sorted(recipe_path.parent.glob("*.toml")):
        if other != recipe_path and training.resolve_paths(recipes.load(training.TrainRecipe, other), other)[1].resolve() == init:
            return other
    raise SystemExit(f"{recipe_path}: no recipe beside it trains its train.init {init}")


def logged_minutes(run: Path) -> float | None:
    """Training minutes from a run's own log (None without one, e.g. a run copied from pretrained/)."""
    log = run / "metrics.jsonl"
    if not log.exists():
        return None
    seconds = [r["seconds"] for r in map(json.loads, log.read_text().splitlines()) if "seconds" in r]
    return sum(a for a, b in zip(seconds, seconds[1:] + [0.0]) if b < a) / 60  # a resumed run restarts its clock


def collect_if_incomplete(data_recipe: str, data_dir: Path, workers: int) -> None:
    """Collect ``data_recipe`` (relative to the repository) unless ``data_dir`` holds a complete dataset."""
    manifest = data_dir / "manifest.json"
    if not manifest.exists() or not json.loads(manifest.read_text())["complete"]:
        sh(EXE, "collect", str(REPO / data_recipe), "--workers", str(workers), "--no-progress")


def trained_run(recipe: str, data_recipe: str, reuse: bool, workers: int) -> tuple[Path, dict[str, float | None]]:
    """(run folder, training minutes of each run of the chain) of ``recipe`` (relative to the repository):
    its dataset collected from ``data_recipe`` if incomplete, the run it fine-tunes (``train.init``)
    trained first, the run trained afresh unless ``reuse`` finds a checkpoint (then its minutes are its
    own log's, and the runs before it are not retrained)."""
    from foresight import recipes, training
    from foresight.checkpoints import checkpoint_dir

    recipe_path = REPO / recipe
    data_dir, run = training.resolve_paths(recipes.load(training.TrainRecipe, recipe_path), recipe_path)
    parent = init_recipe(recipe_path)
    if reuse and checkpoint_dir(run):
        minutes = {}
        while parent is not None:  # the minutes of the runs before it, as far as they are logged
            minutes[parent.stem] = logged_minutes(training.resolve_paths(recipes.load(training.TrainRecipe, parent), parent)[1])
            parent = init_recipe(parent)
        return run, {**dict(reversed(minutes.items())), recipe_path.stem: logged_minutes(run)}
    minutes = trained_run(str(parent.relative_to(REPO)), data_recipe, reuse, workers)[1] if parent else {}
    collect_if_incomplete(data_recipe, data_dir, workers)
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    sh(EXE, "train", str(recipe_path), "--no-progress")
    return run, {**minutes, recipe_path.stem: (time.perf_counter() - start) / 60}
