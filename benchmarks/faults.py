"""Faults: kills at random moments, flipped bytes and bad inputs, and whether foresight survives, catches and
refuses them (nothing lost, nothing silently wrong).

    python benchmarks/faults.py [--kills 5] [--seed 0] [--work DIR]

* kills: ``foresight collect``, ``train`` and ``plan`` on small recipes are started as subprocesses (each in its
  own process group) and the whole group is killed with SIGKILL after a seeded random delay between the moment the
  uninterrupted command first finished a piece of work (a shard, a checkpoint, a task record) and its end (both
  measured first), so that the rerun must resume; the same command is run again (training with ``--resume`` once a
  checkpoint exists) until it completes, and the results are compared with the uninterrupted run's: collect, every
  shard's bytes; train, model.pt and optimizer.pt tensor by tensor and the final step; plan, summary.json without
  its timing fields and ``resumed``, and every GIF's bytes. Survived = identical.
* flips: one byte (seeded position) flipped in a dataset shard (``foresight data verify`` must report it and
  ``foresight train`` refuse, naming the shard) and in a checkpoint's model.pt and optimizer.pt (``foresight
  verify``, ``foresight eval`` and ``foresight train --resume`` must each exit non-zero naming the file). Caught =
  every one of those commands does.
* bad inputs: NaN and inf actions to every registered environment, a checkpoint whose pickle calls os.system
  (with a consistent sha256), a bad recipe key, a bad --set value, unknown planners, a goal pixel outside the
  image, ``foresight verify`` on a folder that is not a run. Clear = exit code 2 (a ForesightError in process), one
  stderr line, no traceback (and for the forged checkpoint: "refused", its payload not run).

Writes benchmarks/results/faults.json. Works in a temporary folder (``--work`` to keep it). About 6-8 minutes on
2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FORESIGHT = [sys.executable, "-m", "foresight"]

PLANAR = """name = "planar_tiny"
env = "foresight/Planar-v0"
episodes = 200
steps = 4
seed = 3
shard_size = 100
[policy]
kind = "random"
repeat = 1
smoothing = 0.0
"""
E2C = """name = "{name}"
data = "{data}"
[model]
kind = "e2c"
preset = "planar"
encoder_widths = [32]
decoder_widths = [32]
transition_widths = [16]
[train]
steps = 300
batch_size = 16
checkpoint_every = 20
val_every = 100
sample_every = 1000
log_every = 50
loader_workers = 0
"""
COLLECT = ["collect", "data/point_push.toml", "--set", "episodes=60", "--set", "shard_size=10",
           "--workers", "2", "--no-progress", "--out"]
PLAN = ["plan", "plan/point_push.toml", "--set", "tasks=6", "--set", "steps=4", "--planners",
        "oracle,random", "--no-progress", "--out"]
TIMING = {"seconds_per_replan", "model_seconds_per_replan", "seconds", "resumed"}


def run_cli(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*FORESIGHT, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def timed(args, progress) -> tuple[float, float]:
    """(seconds the uninterrupted command takes, seconds until ``progress()`` first holds: its first finished
    shard, checkpoint or task record). Kills are drawn between the two, so that each one interrupts work in
    progress and the rerun must resume, not start over."""
    start = time.perf_counter()
    proc = subprocess.Popen([*FORESIGHT, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    first = None
    while proc.poll() is None:
        if first is None and progress():
            first = time.perf_counter() - start
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"uninterrupted run failed: {' '.join(map(str, args))}\n{proc.stderr.read()}")
    total = time.perf_counter() - start
    return total, first if first is not None else 0.1 * total


def kill_delay(rng: random.Random, duration: float, first: float) -> float:
    """A moment after the first finished piece of work and before the end."""
    return rng.uniform(first, max(first, 0.95 * duration))


def killed_after(args, delay: float) -> bool:
    """Run ``foresight args`` in its own process group and SIGKILL the group after ``delay`` s; True when the
    kill landed before the command finished."""
    proc = subprocess.Popen([*FORESIGHT, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=REPO, start_new_session=True)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def rerun(args_for, limit: int = 3) -> tuple[int, str]:
    """Run again (args_for() decides, e.g. --resume when a checkpoint exists) until it completes."""
    done = None
    for attempt in range(1, limit + 1):
        done = run_cli(*args_for())
        if done.returncode == 0:
            return attempt, ""
    return limit, done.stderr.strip()[-500:]


# ------------------------------------------------------------------ what a run left behind, compared

def shards(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.h5"))}


def tensors_equal(a: Path, b: Path) -> bool:
    import torch

    def flat(x, prefix=""):
        if isinstance(x, dict):
            return {k: v for key, val in x.items() for k, v in flat(val, f"{prefix}{key}/").items()}
        if isinstance(x, (list, tuple)):
            return {k: v for i, val in enumerate(x) for k, v in flat(val, f"{prefix}{i}/").items()}
        return {prefix: x}

    x, y = flat(torch.load(a, weights_only=True)), flat(torch.load(b, weights_only=True))
    if x.keys() != y.keys():
        return False
    return all(torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k] for k in x)


def untimed(x):
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in TIMING}
    return [untimed(v) for v in x] if isinstance(x, list) else x


def plan_results(folder: Path) -> tuple[dict | None, dict]:
    summary = folder / "summary.json"
    return (untimed(json.loads(summary.read_text())) if summary.exists() else None,
            {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob("*/task-*.gif"))})


# ------------------------------------------------------------------ kills

def kill_cases(work: Path, rng: random.Random, n: int) -> list[dict]:
    cases = []

    # collect
    ref = work / "collect_ref"
    duration, first = timed([*COLLECT, ref], lambda: bool(list(ref.glob("shard-*.h5"))))
    want = shards(ref)
    for i in range(n):
        out = work / f"collect_kill{i}"
        delay = kill_delay(rng, duration, first)
        landed = killed_after([*COLLECT, out], delay)
        at_kill = len(list(out.glob("shard-*.h5")))
        attempts, error = rerun(lambda: [*COLLECT, out])
        got = shards(out)
        same = got == want and not error
        cases.append({"job": "collect", "delay_s": round(delay, 2), "duration_s": round(duration, 2),
                      "first_progress_s": round(first, 2),
                      "killed_mid_run": landed, "shards_at_kill": at_kill, "reruns": attempts,
                      "shards_equal": same, "error": error, "survived": same})

    # train
    (work / "planar_tiny.toml").write_text(PLANAR)
    run_cli("collect", work / "planar_tiny.toml", "--no-progress")
    data = work / "planar_tiny"

    def recipe(folder: Path, name: str = "e2c_tiny", data_dir: Path = data) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "e2c_tiny.toml").write_text(E2C.format(name=name, data=data_dir))
        return folder / "e2c_tiny.toml"

    ref_recipe = recipe(work / "train_ref")
    ref_ckpt = work / "train_ref" / "runs" / "e2c_tiny" / "checkpoint"
    duration, first = timed(["train", ref_recipe, "--no-progress"], lambda: (ref_ckpt / "state.json").exists())
    ref_step = json.loads((ref_ckpt / "state.json").read_text())["step"]
    for i in range(n):
        path = recipe(work / f"train_kill{i}")
        ckpt = path.parent / "runs" / "e2c_tiny" / "checkpoint"
        delay = kill_delay(rng, duration, first)
        landed = killed_after(["train", path, "--no-progress"], delay)
        at_kill = json.loads((ckpt / "state.json").read_text())["step"] if (ckpt / "state.json").exists() else None

        def again(path=path, ckpt=ckpt):
            from_checkpoint = any((ckpt.parent / c / "state.json").exists() for c in ("checkpoint", "checkpoint.old"))
            return ["train", path, "--no-progress", *(["--resume"] if from_checkpoint else [])]

        attempts, error = rerun(again)
        step = json.loads((ckpt / "state.json").read_text())["step"] if (ckpt / "state.json").exists() else None
        model = not error and tensors_equal(ckpt / "model.pt", ref_ckpt / "model.pt")
        optimizer = not error and tensors_equal(ckpt / "optimizer.pt", ref_ckpt / "optimizer.pt")
        cases.append({"job": "train", "delay_s": round(delay, 2), "duration_s": round(duration, 2),
                      "first_progress_s": round(first, 2),
                      "killed_mid_run": landed, "checkpoint_step_at_kill": at_kill, "reruns": attempts,
                      "final_step": step, "want_step": ref_step, "model_equal": model, "optimizer_equal": optimizer,
                      "error": error, "survived": bool(model and optimizer and step == ref_step)})

    # plan
    ref = work / "plan_ref"
    duration, first = timed([*PLAN, ref], lambda: bool(list(ref.glob("*/task-*.json"))))
    want_summary, want_gifs = plan_results(ref)
    for i in range(n):
        out = work / f"plan_kill{i}"
        delay = kill_delay(rng, duration, first)
        landed = killed_after([*PLAN, out], delay)
        at_kill = len(list(out.glob("*/task-*.json")))
        attempts, error = rerun(lambda: [*PLAN, out])
        summary, gifs = plan_results(out)
        resumed = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        cases.append({"job": "plan", "delay_s": round(delay, 2), "duration_s": round(duration, 2),
                      "first_progress_s": round(first, 2),
                      "killed_mid_run": landed, "task_records_at_kill": at_kill, "reruns": attempts,
                      "resumed": {p: resumed[p]["resumed"] for p in ("oracle", "random") if p in resumed},
                      "summary_equal": summary == want_summary, "gifs_equal": gifs == want_gifs,
                      "gifs": len(gifs), "error": error,
                      "survived": summary == want_summary and gifs == want_gifs and not error})
    return cases


# ------------------------------------------------------------------ flips

def flip(path: Path, rng: random.Random) -> int:
    data = bytearray(path.read_bytes())
    at = rng.randrange(len(data))
    data[at] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return at


def check(done: subprocess.CompletedProcess, name: str) -> dict:
    return {"rc": done.returncode, "names_file": name in done.stderr or name in done.stdout,
            "stderr": done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else ""}


def flip_cases(work: Path, rng: random.Random, per_target: int = 2) -> list[dict]:
    cases = []
    data = work / "planar_tiny"
    for i in range(per_target):  # a dataset shard
        folder = work / f"flip_data{i}"
        copy = folder / "planar_tiny"
        shutil.copytree(data, copy)
        shard = sorted(copy.glob("shard-*.h5"))[i % 2]
        at = flip(shard, rng)
        (folder / "e2c_tiny.toml").write_text(E2C.format(name="e2c_tiny", data=copy))
        commands = {"data verify": check(run_cli("data", "verify", copy), shard.name),
                    "train": check(run_cli("train", folder / "e2c_tiny.toml", "--no-progress"), shard.name)}
        cases.append({"file": f"dataset {shard.name}", "byte": at, "commands": commands,
                      "caught": all(c["rc"] != 0 and c["names_file"] for c in commands.values())})
    run = work / "train_ref" / "runs" / "e2c_tiny"
    for name in ("model.pt", "optimizer.pt"):
        for i in range(per_target):
            folder = work / f"flip_{name.split('.')[0]}{i}"
            folder.mkdir()
            (folder / "e2c_tiny.toml").write_text((work / "train_ref" / "e2c_tiny.toml").read_text())
            copy = folder / "runs" / "e2c_tiny"
            shutil.copytree(run, copy)
            at = flip(copy / "checkpoint" / name, rng)
            commands = {"verify": check(run_cli("verify", copy), name),
                        "eval": check(run_cli("eval", copy, "--out", folder / "eval"), name),
                        "train --resume": check(run_cli("train", folder / "e2c_tiny.toml", "--resume", "--set",
                                                          "train.steps=320", "--no-progress"), name)}
            cases.append({"file": f"checkpoint {name}", "byte": at, "commands": commands,
                          "caught": all(c["rc"] != 0 and c["names_file"] for c in commands.values()),
                          "caught_by_readers": all(c["rc"] != 0 and c["names_file"] for k, c in commands.items()
                                                   if not (name == "optimizer.pt" and k == "eval"))})
    return cases


# ------------------------------------------------------------------ bad inputs

class Payload:
    """Unpickled, it would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def clear(done: subprocess.CompletedProcess, **extra) -> dict:
    lines = done.stderr.strip().splitlines()
    ok = done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr
    return {"rc": done.returncode, "stderr_lines": len(lines), "stderr": done.stderr.strip()[-300:],
            "clear": ok and all(extra.values()), **extra}


