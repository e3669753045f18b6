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
    except OSError as e:  # a full disk, a read-only folder: what was written before stays (every write is atomic)
        where = f"{e.filename}: " if e.filename else ""
        print(f"foresight: error: {where}{e.strerror or e}", file=sys.stderr)
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

    t = sub.add_parser("train", help="train a model from a recipe (torchrun for several processes)")
    t.add_argument("recipe", help="a training recipe, e.g. train/sna_point_push.toml")
    t.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a trained run on its validation split (JSON + PNG plot)")
    e.add_argument("run", help="a run folder, e.g. train/runs/sna_point_push")
    e.add_argument("--data", help="dataset folder (default: the one it was trained on)")
    e.add_argument("--out", help="where eval.json and eval.png go (default: the run folder)")
    e.add_argument("--max-windows", type=int, default=None, help="evaluate at most this many windows")
    e.set_defaults(func=cmd_eval)

    pl = sub.add_parser("plan", help="visual MPC: move designated pixels to goal pixels (a suite, or one task)")
    pl.add_argument("suite", nargs="?", help="a task suite, e.g. plan/point_push.toml")
    pl.add_argument("--model", nargs="+", help="a trained run: a video model (designated pixels, goal images) or a "
                                               "latent model (goal images), e.g. pretrained/plan_point_push; several "
                                               "video runs plan as an ensemble")
    pl.add_argument("--planners", help="comma-separated: model, oracle, random; goal-image suites also cem, ilqr "
                                       "(default: the model's planners + the suite's baselines)")
    pl.add_argument("--out", help="results folder (default: <suite folder>/results/<name>)")
    pl.add_argument("--videos", type=int, default=10, help="write videos of this many tasks per planner")
    pl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a suite key")
    pl.add_argument("--env", help="single task: environment id (instead of a suite)")
    pl.add_argument("--seed", type=int, default=0, help="single task: reset seed")
    pl.add_argument("--designated", help="single task: designated pixels 'row,col[;row,col]'")
    pl.add_argument("--goal", help="single task: goal pixels 'row,col[;row,col]'")
    pl.add_argument("--workers", type=int, default=1, help="suite: run tasks in this many processes (1 thread each)")
    pl.add_argument("--no-progress", action="store_true")
    pl.add_argument("--heldout", action="store_true", help="suite: run its held-out twin (the suite's settings on "
                                                           "the tasks of its heldout_seed), results in <name>_heldout")
    pl.add_argument("--fresh", action="store_true", help="suite: clear the results folder's task records and run "
                                                         "every task (default: keep the finished tasks of an "
                                                         "earlier run with the same settings)")
    pl.set_defaults(func=cmd_plan)

    r = sub.add_parser("verify", help="check a run's checkpoint files against their recorded sha256")
    r.add_argument("run", help="a run folder, e.g. train/runs/plan_point_push or pretrained/plan_point_push")
    r.set_defaults(func=cmd_verify)

    x = sub.add_parser("export", help="copy a run's model (no optimizer state) to a folder, e.g. pretrained/")
    x.add_argument("run")
    x.add_argument("dest")
    x.set_defaults(func=cmd_export)

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

    u = sub.add_parser("ui", help="a local page: click designated and goal pixels on a scene, watch visual MPC")
    u.add_argument("--model", action="append", default=[], metavar="RUN",
                   help="a trained video model the page may plan with (repeat for several)")
    u.add_argument("--suite", action="append", default=[], metavar="FILE",
                   help="a designated-pixel suite as a scene: its environment and planner settings (repeat for "
                        "several; default: those in the checkout's plan/)")
    u.add_argument("--host", default="127.0.0.1", help="the address to serve on (another than 127.0.0.1 is "
                                                       "reachable by others: a warning says so)")
    u.add_argument("--port", type=int, default=8765)
    u.add_argument("--out", default="plan/results/ui", help="where finished runs are saved, one folder each")
    u.set_defaults(func=cmd_ui)

    m = sub.add_parser("demo", help="run the main job end to end on a built-in default and say where the results are")
    m.add_argument("--out", default=str(REPO / "out" / "demo"), help="where the demo writes (default: out/demo)")
    m.add_argument("--workers", type=int, default=2)
    m.add_argument("--tasks", type=int, default=4, help="planning tasks to run")
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


def cmd_train(args) -> int:
    from foresight import recipes, training

    recipe = recipes.load(training.TrainRecipe, args.recipe, args.set)
    run = training.train(recipe, args.recipe, resume=args.resume, progress=not args.no_progress)
    if training.distributed()[0] == 0:
        print(f"{run}: trained; checkpoint in {run / 'checkpoint'}, samples in {run / 'samples'}")
    return 0


