"""The ``foresight`` command: collect, data, demo.

Every sub-command reports a user's mistake as one line naming the file, key or argument, and exits
with status 2; it never shows a traceback for one.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from foresight.errors import ForesightError

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except ForesightError as e:
        print(f"foresight: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("foresight: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="foresight", description="Pixel-based visual foresight: collect, train, plan.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("collect", help="collect an image dataset from a recipe (resumes an unfinished one)")
    c.add_argument("recipe", help="a dataset recipe, e.g. data/point_push.toml")
    c.add_argument("--workers", type=int, default=1, help="processes to collect with (same episodes for any number)")
    c.add_argument("--out", help="dataset folder (default: <recipe folder>/<name>)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_collect)

    d = sub.add_parser("data", help="inspect a dataset: info, verify, show")
    dsub = d.add_subparsers(dest="data_command", required=True)
    i = dsub.add_parser("info", help="episodes, shapes, action ranges, how often objects moved")
    i.add_argument("dataset")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_data_info)
    v = dsub.add_parser("verify", help="check every shard against the manifest's sha256 and shapes")
    v.add_argument("dataset")
    v.set_defaults(func=cmd_data_verify)
    s = dsub.add_parser("show", help="write a GIF and a contact sheet with the tracked points drawn on")
    s.add_argument("dataset")
    s.add_argument("--episodes", type=int, default=4, help="how many episodes to show")
    s.add_argument("--out", help="folder for the pictures (default: <dataset>/preview)")
    s.set_defaults(func=cmd_data_show)

    m = sub.add_parser("demo", help="run the main job end to end on a built-in default and say where the results are")
    m.add_argument("--out", default=str(REPO / "out" / "demo"), help="where the demo writes (default: out/demo)")
    m.add_argument("--workers", type=int, default=2)
    m.set_defaults(func=cmd_demo)
    return p


def cmd_collect(args) -> int:
    from foresight import collect, datasets, recipes

    recipe = recipes.load(collect.CollectRecipe, args.recipe, args.set)
    out = Path(args.out) if args.out else Path(args.recipe).parent / recipe.name
    start = time.perf_counter()
    collect.collect(recipe, out, workers=args.workers, source=args.recipe, progress=not args.no_progress)
    info = datasets.summary(out)
    print(f"{out}: {info['episodes']} episodes of {info['shapes']['frames'][0]} frames "
          f"({time.perf_counter() - start:.1f} s); objects moved >= {info['moved_threshold_px']:g} px "
          f"in {100 * info['moved_fraction']:.0f}% of episodes")
    return 0


def cmd_data_info(args) -> int:
    from foresight import datasets

    info = datasets.summary(args.dataset)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    sh = info["shapes"]
    print(f"dataset      {info['path']}  ({'complete' if info['complete'] else 'UNFINISHED'})")
    print(f"environment  {info['env']} {json.dumps(info['env_kwargs'])}")
    print(f"episodes     {info['episodes']} of {info['episodes_planned']} in {info['shards']} shards, "
          f"{info['bytes'] / 1e6:.1f} MB")
    for key in ("frames", "actions", "states", "points"):
        print(f"{key:<12} {tuple(sh[key])}")
    print(f"tracked      {', '.join(info['point_names'] or [])}")
    space = info["action_space"]
    print(f"actions      range {space['low']} .. {space['high']}; seen {info['actions_seen']['min']} .. "
          f"{info['actions_seen']['max']}")
    print(f"moved        {100 * info['moved_fraction']:.1f}% of episodes moved an object >= "
          f"{info['moved_threshold_px']:g} px")
    return 0


def cmd_data_verify(args) -> int:
    from foresight import datasets

    store = datasets.EpisodeStore(args.dataset)
    problems = store.verify()
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{args.dataset}: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{args.dataset}: {len(store.manifest['shards'])} shards, {len(store)} episodes, all match the manifest")
    return 0


def cmd_data_show(args) -> int:
    out = show_dataset(args.dataset, args.episodes, args.out)
    print(f"wrote {out['gif']} and {out['sheet']}")
    return 0


def show_dataset(root: str | Path, episodes: int = 4, out: str | Path | None = None) -> dict[str, Path]:
    """A GIF of ``episodes`` episodes side by side and a contact sheet, tracked points drawn on."""
    from foresight import datasets, viz

    if episodes < 1:
        raise ForesightError(f"--episodes: expected an integer >= 1, got {episodes}")
    store = datasets.EpisodeStore(root)
    out = Path(out) if out else Path(root) / "preview"
    picked = [store.episode(i) for i in range(min(episodes, len(store)))]
    store.close()
    T = len(picked[0]["frames"])
    gif = [viz.grid([[viz.draw_points(ep["frames"][t], ep["points"][t], scale=4) for ep in picked]]) for t in range(T)]
    every = max(1, T // 10)
    sheet = viz.grid([viz.episode_strip(ep["frames"], ep["points"], every, scale=3) for ep in picked])
    return {"gif": viz.write_gif(out / "episodes.gif", gif, fps=10), "sheet": viz.write_png(out / "contact_sheet.png", sheet)}


def cmd_demo(args) -> int:
    from foresight import collect, datasets, recipes

    out = Path(args.out)
    recipe_path = REPO / "data" / "point_push.toml"
    recipe = recipes.load(collect.CollectRecipe, recipe_path, ["episodes=40"])
    data = out / recipe.name
    print(f"[1/2] collecting {recipe.episodes} PointPush episodes into {data}")
    collect.collect(recipe, data, workers=args.workers, source=str(recipe_path))
    info = datasets.summary(data)
    print(f"      {info['episodes']} episodes, objects moved in {100 * info['moved_fraction']:.0f}% of them")
    print("[2/2] drawing the dataset")
    pics = show_dataset(data, 6, out / "preview")
    print(f"demo finished; results are in {out}:")
    print(f"  dataset        {data}   (foresight data info {data})")
    print(f"  animation      {pics['gif']}")
    print(f"  contact sheet  {pics['sheet']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