def bad_input_cases(work: Path) -> list[dict]:
    import numpy as np
    import torch

    import foresight  # noqa: F401  (registers the environments)
    from foresight.datasets import sha256_of
    from foresight.envs import ENVS, make_env
    from foresight.errors import ForesightError

    cases = []
    for env_id in ENVS:
        for value in (np.nan, np.inf):
            env = make_env(env_id)
            env.reset(seed=0)
            action = np.zeros(env.action_space.shape, dtype=np.float64)
            action[0] = value
            try:
                env.step(action)
                case = {"raised": None, "clear": False}
            except ForesightError as e:
                case = {"raised": "ForesightError", "message": str(e)[:300],
                        "clear": env_id in str(e) and "\n" not in str(e)}
            except Exception as e:  # noqa: BLE001  (what else it raised is the finding)
                case = {"raised": type(e).__name__, "message": str(e)[:300], "clear": False}
            env.close()
            cases.append({"case": f"{value} action to {env_id}", **case})

    # a checkpoint whose pickle calls os.system, with a consistent sha256 in state.json
    forged = work / "forged" / "e2c_tiny"
    shutil.copytree(work / "train_ref" / "runs" / "e2c_tiny", forged)
    marker = work / "forged" / "pwned"
    torch.save({"weights": Payload(marker)}, forged / "checkpoint" / "model.pt")
    state = json.loads((forged / "checkpoint" / "state.json").read_text())
    state["sha256"]["model.pt"] = sha256_of(forged / "checkpoint" / "model.pt")
    (forged / "checkpoint" / "state.json").write_text(json.dumps(state))
    done = run_cli("eval", forged, "--out", work / "forged" / "eval")
    cases.append({"case": "a checkpoint holding code (os.system), consistent sha256: foresight eval",
                  **clear(done, refused="refused" in done.stderr, payload_not_run=not marker.exists())})

    bad_key = work / "bad_key.toml"
    bad_key.write_text((REPO / "data/point_push.toml").read_text().replace("episodes = 1000", "episodez = 1000"))
    done = run_cli("collect", bad_key, "--out", work / "bad_key", "--no-progress")
    cases.append({"case": "a bad recipe key (episodez): foresight collect",
                  **clear(done, nothing_written=not (work / "bad_key").exists())})
    cases.append({"case": "a bad --set value (episodes=many): foresight collect",
                  **clear(run_cli("collect", "data/point_push.toml", "--set", "episodes=many", "--out",
                                    work / "bad_set", "--no-progress"))})
    cases.append({"case": "an unknown planner (--planners warp): foresight plan",
                  **clear(run_cli("plan", "plan/point_push.toml", "--planners", "warp", "--out",
                                    work / "bad_planner", "--no-progress"))})
    suite = work / "bad_suite.toml"
    suite.write_text((REPO / "plan/point_push.toml").read_text().replace('["random", "oracle"]', '["random", "warp"]'))
    cases.append({"case": "a suite with an unknown planner (baselines = [\"random\", \"warp\"]): foresight plan",
                  **clear(run_cli("plan", suite, "--planners", "random", "--out", work / "bad_suite",
                                    "--no-progress"))})
    cases.append({"case": "a goal pixel outside the image (--goal 44,99 on 64x64): foresight plan",
                  **clear(run_cli("plan", "--env", "foresight/PointPush-v0", "--designated", "20,31", "--goal",
                                    "44,99", "--planners", "random", "--out", work / "bad_goal", "--no-progress"))})
    (work / "not_a_run").mkdir()
    cases.append({"case": "foresight verify on a folder that is not a run",
                  **clear(run_cli("verify", work / "not_a_run"))})
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=5, help="kills per command")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill delays and the flipped bytes")
    ap.add_argument("--work", default=None, help="working folder (kept); default: a temporary one, removed")
    ap.add_argument("--out", default=str(HERE / "results" / "faults.json"))
    args = ap.parse_args()

    from foresight import evaluation

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="foresight-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        rng = random.Random(args.seed)
        kills = kill_cases(work, rng, args.kills)
        flips = flip_cases(work, rng)
        bad = bad_input_cases(work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result = {"date": date.today().isoformat(), "machine": evaluation.machine(), "seed": args.seed,
              "kills": len(kills), "kills_survived": sum(c["survived"] for c in kills),
              "flips": len(flips), "flips_caught": sum(c["caught"] for c in flips),
              "flips_caught_by_readers": sum(c.get("caught_by_readers", c["caught"]) for c in flips),
              "bad_inputs": len(bad), "bad_inputs_clear": sum(c["clear"] for c in bad),
              "seconds": round(time.perf_counter() - start, 1),
              "commands": {"collect": " ".join(["foresight", *COLLECT, "OUT"]),
                           "train": "foresight train e2c_tiny.toml (tiny E2C on a 200-episode planar dataset; "
                                    "300 steps, checkpoint every 20) [--resume]",
                           "plan": " ".join(["foresight", *PLAN, "OUT"])},
              "kill_cases": kills, "flip_cases": flips, "bad_input_cases": bad}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_cases")}, indent=1))
    for c in kills:
        if not c["survived"]:
            print("NOT SURVIVED:", json.dumps(c))
    for c in flips:
        if not c["caught"]:
            print("NOT CAUGHT:", json.dumps(c))
    for c in bad:
        if not c["clear"]:
            print("NOT CLEAR:", json.dumps(c))


if __name__ == "__main__":
    main()