def cmd_eval(args) -> int:
    from foresight import datasets
    from foresight.learners import load_run

    model, learner, resolved, state = load_run(args.run)
    data = args.data or resolved["data"]
    learner.check_data(datasets.read_manifest(data)["shapes"], str(data))
    out = Path(args.out or args.run)
    result = learner.evaluate(model, data, out, args.max_windows, run=args.run, step=state["step"])
    print(learner.describe(result, out))
    return 0


def _models_resolved(runs) -> dict:
    """What run.json records of the --model runs (one run as before: a path and its sha256)."""
    if not runs:
        return {"model": None, "model_sha256": None}
    if len(runs) == 1:
        return {"model": str(runs[0]), "model_sha256": model_sha256(runs[0])}
    return {"model": [str(r) for r in runs], "model_sha256": [model_sha256(r) for r in runs]}


def cmd_plan(args) -> int:
    from foresight import pixels, recipes
    from foresight.envs import make_env
    from foresight.planning import mpc, planners, suites

    model = planners.load_model(args.model) if args.model else None
    if args.suite:
        suite = suites.load(args.suite, args.set)
        source = args.suite
        if args.heldout:
            suite = suites.heldout(suite, source)
        out = Path(args.out) if args.out else Path(args.suite).parent / "results" / suite.name
    elif args.env:
        if not (args.designated and args.goal):
            raise ForesightError("--env: a single task needs --designated ROW,COL and --goal ROW,COL")
        raw = {"name": "single", "env": args.env, "tasks": 1, "baselines": []}
        for item in args.set:
            recipes.apply_override(raw, item)
        suite = recipes.from_dict(suites.DesignatedPixelSuite, raw, "--env")
        source, out = "--env", Path(args.out or "plan/results/single")
    else:
        raise ForesightError("plan: give a suite file (plan/point_push.toml) or a single task (--env ID ...)")
    trained = getattr(model, "trained_env", None) or {}
    if trained.get("id") not in (None, suite.env):
        raise ForesightError(f"--model: was trained on {trained['id']} images, the suite {source} runs {suite.env}")
    names = args.planners.split(",") if args.planners else \
        (planners.model_planners(suite, model) if model else []) + list(suite.baselines)
    if not names:
        raise ForesightError("--planners: nothing to run (give --model RUN or --planners oracle,random)")
    planners.check(suite, names, model)
    if args.env:  # one task from the command line
        env = make_env(suite.env, suite.env_kwargs, "--env")
        if model is not None:
            model.check_env(suite.env, suite.env_kwargs, env, "--env")
        obs, info = env.reset(seed=args.seed)
        H, W = obs.shape[:2]
        parse = lambda text, name: pixels.check_in_image(name, [[float(v) for v in p.split(",")] for p in text.split(";")], H, W)  # noqa: E731
        try:
            designated, goal = parse(args.designated, "--designated"), parse(args.goal, "--goal")
        except ValueError:
            raise ForesightError("--designated/--goal: expected pixels as 'row,col' or 'row,col;row,col'") from None
        if len(designated) != len(goal):
            raise ForesightError(f"--goal: {len(goal)} goal pixel(s) for {len(designated)} designated pixel(s)")
        # each designated pixel is judged by the tracked object nearest it
        task = suites.Task(0, args.seed, designated, goal, objects=suites.nearest_objects(info["points"], designated))
        for p in names:
            o = mpc.run_task(env, task, suite, p, model)
            path = mpc.save_task(out, suite, o, {**recipes.to_dict(suite), **_models_resolved(args.model)})
            print(f"[{p}] distance {o.start_distance:.1f} -> {o.final_distance:.1f} px "
                  f"({'success' if o.success else 'not reached'}); video {path}")
        env.close()
        return 0
    if args.workers < 1:
        raise ForesightError(f"--workers: expected an integer >= 1, got {args.workers}")
    summary = mpc.run_suite(suite, out, model, names, source, args.videos, not args.no_progress, workers=args.workers,
                            resolved={**recipes.to_dict(suite), **_models_resolved(args.model)},
                            resume=not getattr(args, "fresh", False))  # finished tasks of a killed run are kept
    for p in names:
        s = summary[p]
        if suite.kind == "goal_image":
            print(f"[{p:>6}] {s['percent_in_goal']:.1f} +- {s['percent_in_goal_std']:.1f}% of steps in the goal "
                  f"region, in it at the end {100 * s['success']:.0f}% of {s['tasks']}, "
                  f"{s['seconds_per_replan']:.3f} s per replan")
        else:
            print(f"[{p:>6}] success {100 * s['success']:.0f}% of {s['tasks']} at the end "
                  f"({100 * s['success_any_step']:.0f}% at any step), final/start "
                  f"{s['final_over_start']:.2f}, {s['seconds_per_replan']:.2f} s per replan")
    resumed = sum(summary[p]["resumed"] for p in names)
    print(f"results in {out} (summary.json, videos per planner)"
          + (f"; {resumed} task(s) resumed from an earlier run's records" if resumed else ""))
    return 0


def cmd_ui(args) -> int:
    from foresight import ui

    if not 0 <= args.port <= 65535:
        raise ForesightError(f"--port: expected 0..65535, got {args.port}")
    models = ui.model_names(args.model)
    scenes = ui.load_scenes(args.suite, REPO)
    session = ui.Session(scenes, models, Path(args.out))
    try:
        server = ui.make_server(session, args.host, args.port)
    except OSError as e:
        session.close()
        raise ForesightError(f"--port: cannot serve on {args.host}:{args.port} ({e.strerror or e})") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"foresight ui: warning: serving on {args.host}: anyone who reaches it can run plans on this machine",
              file=sys.stderr)
    host, port = server.server_address[:2]
    print(f"foresight ui: open http://{host}:{port}/  (scenes: {', '.join(scenes)}; models: "
          f"{', '.join(models) or 'none'}; runs saved under {args.out}); Ctrl-C ends it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        session.close()
    return 0


def model_sha256(run) -> str | None:
    """The sha256 recorded for a run's model.pt: a resumed suite must not mix plans of a retrained model."""
    from foresight import checkpoints

    ckpt = checkpoints.checkpoint_dir(run)
    return checkpoints.recorded_sha256(ckpt / "model.pt") if ckpt else None


def cmd_export(args) -> int:
    from foresight.checkpoints import export_run

    print(f"exported {args.run} to {export_run(args.run, args.dest)}")
    return 0


def cmd_verify(args) -> int:
    from foresight import checkpoints

    problems = checkpoints.verify(args.run)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{args.run}: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{args.run}: every checkpoint file matches its recorded sha256 and holds weights only")
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
          f"{info['moved_threshold_px']:g} px, {100 * info['moved_several_fraction']:.1f}% two or more")
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
    from foresight.planning import mpc, planners, suites

    out = Path(args.out)
    recipe_path = REPO / "data" / "point_push.toml"
    recipe = recipes.load(collect.CollectRecipe, recipe_path, ["episodes=40"])
    data = out / recipe.name
    print(f"[1/3] collecting {recipe.episodes} PointPush episodes into {data}")
    collect.collect(recipe, data, workers=args.workers, source=str(recipe_path))
    info = datasets.summary(data)
    print(f"      {info['episodes']} episodes, objects moved in {100 * info['moved_fraction']:.0f}% of them")
    print("[2/3] drawing the dataset")
    pics = show_dataset(data, 6, out / "preview")
    run = REPO / "pretrained" / "plan_point_push"  # made by `make pretrained` (train/plan_point_push.toml)
    print(f"[3/3] visual MPC: pushing the block to a goal pixel in {args.tasks} tasks of plan/point_push.toml "
          f"with the shipped planning model ({run.relative_to(REPO)}) and with random actions")
    predictor = planners.load_model(run)
    suite_path = REPO / "plan" / "point_push.toml"
    suite = suites.load(suite_path, [f"tasks={args.tasks}"])
    summary = mpc.run_suite(suite, out / "plan", predictor, ["model", "random"], str(suite_path), videos=args.tasks,
                            workers=min(args.workers, args.tasks))
    for p in ("model", "random"):
        s = summary[p]
        print(f"      [{p:>6}] success {100 * s['success']:.0f}% of {s['tasks']}, final / start distance "
              f"{s['final_over_start']:.2f}")
    print(f"demo finished; results are in {out}:")
    print(f"  dataset        {data}   (foresight data info {data})")
    print(f"  animation      {pics['gif']}")
    print(f"  contact sheet  {pics['sheet']}")
    print(f"  plans          {out / 'plan' / 'model'}/task-*.gif (camera | designated-pixel heat map | "
          f"prediction), summary {out / 'plan' / 'summary.json'}")
    print(f"click to designate: foresight ui --model {run.relative_to(REPO)}   (then open http://127.0.0.1:8765/)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
